package acme

import (
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
	"path/filepath"
	"strings"

	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/internal/filelimit"

	"github.com/caddyserver/certmagic"
	acmeapi "github.com/mholt/acmez/v3/acme"
)

// store is certmagic's file storage plus the few entries the edge reads or
// writes itself: its own copy of each ACME account, the account in
// certmagic's layout (so that certmagic uses exactly that account), and
// certificates taken over from acmetool.
type store struct {
	fs *certmagic.FileStorage
}

func newStore(dir string) (store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return store{}, fmt.Errorf("create certificate storage: %w", err)
	}
	return store{fs: &certmagic.FileStorage{Path: dir}}, nil
}

// issuerKey is where certmagic files what a CA issued (host and path of the
// directory URL). IssuerKey reads nothing but CA.
func issuerKey(caURL string) string { return (&certmagic.ACMEIssuer{CA: caURL}).IssuerKey() }

// storedCert is a certificate as certmagic keeps it for one name.
type storedCert struct {
	issuerKey string
	chainPEM  []byte
	keyPEM    []byte
	data      acmeapi.Certificate // issuer data: certificate URL, CA
	cert      *tls.Certificate
}

// loadCert loads name's certificate from the first of issuerKeys that holds
// one, preferring the newest. fs.ErrNotExist when none does.
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

func (s store) loadCertFrom(ctx context.Context, name, ik string) (*storedCert, error) {
	certKey := certmagic.StorageKeys.SiteCert(ik, name)
	keyKey := certmagic.StorageKeys.SitePrivateKey(ik, name)
	chainPEM, err := s.fs.Load(ctx, certKey)
	if err != nil {
		return nil, err
	}
	keyPEM, err := s.fs.Load(ctx, keyKey)
	if err != nil {
		return nil, err
	}
	pair, err := keyPair(chainPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("stored certificate %s: %w", s.fs.Filename(certKey), err)
	}
	sc := &storedCert{issuerKey: ik, chainPEM: chainPEM, keyPEM: keyPEM, cert: pair}
	if meta, err := s.fs.Load(ctx, certmagic.StorageKeys.SiteMeta(ik, name)); err == nil {
		var res certmagic.CertificateResource
		if json.Unmarshal(meta, &res) == nil && len(res.IssuerData) > 0 {
			json.Unmarshal(res.IssuerData, &sc.data)
		}
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
	for _, kv := range []struct {
		key   string
		value []byte
	}{
		{certmagic.StorageKeys.SitePrivateKey(ik, name), keyPEM},
		{certmagic.StorageKeys.SiteCert(ik, name), chainPEM},
		{certmagic.StorageKeys.SiteMeta(ik, name), meta},
	} {
		if err := s.fs.Store(ctx, kv.key, kv.value); err != nil {
			return fmt.Errorf("store %s: %w", s.fs.Filename(kv.key), err)
		}
	}
	return nil
}

// The edge's own copy of an ACME account: the key is written once and never
// replaced (a relay's CAA record may pin the account, RFC 8657 §3), and the
// account URL once known.
func (s store) accountKeyFile(ik string) string {
	return s.fs.Filename(path.Join("edge", "accounts", certmagic.StorageKeys.Safe(ik), "account.key"))
}

func (s store) accountInfoFile(ik string) string {
	return s.fs.Filename(path.Join("edge", "accounts", certmagic.StorageKeys.Safe(ik), "account.json"))
}

type accountInfo struct {
	Location string   `json:"location"`
	Contact  []string `json:"contact,omitempty"`
}

func (s store) loadAccountInfo(ik string) (accountInfo, error) {
	var info accountInfo
	b, err := filelimit.ReadFile(s.accountInfoFile(ik), filelimit.Small)
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("read %s: %w", s.accountInfoFile(ik), err)
	}
	return info, nil
}

func (s store) saveAccountInfo(ik string, info accountInfo) error {
	b, err := json.MarshalIndent(info, "", "\t")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.accountInfoFile(ik), b, 0o600)
}

// saveAccountKey writes the key of a new account; an existing key is an
// error, never overwritten.
func (s store) saveAccountKey(ik string, keyPEM []byte) error {
	file := s.accountKeyFile(ik)
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteNew(file, keyPEM, 0o600)
}

// certmagicAccount writes the account where certmagic's ACMEIssuer looks
// for it (account.go: acme/<issuer>/users/<email or "default">/<user>.key
// and .json), so that it never registers an account of its own.
func (s store) certmagicAccount(ctx context.Context, ik, email string, acct acmeapi.Account, keyPEM []byte) error {
	slot := strings.ToLower(email)
	if slot == "" {
		slot = "default"
	}
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
	for _, kv := range []struct {
		key   string
		value []byte
	}{
		{path.Join(dir, certmagic.StorageKeys.Safe(user)+".key"), keyPEM},
		{path.Join(dir, certmagic.StorageKeys.Safe(user)+".json"), reg},
	} {
		if old, err := s.fs.Load(ctx, kv.key); err == nil && string(old) == string(kv.value) {
			continue
		}
		if err := s.fs.Store(ctx, kv.key, kv.value); err != nil {
			return fmt.Errorf("store %s: %w", s.fs.Filename(kv.key), err)
		}
	}
	return nil
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
