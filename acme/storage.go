package acme

import (
	"chatmail-edge/internal/filelimit"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	acmeapi "github.com/mholt/acmez/v3/acme"
)

// store is the certificate storage: a certmagic.Storage (FileStorage in a
// folder unless Config.Storage names another), shared by certmagic and
// the edge. Everything the edge keeps for ACME goes through it, so that
// several nodes on one storage share certificates, accounts and their
// locks: certmagic's layout for certificates and accounts, plus the few
// entries certmagic has no place for (the edge's own copy of each
// account, certificates taken over from acmetool, new_key requests done).
type store struct {
	s     certmagic.Storage // guarded: see guardedStorage
	guard *guardedStorage
}

func newStore(cfg Config) (store, error) {
	inner := cfg.Storage
	if inner == nil {
		if cfg.StorageDir == "" {
			return store{}, errors.New("no storage folder")
		}
		if err := os.MkdirAll(cfg.StorageDir, 0o700); err != nil {
			return store{}, fmt.Errorf("create certificate storage: %w", err)
		}
		inner = boundedFileStorage{&certmagic.FileStorage{Path: cfg.StorageDir}}
	}
	g := &guardedStorage{inner: inner}
	var s certmagic.Storage = g
	if tl, ok := inner.(certmagic.TryLocker); ok {
		s = &guardedTryStorage{guardedStorage: g, try: tl}
	}
	return store{s: s, guard: g}, nil
}

// close refuses storage calls from now on and waits for those under way.
func (s store) close() { s.guard.close() }

// lock takes the storage's lock name (across nodes on a shared storage).
func (s store) lock(ctx context.Context, name string) (unlock func(), err error) {
	if err := s.s.Lock(ctx, name); err != nil {
		return nil, fmt.Errorf("lock %s in the certificate storage: %w", name, err)
	}
	return func() { s.s.Unlock(context.WithoutCancel(ctx), name) }, nil
}

// issuerKey is where certmagic files what a CA issued (host and path of the
// directory URL). IssuerKey reads nothing but CA.
func issuerKey(caURL string) string { return (&certmagic.ACMEIssuer{CA: caURL}).IssuerKey() }

// storedCert is a certificate as certmagic keeps it for one name.
type storedCert struct {
	issuerKey string
	chainPEM  []byte
	keyPEM    []byte
	data      acmeapi.Certificate // issuer data: certificate URL, CA, renewal information
	cert      *tls.Certificate
}

// loadCert loads name's certificate from the first of issuerKeys that holds
// one, preferring the newest, as certmagic does (crypto.go,
// loadCertResourceAnyIssuer). fs.ErrNotExist when none does.
func (s store) loadCert(ctx context.Context, name string, issuerKeys []string) (*storedCert, error) {
	var best *storedCert
	for _, ik := range issuerKeys {
		sc, err := s.loadCertFrom(ctx, name, ik)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if best == nil || sc.cert.Leaf.NotBefore.After(best.cert.Leaf.NotBefore) {
			best = sc
		}
	}
	if best == nil {
		return nil, fs.ErrNotExist
	}
	return best, nil
}

// loadCertFrom needs all three of certmagic's files (certificate, key,
// metadata): certmagic manages nothing less (storageHasCertResources).
func (s store) loadCertFrom(ctx context.Context, name, ik string) (*storedCert, error) {
	certKey := certmagic.StorageKeys.SiteCert(ik, name)
	chainPEM, err := s.s.Load(ctx, certKey)
	if err != nil {
		return nil, err
	}
	keyPEM, err := s.s.Load(ctx, certmagic.StorageKeys.SitePrivateKey(ik, name))
	if err != nil {
		return nil, err
	}
	meta, err := s.s.Load(ctx, certmagic.StorageKeys.SiteMeta(ik, name))
	if err != nil {
		return nil, err
	}
	pair, err := keyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("stored certificate %s: %w", certKey, err)
	}
	sc := &storedCert{issuerKey: ik, chainPEM: chainPEM, keyPEM: keyPEM, cert: pair}
	var res certmagic.CertificateResource
	if json.Unmarshal(meta, &res) == nil && len(res.IssuerData) > 0 {
		json.Unmarshal(res.IssuerData, &sc.data)
	}
	return sc, nil
}

