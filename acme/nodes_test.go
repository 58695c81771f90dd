package acme

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"chatmail-edge/internal/acmetest"

	acmeapi "github.com/mholt/acmez/v3/acme"
)

// twoNodes makes two Managers for names on one storage folder
// (certmagic's FileStorage and its file locks), each with its own edge;
// the CA validates at the first node's, as DNS would point it there.
func twoNodes(t *testing.T, p *acmetest.Pebble, names []string) (a, b *Manager, ea, eb *testEdge) {
	t.Helper()
	cfg := Config{
		Domain: names[0], Names: names[1:], CA: p.URL, CARootFile: p.RootFile,
		StorageDir: t.TempDir(), Retry: fastRetry, RenewCheck: fastCheck,
	}
	var err error
	if a, err = NewManager(cfg, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	if b, err = NewManager(cfg, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	ea, eb = startTestEdge(t, a), startTestEdge(t, b)
	httpPort, tlsPort := ea.ports()
	p.Validate(acmetest.StartDNS(t, names...), httpPort, tlsPort)
	return a, b, ea, eb
}

// newestCert is the certificate of the account's last order for name.
func newestCert(p *acmetest.Pebble, account, name string) (int, error) {
	orders, certs := p.OrdersFor(account, name)
	if len(orders) == 0 || certs[len(certs)-1] == nil {
		return len(orders), fmt.Errorf("%s: no certificate issued yet", name)
	}
	return len(orders), nil
}

// Two nodes on one storage, started at once, with certificates that live
// seconds: across the first start and the renewals, each certificate is
// ordered once (the first order of a name obtains it, every later one
// replaces the one before, RFC 9773 §5, and no attempt fails as a
// duplicate would), and both nodes serve the newest one of every name.
func TestTwoNodesOrderOncePerName(t *testing.T) {
	names := []string{"nodes.test", "mta-sts.nodes.test"}
	p := acmetest.Start(t, acmetest.Options{Validity: 12 * time.Second})
	a, b, ea, eb := twoNodes(t, p, names)
	errs := make(chan error, 2)
	for m, e := range map[*Manager]*testEdge{a: ea, b: eb} {
		go func() { errs <- m.Start(context.Background(), e.listeners()) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(a.Stop)
	t.Cleanup(b.Stop)
	account, err := a.AccountURL(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 40*time.Second, "a renewal of every name", func() error {
		for _, name := range names {
			if n, err := newestCert(p, account, name); err != nil || n < 2 {
				return fmt.Errorf("%s: %d orders (%v)", name, n, err)
			}
		}
		return nil
	})
	waitFor(t, 10*time.Second, "both nodes serving the newest certificates", func() error {
		for _, name := range names {
			_, certs := p.OrdersFor(account, name)
			newest := certs[len(certs)-1]
			for node, e := range map[string]*testEdge{"a": ea, "b": eb} {
				chain, err := e.served(t, name, p.Roots())
				if err != nil {
					return err
				}
				if newest == nil || !chain[0].Equal(newest) {
					return fmt.Errorf("node %s serves %s an older certificate", node, name)
				}
			}
		}
		return nil
	})
	a.Stop()
	b.Stop()
	for _, name := range names {
		orders, certs := p.OrdersFor(account, name)
		for i, o := range orders {
			want := ""
			if i > 0 && certs[i-1] != nil {
				if want, err = acmeapi.ARIUniqueIdentifier(certs[i-1]); err != nil {
					t.Fatal(err)
				}
			}
			if o.Replaces != want {
				t.Fatalf("%s: order %d of %d replaces %q, want %q", name, i+1, len(orders), o.Replaces, want)
			}
		}
	}
	for node, m := range map[string]*Manager{"a": a, "b": b} {
		for _, s := range m.Status() {
			if s.LastError != "" {
				t.Errorf("node %s: %s: %s", node, s.Names[0], s.LastError)
			}
		}
	}
}

// A renewal that comes early on one node (a new key, a revocation, a
// reload after failures there) reaches the other, whose copy is not due,
// within a bound: its storage check, every RenewCheck, finds it. The
// second node never orders anything.
func TestSecondNodeServesAnEarlyRenewal(t *testing.T) {
	names := []string{"early.test", "www.early.test"}
	p := acmetest.Start(t, acmetest.Options{})
	a, b, ea, eb := twoNodes(t, p, names)
	start(t, a, ea)
	for _, name := range names {
		leafOf(t, ea, name, p.Roots())
	}
	start(t, b, eb)
	before := map[string][]byte{}
	for _, name := range names {
		before[name] = leafOf(t, eb, name, p.Roots()).Raw
	}
	renewNow(t, a, names[0])
	account, err := a.AccountURL(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, certs := p.OrdersFor(account, names[0])
	renewed := certs[len(certs)-1]
	waitFor(t, 10*time.Second, "the second node serving the renewal", func() error {
		chain, err := eb.served(t, names[0], p.Roots())
		if err != nil {
			return err
		}
		if !chain[0].Equal(renewed) {
			return errors.New("the second node serves the certificate before")
		}
		return nil
	})
	for name, want := range map[string]int{names[0]: 2, names[1]: 1} {
		if orders, _ := p.OrdersFor(account, name); len(orders) != want {
			t.Fatalf("%s: %d orders, want %d", name, len(orders), want)
		}
	}
	if chain, _ := eb.served(t, names[1], p.Roots()); string(chain[0].Raw) != string(before[names[1]]) {
		t.Fatal("the name not renewed changed on the second node")
	}
}
