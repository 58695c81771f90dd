package acme

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"chatmail-edge/internal/acmetest"

	acmeapi "github.com/mholt/acmez/v3/acme"
)

// Delta Chat pins the key of a certificate it verified and later accepts
// even an expired certificate with the same key (core src/net/tls/spki.rs).
// Renewals, certmagic's own on its schedule, keep the key, and so does one
// after a restart.
func TestRenewalsKeepTheKey(t *testing.T) {
	domain := "keep.test"
	cfg := Config{Domain: domain, StorageDir: t.TempDir(), Retry: fastRetry, RenewCheck: fastCheck}
	m, e, p := startManager(t, cfg, acmetest.Options{Validity: 9 * time.Second}, domain)
	start(t, m, e)
	first := leafOf(t, e, domain, p.Roots())
	second := newLeaf(t, e, domain, p.Roots(), first)
	third := newLeaf(t, e, domain, p.Roots(), second)
	m.Stop()

	m2, e2 := newManagerOn(t, p, cfg, domain)
	start(t, m2, e2)
	renewNow(t, m2, domain)
	fourth := newLeaf(t, e2, domain, p.Roots(), third)
	for i, c := range []*x509.Certificate{second, third, fourth} {
		if spki(c) != spki(first) {
			t.Fatalf("renewal %d has a new key", i+1)
		}
	}
}

// The takeover from acmetool keeps acmetool's key: its certificate for the
// mail domain, due for renewal, is renewed with it, replacing it (RFC 9773
// §5) at the CA that issued it, and the names it also covered get their own
// certificates with it; the renewed one is exported.
func TestTakeoverKeepsAcmetoolsKey(t *testing.T) {
	domain := "takeover-key.test"
	names := []string{domain, "mta-sts." + domain, "www." + domain}
	p := acmetest.Start(t, acmetest.Options{})
	// acmetool's account and certificate come before the edge listens; the
	// CA validates on the edge's ports from newManagerOn on.
	p.Validate(acmetest.StartDNS(t), 0, 0)
	// 90 days issued 61 days ago: less than a third is left.
	relay := acmetest.NewRelayIssued(t, filepath.Join(t.TempDir(), "acme"), p, domain, time.Now().Add(-61*24*time.Hour))
	reload, calls := recordingCommand(t, 0)
	cfg := Config{
		Domain: domain, Names: names[1:], CA: p.URL, CARootFile: p.RootFile,
		StorageDir: filepath.Join(t.TempDir(), "storage"), AcmetoolDir: relay.Dir,
		Retry: fastRetry, ExportRetry: fastRetry, RenewCheck: fastCheck,
		ExportCert: filepath.Join(relay.Live, "fullchain"), ExportKey: filepath.Join(relay.Live, "privkey"),
		Reload: [][]string{reload},
	}
	m, e := newManagerOn(t, p, cfg, names...)
	acmetoolCert := leafOf(t, e, domain, p.Roots())
	start(t, m, e)
	for _, name := range names {
		c := newLeaf(t, e, name, p.Roots(), acmetoolCert)
		if !slices.Equal(c.DNSNames, []string{name}) || spki(c) != spki(acmetoolCert) {
			t.Fatalf("%s: certificate for %v, same key %v", name, c.DNSNames, spki(c) == spki(acmetoolCert))
		}
	}
	// All on acmetool's account: one renewal of its certificate, and one
	// order each for the other names.
	replaced, err := acmeapi.ARIUniqueIdentifier(acmetoolCert)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		orders, _ := p.OrdersFor(relay.AccountURL, name)
		want := ""
		if name == domain {
			want = replaced
		}
		if len(orders) != 1 || orders[0].Replaces != want {
			t.Fatalf("%s: %d orders (%+v), want one replacing %q", name, len(orders), orders, want)
		}
	}
	waitFor(t, 10*time.Second, "the renewed certificate exported and the daemons reloaded", func() error {
		served, err := e.served(t, domain, p.Roots())
		if err != nil {
			return err
		}
		chain, err := os.ReadFile(cfg.ExportCert)
		if err != nil || string(chain) != string(pemChain(served)) {
			return fmt.Errorf("export: %v", err)
		}
		if c := calls(); len(c) != 1 {
			return fmt.Errorf("reload calls %q", c)
		}
		return nil
	})
}

// new_key makes one new key per value: the next renewal after a new value
// has a new key, the ones after it keep that key, also after a restart
// with the value unchanged; false keeps the key.
func TestNewKeyOncePerValue(t *testing.T) {
	domain := "newkey.test"
	cfg := Config{Domain: domain, StorageDir: t.TempDir(), Retry: fastRetry}
	p := acmetest.Start(t, acmetest.Options{})
	var leaf *x509.Certificate
	stage := func(newKey string, renewals int) []string {
		t.Helper()
		cfg.NewKey = newKey
		m, e := newManagerOn(t, p, cfg, domain)
		start(t, m, e)
		if leaf == nil {
			leaf = leafOf(t, e, domain, p.Roots())
		}
		keys := []string{spki(leaf)}
		for range renewals {
			renewNow(t, m, domain)
			leaf = newLeaf(t, e, domain, p.Roots(), leaf)
			keys = append(keys, spki(leaf))
		}
		m.Stop()
		return keys
	}
	first := stage("", 1)
	if first[1] != first[0] {
		t.Fatal("a renewal without new_key made a new key")
	}
	rotated := stage("2026-05-rotation", 2)
	if rotated[1] == rotated[0] || rotated[2] != rotated[1] {
		t.Fatalf("new_key: keys %.8v, want a new one once", rotated)
	}
	for _, value := range []string{"2026-05-rotation", "false"} {
		if keys := stage(value, 1); keys[1] != rotated[2] {
			t.Fatalf("new_key = %s after the rotation: a new key", value)
		}
	}
}