// saveCert files a certificate for name the way certmagic's
// saveCertResource does, so that certmagic renews it like its own.
func (s store) saveCert(ctx context.Context, name, ik string, chainPEM, keyPEM []byte, data acmeapi.Certificate) error {
	dataJSON, err := json.Marshal(data)
	if err != nil {
		return err
	}
	meta, err := json.MarshalIndent(certmagic.CertificateResource{SANs: []string{name}, IssuerData: dataJSON}, "", "\t")
	if err != nil {
		return err
	}
	return s.storeAll(ctx, []keyValue{
		{certmagic.StorageKeys.SitePrivateKey(ik, name), keyPEM},
		{certmagic.StorageKeys.SiteCert(ik, name), chainPEM},
		{certmagic.StorageKeys.SiteMeta(ik, name), meta},
	})
}

// saveKey files a key for name without a certificate: certmagic reuses a
// stored key when it obtains the name's first certificate
// (ReusePrivateKeys, config.go reusePrivateKey).
func (s store) saveKey(ctx context.Context, name, ik string, keyPEM []byte) error {
	return s.storeAll(ctx, []keyValue{{certmagic.StorageKeys.SitePrivateKey(ik, name), keyPEM}})
}

type keyValue struct {
	key   string
	value []byte
}

func (s store) storeAll(ctx context.Context, kvs []keyValue) error {
	for _, kv := range kvs {
		if err := s.s.Store(ctx, kv.key, kv.value); err != nil {
			return fmt.Errorf("store %s: %w", kv.key, err)
		}
	}
	return nil
}

// The edge's own copy of an ACME account: the key is written once and never
// replaced (a relay's CAA record may pin the account, RFC 8657 §3), and the
// account URL once known.
func accountKeyKey(ik string) string {
	return path.Join("edge", "accounts", certmagic.StorageKeys.Safe(ik), "account.key")
}

func accountInfoKey(ik string) string {
	return path.Join("edge", "accounts", certmagic.StorageKeys.Safe(ik), "account.json")
}

type accountInfo struct {
	Location string   `json:"location"`
	Contact  []string `json:"contact,omitempty"`
}

func (s store) loadAccountInfo(ctx context.Context, ik string) (accountInfo, error) {
	var info accountInfo
	b, err := s.s.Load(ctx, accountInfoKey(ik))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("read %s: %w", accountInfoKey(ik), err)
	}
	return info, nil
}

func (s store) saveAccountInfo(ctx context.Context, ik string, info accountInfo) error {
	b, err := json.MarshalIndent(info, "", "\t")
	if err != nil {
		return err
	}
	return s.storeAll(ctx, []keyValue{{accountInfoKey(ik), b}})
}

// saveAccountKey writes the key of a new account; an existing key is an
// error, never overwritten. The caller holds the account lock.
func (s store) saveAccountKey(ctx context.Context, ik string, keyPEM []byte) error {
	if s.s.Exists(ctx, accountKeyKey(ik)) {
		return fmt.Errorf("%s exists already", accountKeyKey(ik))
	}
	return s.storeAll(ctx, []keyValue{{accountKeyKey(ik), keyPEM}})
}

// certmagicNoEmail is certmagic's slot for an account without an e-mail
// address (account.go, emptyEmail). The issuers are given it as their
// address when none is configured: certmagic then never asks for one on
// standard input (account.go, setEmail, in a certificate operation
// started synchronously), and it is never sent to a CA, because the edge
// registers every account itself (ensureAccount) with the configured
// contact.
const certmagicNoEmail = "default"

// certmagicAccount writes the account where certmagic's ACMEIssuer looks
// for it (account.go: acme/<issuer>/users/<email>/<user>.key and .json),
// so that it uses exactly that account and never registers one of its own.
func (s store) certmagicAccount(ctx context.Context, ik, email string, acct acmeapi.Account, keyPEM []byte) error {
	slot := strings.ToLower(email)
	user := slot
	if at := strings.Index(slot, "@"); at > 0 {
		user = slot[:at]
	} else if at == 0 {
		user = slot[1:]
	}
	dir := path.Join("acme", certmagic.StorageKeys.Safe(ik), "users", certmagic.StorageKeys.Safe(slot))
	reg, err := json.MarshalIndent(acct, "", "\t")
	if err != nil {
		return err
	}
	var changed []keyValue
	for _, kv := range []keyValue{
		{path.Join(dir, certmagic.StorageKeys.Safe(user)+".key"), keyPEM},
		{path.Join(dir, certmagic.StorageKeys.Safe(user)+".json"), reg},
	} {
		if old, err := s.s.Load(ctx, kv.key); err != nil || string(old) != string(kv.value) {
			changed = append(changed, kv)
		}
	}
	return s.storeAll(ctx, changed)
}

