package acme

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/acmetest"
)

// The takeover: acmetool's certificate is served and left in place (no new
// order, no export, no reload), and the next order uses acmetool's account,
// whose URL AccountURL prints.
func TestManagerTakesOverAcmetool(t *testing.T) {
	domain, front := "relay.test", "front.test"
	p := acmetest.Start(t, acmetest.Options{})
	relay := acmetest.NewRelay(t, filepath.Join(t.TempDir(), "acme"), p.URL, domain)
	reload, calls := recordingCommand(t, 0)
	cfg := Config{
		Domain: domain, Names: []string{"mta-sts." + domain, "www." + domain, front},
		CA: p.URL, CARootFile: p.RootFile, StorageDir: filepath.Join(t.TempDir(), "storage"),
		AcmetoolDir: relay.Dir, Retry: fastRetry, ExportRetry: fastRetry,
		ExportCert: filepath.Join(relay.Live, "fullchain"), ExportKey: filepath.Join(relay.Live, "privkey"),
		Reload: [][]string{reload},
	}
	m, e := newManagerOn(t, p, cfg, domain, front)
	for _, name := range []string{domain, "mta-sts." + domain, "www." + domain} {
		if _, err := e.served(t, name, relay.Roots); err != nil {
			t.Fatalf("acmetool's certificate for %s: %v", name, err)
		}
	}
	accountURL := p.RegisterAccount(t, relay.AccountKey)
	start(t, m, e)
	waitFor(t, 20*time.Second, "the certificate for "+front, func() error {
		_, err := e.served(t, front, p.Roots())
		return err
	})
	orders := p.Orders(accountURL)
	if len(orders) != 1 || orders[0].Identifiers[0].Value != front {
		t.Fatalf("orders of acmetool's account: %d", len(orders))
	}
	if got, err := m.AccountURL(context.Background()); err != nil || got != accountURL {
		t.Fatalf("AccountURL %q, %v; want %q", got, err, accountURL)
	}
	stored, err := m.store.s.Load(context.Background(), accountKeyKey(issuerKey(p.URL)))
	if err != nil || !bytes.Equal(stored, relay.AccountKeyPEM) {
		t.Fatalf("the edge's account key is not acmetool's: %v", err)
	}
	if chain, _ := os.ReadFile(cfg.ExportCert); !bytes.Equal(chain, relay.ChainPEM) {
		t.Fatal("acmetool's live certificate was rewritten")
	}
	if c := calls(); len(c) != 0 {
		t.Fatalf("reload ran without a change: %q", c)
	}
}

// A garbled acmetool account key is never replaced by a new account (the
// relay's CAA record may pin it): the error names the file, and the edge
// keeps serving acmetool's certificate.
func TestManagerGarbledAcmetoolAccountKey(t *testing.T) {
	domain, front := "garbled.test", "front-garbled.test"
	p := acmetest.Start(t, acmetest.Options{})
	relay := acmetest.NewRelay(t, filepath.Join(t.TempDir(), "acme"), p.URL, domain)
	keyFiles, _ := filepath.Glob(filepath.Join(relay.Dir, "accounts", "*", "*", "privkey"))
	if len(keyFiles) != 1 {
		t.Fatalf("account keys: %v", keyFiles)
	}
	os.WriteFile(keyFiles[0], []byte("-----BEGIN EC PRIVATE KEY-----\nZ2FyYmxlZA==\n-----END EC PRIVATE KEY-----\n"), 0o600)
	cfg := Config{
		Domain: domain, Names: []string{front}, CA: p.URL, CARootFile: p.RootFile,
		StorageDir: filepath.Join(t.TempDir(), "storage"), AcmetoolDir: relay.Dir, Retry: fastRetry,
	}
	m, e := newManagerOn(t, p, cfg, domain, front)
	start(t, m, e)
	waitFor(t, 10*time.Second, "the account key error", func() error {
		if s := statusOf(m, front); !strings.Contains(s.LastError, keyFiles[0]) {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	if _, err := e.served(t, domain, relay.Roots); err != nil {
		t.Fatalf("acmetool's certificate is not served: %v", err)
	}
	if _, err := m.store.s.Load(context.Background(), accountKeyKey(issuerKey(p.URL))); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an account key was made in place of acmetool's: %v", err)
	}
	if _, err := m.AccountURL(context.Background()); err == nil || !strings.Contains(err.Error(), keyFiles[0]) {
		t.Fatalf("AccountURL: want an error naming %s, got %v", keyFiles[0], err)
	}
}

func TestDecodeAcmetoolURLPart(t *testing.T) {
	for part, want := range map[string]string{
		"acme-v02.api.letsencrypt.org%2fdirectory": "https://acme-v02.api.letsencrypt.org/directory",
		"127.0.0.1%3a14000%2fdir":                  "https://127.0.0.1:14000/dir",
		"http:example.com":                         "http://example.com/",
	} {
		if got, err := decodeAcmetoolURLPart(part); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", part, got, err, want)
		}
	}
}

// The installer's offline takeover: once, then nothing more.
func TestImportAcmetoolOfflineAndIdempotent(t *testing.T) {
	domain := "offline.test"
	relay := acmetest.NewRelay(t, filepath.Join(t.TempDir(), "acme"), LetsEncrypt, domain)
	cfg := Config{Domain: domain, StorageDir: filepath.Join(t.TempDir(), "storage"), AcmetoolDir: relay.Dir}
	imp, err := ImportAcmetool(cfg, testLogger(t))
	if err != nil || !strings.HasSuffix(imp.AccountKey, "/privkey") || imp.Certificate != filepath.Join(relay.Live, "fullchain") {
		t.Fatalf("first import: %+v, %v", imp, err)
	}
	again, err := ImportAcmetool(cfg, testLogger(t))
	if err != nil || again != (Imported{}) {
		t.Fatalf("second import changed something: %+v, %v", again, err)
	}
	m, err := NewManager(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "www." + domain})
	if err != nil || !bytes.Equal(pemChain([]*x509.Certificate{c.Leaf}), relay.ChainPEM) {
		t.Fatalf("imported certificate not served: %v", err)
	}
	// An account key at another CA is not taken for this one.
	other := cfg
	other.CA, other.StorageDir = "https://acme.example/dir", filepath.Join(t.TempDir(), "storage")
	if imp, err := ImportAcmetool(other, testLogger(t)); err != nil || imp.AccountKey != "" {
		t.Fatalf("import for another CA: %+v, %v", imp, err)
	}
}
