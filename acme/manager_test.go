package acme

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/acmetest"
)

func TestManagerObtainsServesAndExports(t *testing.T) {
	names := []string{"obtain.test", "www.obtain.test", "mta-sts.obtain.test"}
	dir := t.TempDir()
	reload, calls := recordingCommand(t, 0)
	cfg := Config{
		Domain: names[0], Names: names, StorageDir: filepath.Join(dir, "storage"),
		ExportCert: filepath.Join(dir, "live", names[0], "fullchain"), ExportKey: filepath.Join(dir, "live", names[0], "privkey"),
		Reload: [][]string{reload}, Retry: fastRetry, ExportRetry: fastRetry,
	}
	m, e, p := startManager(t, cfg, acmetest.Options{}, names...)
	start(t, m, e)
	// The mail domain's certificate is there when Start returns; the others
	// follow in the background.
	for _, name := range names {
		waitFor(t, 30*time.Second, "certificate for "+name, func() error {
			chain, err := e.served(t, name, p.Roots())
			if err != nil {
				return err
			}
			return chain[0].VerifyHostname(name)
		})
	}
	// Clients without SNI, and names the edge has no certificate for, get
	// the mail domain's.
	for _, sni := range []string{"", "unknown.example"} {
		c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: sni})
		if err != nil || c.Leaf.VerifyHostname(names[0]) != nil {
			t.Fatalf("SNI %q: %v", sni, err)
		}
	}
	waitFor(t, 10*time.Second, "export and reload", func() error {
		if c := calls(); len(c) != 1 {
			return fmt.Errorf("reload calls %q", c)
		}
		return nil
	})
	exported, err := os.ReadFile(cfg.ExportCert)
	if err != nil {
		t.Fatal(err)
	}
	served, _ := e.served(t, names[0], p.Roots())
	if !bytes.Equal(exported, pemChain(served)) {
		t.Fatal("exported chain differs from the served one")
	}
	for file, mode := range map[string]os.FileMode{cfg.ExportCert: 0o644, cfg.ExportKey: 0o600} {
		if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v, want %v", file, err, fi.Mode().Perm(), mode)
		}
	}
	for _, s := range m.Status() {
		if s.LastError != "" || s.NotAfter.IsZero() || !strings.Contains(s.Issuer, "Pebble") || s.NextAttempt.IsZero() {
			t.Errorf("status %+v", s)
		}
	}
	// Every order came from one account: the edge's.
	url, err := m.AccountURL(context.Background())
	if err != nil || len(p.Orders(url)) != len(names) {
		t.Fatalf("account %q (%v) has %d orders, want %d", url, err, len(p.Orders(url)), len(names))
	}
}

// startManager makes a Manager, a test edge for it, and Pebble validating
// against the edge.
func startManager(t *testing.T, cfg Config, opts acmetest.Options, dnsNames ...string) (*Manager, *testEdge, *acmetest.Pebble) {
	t.Helper()
	p := acmetest.Start(t, opts)
	m, e := newManagerOn(t, p, cfg, dnsNames...)
	return m, e, p
}

// A CA that is down, then refuses orders, never stops serving: the mail
// domain's certificate stands in for the name without one, the failure and
// the next attempt show in Status, and the certificate comes once the CA
// is back.
func TestManagerKeepsServingWhileCAFails(t *testing.T) {
	domain, extra := "down.test", "ech-front.test"
	storage := t.TempDir()
	cfg := Config{Domain: domain, StorageDir: storage, Retry: fastRetry}
	m, e, p := startManager(t, cfg, acmetest.Options{}, domain, extra)
	if err := m.Start(context.Background(), e.listeners()); err != nil {
		t.Fatal(err)
	}
	m.Stop()

	// The same storage, one name more, and the CA unreachable.
	p.SetMode(acmetest.Down)
	cfg.Names = []string{extra}
	m2, e2 := newManagerOn(t, p, cfg, domain, extra)
	start(t, m2, e2)
	for _, mode := range []acmetest.Mode{acmetest.Down, acmetest.RateLimit} {
		p.SetMode(mode)
		want := map[acmetest.Mode]string{acmetest.Down: "EOF", acmetest.RateLimit: "rateLimited"}[mode]
		var failedAt time.Time
		waitFor(t, 10*time.Second, "the failure in Status", func() error {
			s := statusOf(m2, extra)
			if !strings.Contains(s.LastError, want) || !s.NextAttempt.After(s.LastErrorAt) || !s.LastErrorAt.After(failedAt) {
				return fmt.Errorf("status %+v", s)
			}
			return nil
		})
		failedAt = statusOf(m2, extra).LastErrorAt
		chain, err := e2.served(t, extra, p.Roots())
		if err == nil || !strings.Contains(err.Error(), "certificate is valid for "+domain) {
			t.Fatalf("%s without a certificate: want the mail domain's, got %v %v", extra, chain, err)
		}
	}
	p.SetMode(acmetest.Up)
	waitFor(t, 20*time.Second, "the certificate once the CA is back", func() error {
		if _, err := e2.served(t, extra, p.Roots()); err != nil {
			return err
		}
		if s := statusOf(m2, extra); s.LastError != "" {
			return fmt.Errorf("status still has an error: %+v", s)
		}
		return nil
	})
}

