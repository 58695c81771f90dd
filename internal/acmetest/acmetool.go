package acmetest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/testcert"

	"github.com/mholt/acmez/v3/acme"
)

// Acmetool describes the state folder that acmetool (as deployed by
// chatmail's cmdeploy) leaves behind, written independently of the code
// under test from acmetool's storage layout (storage/storage-fdb.go,
// storage/util.go):
//
//	accounts/<escaped directory URL>/<key id>/privkey
//	keys/<key id>/privkey
//	certs/<cert id>/{cert,chain,fullchain,url,privkey -> ../../keys/<key id>/privkey}
//	live/<domain> -> ../certs/<cert id>
type Acmetool struct {
	Dir           string
	AccountKeyPEM []byte // written to the account's privkey
	CertURL       string
}

// WriteAcmetool builds the folder under dir for the account at
// directoryURL and the certificate chainPEM/keyPEM for domain.
func WriteAcmetool(t testing.TB, dir, directoryURL string, accountKeyPEM []byte, domain string, chainPEM, keyPEM []byte) Acmetool {
	t.Helper()
	a := Acmetool{Dir: dir, AccountKeyPEM: accountKeyPEM, CertURL: "https://ca.invalid/cert/" + keyID(t, keyPEM)}
	mkdir := func(p string, mode os.FileMode) string {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(full, mode); err != nil {
			t.Fatal(err)
		}
		return full
	}
	write := func(p string, data []byte, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, p), data, mode); err != nil {
			t.Fatal(err)
		}
	}
	accountPath := filepath.Join("accounts", accountURLPart(t, directoryURL), keyID(t, accountKeyPEM))
	mkdir(accountPath, 0o700)
	write(filepath.Join(accountPath, "privkey"), accountKeyPEM, 0o600)

	kid := keyID(t, keyPEM)
	mkdir(filepath.Join("keys", kid), 0o700)
	write(filepath.Join("keys", kid, "privkey"), keyPEM, 0o600)

	certID := base32ID([]byte(a.CertURL))
	certDir := filepath.Join("certs", certID)
	mkdir(certDir, 0o755)
	rest := chainPEM
	block, rest := pem.Decode(rest)
	write(filepath.Join(certDir, "cert"), pem.EncodeToMemory(block), 0o644)
	write(filepath.Join(certDir, "chain"), rest, 0o644)
	write(filepath.Join(certDir, "fullchain"), chainPEM, 0o644)
	write(filepath.Join(certDir, "url"), []byte(a.CertURL), 0o644)
	if err := os.Symlink(filepath.Join("..", "..", "keys", kid, "privkey"), filepath.Join(dir, certDir, "privkey")); err != nil {
		t.Fatal(err)
	}
	mkdir("live", 0o755)
	if err := os.Symlink(filepath.Join("..", "certs", certID), filepath.Join(dir, "live", domain)); err != nil {
		t.Fatal(err)
	}
	mkdir("desired", 0o755)
	write(filepath.Join("desired", domain), []byte("satisfy:\n  names:\n  - "+domain+"\n"), 0o644)
	return a
}

// Relay is a chatmail relay's acmetool state as cmdeploy leaves it: an
// account at a CA and a live certificate for the domain, mta-sts and www.
type Relay struct {
	Acmetool
	AccountKey *ecdsa.PrivateKey
	AccountURL string // set when the CA knows the account (NewRelayIssued)
	ChainPEM   []byte
	CertKey    crypto.Signer // the live certificate's key
	Roots      *x509.CertPool
	Live       string // live/<domain>, where Postfix and Dovecot read
}

// NewRelay writes a relay's acmetool state into dir for the account at
// directoryURL, with a self-signed certificate (Roots trusts it) that the
// CA knows nothing of.
func NewRelay(t testing.TB, dir, directoryURL, domain string) *Relay {
	t.Helper()
	cert, roots := testcert.SelfSigned(t, relayNames(domain)...)
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	return writeRelay(t, dir, directoryURL, domain, newKey(t), chain, cert.PrivateKey.(crypto.Signer), roots)
}

// NewRelayIssued writes a relay's acmetool state into dir as acmetool leaves
// it with p: its account registered there, and a certificate p issued to
// that account, whose lifetime began at notBefore.
func NewRelayIssued(t testing.TB, dir string, p *Pebble, domain string, notBefore time.Time) *Relay {
	t.Helper()
	accountKey, certKey := newKey(t), newKey(t)
	accountURL := p.RegisterAccount(t, accountKey)
	chain := p.Issue(t, accountURL, certKey.Public(), relayNames(domain), notBefore)
	r := writeRelay(t, dir, p.URL, domain, accountKey, chain, certKey, p.Roots())
	r.AccountURL = accountURL
	return r
}

func relayNames(domain string) []string {
	return []string{domain, "mta-sts." + domain, "www." + domain}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writeRelay(t testing.TB, dir, directoryURL, domain string, accountKey *ecdsa.PrivateKey, chain []byte, certKey crypto.Signer, roots *x509.CertPool) *Relay {
	t.Helper()
	accountDER, _ := x509.MarshalECPrivateKey(accountKey)
	certKeyDER, err := x509.MarshalPKCS8PrivateKey(certKey)
	if err != nil {
		t.Fatal(err)
	}
	state := WriteAcmetool(t, dir, directoryURL, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: accountDER}),
		domain, chain, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: certKeyDER}))
	return &Relay{Acmetool: state, AccountKey: accountKey, ChainPEM: chain, CertKey: certKey, Roots: roots, Live: filepath.Join(dir, "live", domain)}
}

// accountURLPart is acmetool's accountURLPart: the directory URL without
// its scheme, query-escaped with lower-case escapes.
func accountURLPart(t testing.TB, directoryURL string) string {
	u, err := url.Parse(directoryURL)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimPrefix(u.String(), u.Scheme+"://")
	if u.Path == "/" {
		s = strings.TrimSuffix(s, "/")
	}
	s = url.QueryEscape(s)
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			b.WriteString("%" + strings.ToLower(s[i+1:i+3]))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	if u.Scheme == "http" {
		return "http:" + b.String()
	}
	return b.String()
}

// keyID is acmetool's key id: base32 of the SHA-256 of the public key info.
func keyID(t testing.TB, keyPEM []byte) string {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("keyID: no PEM")
	}
	var key crypto.Signer
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		key = k.(crypto.Signer)
	} else if k, err := x509.ParseECPrivateKey(block.Bytes); err == nil {
		key = k
	} else if k, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		key = k
	} else {
		t.Fatalf("keyID: %v", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return base32ID(spki)
}

func base32ID(data []byte) string {
	sum := sha256.Sum256(data)
	return strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString(sum[:]), "="))
}

// RegisterAccount creates the account for key at the CA, as acmetool did
// once, and returns its URL.
func (p *Pebble) RegisterAccount(t testing.TB, key crypto.Signer) string {
	t.Helper()
	client := &acme.Client{Directory: p.URL, HTTPClient: p.HTTPClient()}
	acct, err := client.NewAccount(context.Background(), acme.Account{TermsOfServiceAgreed: true, PrivateKey: key})
	if err != nil {
		t.Fatalf("register account at pebble: %v", err)
	}
	return acct.Location
}