// newKeyKey holds the new_key request last honoured for a name.
func newKeyKey(name string) string {
	return path.Join("edge", "new_key", certmagic.StorageKeys.Safe(name))
}

func (s store) newKeyDone(ctx context.Context, name string) (string, error) {
	b, err := s.s.Load(ctx, newKeyKey(name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return strings.TrimSpace(string(b)), err
}

func (s store) saveNewKeyDone(ctx context.Context, name, request string) error {
	return s.storeAll(ctx, []keyValue{{newKeyKey(name), []byte(request + "\n")}})
}

// keyPair parses a PEM chain and key into a certificate with its leaf.
func keyPair(chainPEM, keyPEM []byte) (*tls.Certificate, error) {
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, err
		}
	}
	return &pair, nil
}

// chainPEM is the PEM of a certificate's chain exactly as it is served.
func chainPEM(c *tls.Certificate) []byte {
	var out []byte
	for _, der := range c.Certificate {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}

// errStorageClosed answers storage calls after the Manager stopped.
// boundedFileStorage is certmagic's FileStorage whose Load reads at most
// filelimit.PEM bytes: everything certmagic and the edge keep there
// (chains, keys, JSON) is a few KiB, and a file grown by mistake must not
// take the process's memory.
type boundedFileStorage struct{ *certmagic.FileStorage }

func (b boundedFileStorage) Load(_ context.Context, key string) ([]byte, error) {
	return filelimit.ReadFile(b.Filename(key), filelimit.PEM)
}

var errStorageClosed = errors.New("certificate storage closed: the ACME manager stopped")

// guardedStorage passes every call to the storage until close; then it
// refuses new calls (never an unlock: a lock left behind would block the
// next process for minutes) and close waits for those under way. certmagic
// runs renewals in goroutines of its own that may outlive Stop by a
// moment; they must not write into the storage after it.
type guardedStorage struct {
	inner certmagic.Storage

	mu     sync.Mutex
	closed bool
	busy   sync.WaitGroup
}

// closeWait bounds close: a call can only hang on a storage that hangs.
const closeWait = 10 * time.Second

func (g *guardedStorage) enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errStorageClosed
	}
	g.busy.Add(1)
	return nil
}

func (g *guardedStorage) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	done := make(chan struct{})
	go func() { g.busy.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeWait):
	}
}

func (g *guardedStorage) Store(ctx context.Context, key string, value []byte) error {
	if err := g.enter(); err != nil {
		return err
	}
	defer g.busy.Done()
	return g.inner.Store(ctx, key, value)
}

func (g *guardedStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := g.enter(); err != nil {
		return nil, err
	}
	defer g.busy.Done()
	return g.inner.Load(ctx, key)
}

func (g *guardedStorage) Delete(ctx context.Context, key string) error {
	if err := g.enter(); err != nil {
		return err
	}
	defer g.busy.Done()
	return g.inner.Delete(ctx, key)
}

func (g *guardedStorage) Exists(ctx context.Context, key string) bool {
	if g.enter() != nil {
		return false
	}
	defer g.busy.Done()
	return g.inner.Exists(ctx, key)
}

func (g *guardedStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	if err := g.enter(); err != nil {
		return nil, err
	}
	defer g.busy.Done()
	return g.inner.List(ctx, prefix, recursive)
}

func (g *guardedStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if err := g.enter(); err != nil {
		return certmagic.KeyInfo{}, err
	}
	defer g.busy.Done()
	return g.inner.Stat(ctx, key)
}

func (g *guardedStorage) Lock(ctx context.Context, name string) error {
	if err := g.enter(); err != nil {
		return err
	}
	defer g.busy.Done()
	return g.inner.Lock(ctx, name)
}

func (g *guardedStorage) Unlock(ctx context.Context, name string) error {
	return g.inner.Unlock(ctx, name)
}

func (g *guardedStorage) String() string { return fmt.Sprint(g.inner) }

// guardedTryStorage is a guardedStorage whose storage can try a lock
// (certmagic asks for that before fetching renewal information).
type guardedTryStorage struct {
	*guardedStorage
	try certmagic.TryLocker
}

func (g *guardedTryStorage) TryLock(ctx context.Context, name string) (bool, error) {
	if err := g.enter(); err != nil {
		return false, err
	}
	defer g.busy.Done()
	return g.try.TryLock(ctx, name)
}