// Without any certificate for the mail domain, a CA that cannot be
// reached stops the first start with an error that says why.
func TestManagerFirstStartWithoutCertificateFails(t *testing.T) {
	domain := "first.test"
	m, e, p := startManager(t, Config{Domain: domain, StorageDir: t.TempDir(), Retry: fastRetry}, acmetest.Options{}, domain)
	p.SetMode(acmetest.Down)
	err := m.Start(context.Background(), e.listeners())
	if err == nil || !strings.Contains(err.Error(), "no certificate for "+domain) || !strings.Contains(err.Error(), p.URL) {
		t.Fatalf("want a clear error, got %v", err)
	}
	m.Stop()

	missing := filepath.Join(t.TempDir(), "no-such-root.pem")
	m2, err := NewManager(Config{Domain: domain, StorageDir: t.TempDir(), CA: p.URL, CARootFile: missing}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	err = m2.Start(context.Background(), e.listeners())
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("missing CA root file: want an error naming %s, got %v", missing, err)
	}
}

// Bad input with a certificate at hand: the edge keeps serving it, and the
// error, naming the file, is in Status.
func TestManagerBadInputKeepsServing(t *testing.T) {
	domain := "bad.test"
	dir := t.TempDir()
	cfg := Config{Domain: domain, StorageDir: filepath.Join(dir, "storage"), Retry: fastRetry, ExportRetry: fastRetry}
	m, e, p := startManager(t, cfg, acmetest.Options{}, domain)
	if err := m.Start(context.Background(), e.listeners()); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	first, _ := e.served(t, domain, p.Roots())

	// An unreadable CA root file (no CA can be asked to renew anything) and
	// an export folder that cannot be made (its parent is a file: the tests
	// may run as root).
	blocker := filepath.Join(dir, "blocker")
	os.WriteFile(blocker, []byte("not a folder"), 0o644)
	cfg.CA, cfg.CARootFile = p.URL, filepath.Join(dir, "garbled-root.pem")
	os.WriteFile(cfg.CARootFile, []byte("-----BEGIN CERTIFICATE-----\ngarbage\n"), 0o644)
	cfg.ExportCert, cfg.ExportKey = filepath.Join(blocker, "live", "fullchain"), filepath.Join(blocker, "live", "privkey")
	m2, err := NewManager(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	e2 := startTestEdge(t, m2)
	if err := m2.Start(context.Background(), e2.listeners()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m2.Stop)
	waitFor(t, 10*time.Second, "the CA root error", func() error {
		if s := statusOf(m2, domain); !strings.Contains(s.LastError, cfg.CARootFile) && !strings.Contains(s.LastError, blocker) {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	waitFor(t, 10*time.Second, "both errors logged in turn", func() error {
		if m2.export == nil {
			return errors.New("no exporter")
		}
		if msg, _, _ := m2.export.status(); !strings.Contains(msg, blocker) {
			return fmt.Errorf("export status %q", msg)
		}
		m2.mu.Lock()
		defer m2.mu.Unlock()
		if err := m2.states[domain].lastErr; err == nil || !strings.Contains(err.Error(), cfg.CARootFile) {
			return fmt.Errorf("acme status %v", err)
		}
		return nil
	})
	chain, err := e2.served(t, domain, p.Roots())
	if err != nil || !chain[0].Equal(first[0]) {
		t.Fatalf("the stored certificate is not served: %v", err)
	}
	// Fixing the folder lets the retried export through.
	os.Remove(blocker)
	waitFor(t, 10*time.Second, "the export after the fix", func() error {
		_, err := os.Stat(cfg.ExportCert)
		return err
	})
}

// Recheck (a reload) retries a failed name at once instead of at its next
// attempt, here an hour away.
func TestManagerRecheckRetriesAtOnce(t *testing.T) {
	domain, extra := "recheck.test", "ech-recheck.test"
	cfg := Config{Domain: domain, StorageDir: t.TempDir(), Retry: fastRetry}
	m, e, p := startManager(t, cfg, acmetest.Options{}, domain, extra)
	if err := m.Start(context.Background(), e.listeners()); err != nil {
		t.Fatal(err)
	}
	m.Stop()

	p.SetMode(acmetest.Down)
	cfg.Names, cfg.Retry = []string{extra}, Backoff{Initial: time.Hour, Max: time.Hour}
	m2, e2 := newManagerOn(t, p, cfg, domain, extra)
	start(t, m2, e2)
	waitFor(t, 10*time.Second, "the failure in Status", func() error {
		if s := statusOf(m2, extra); s.LastError == "" || time.Until(s.NextAttempt) < 30*time.Minute {
			return fmt.Errorf("status %+v", s)
		}
		return nil
	})
	p.SetMode(acmetest.Up)
	m2.Recheck()
	waitFor(t, 20*time.Second, "the certificate after Recheck", func() error {
		_, err := e2.served(t, extra, p.Roots())
		return err
	})
}
