// Package acmetest runs a real ACME server (Pebble, in process) and the DNS
// server its validation authority resolves names with, for tests on loopback.
package acmetest

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pebbleacme "github.com/letsencrypt/pebble/v2/acme"
	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/core"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// Mode is how the gate in front of Pebble treats requests.
type Mode int32

const (
	Up        Mode = iota // pass everything to Pebble
	Down                  // drop every connection, as a CA that is unreachable
	RateLimit             // answer new orders with 429 rateLimited (RFC 8555 §6.7)
)

// Pebble is a running ACME server. Its HTTPS front is started first (so
// that its URL is known), then Validate creates the validation authority
// with the ports that it must check, once the edge under test listens.
type Pebble struct {
	URL      string // directory URL
	RootFile string // PEM file of the CA that signs the HTTPS front, for --acme-ca-root
	DB       *db.MemoryStore

	srv     *httptest.Server
	handler atomic.Pointer[http.Handler]
	mode    atomic.Int32
	ca      *ca.CAImpl
	opts    wfeOptions
	direct  atomic.Int32 // orders made by Issue
	// requests is held (shared) by every request Pebble serves and
	// exclusively by Orders: Pebble's handlers write orders' fields
	// without their locks (wfe.go, FinalizeOrder), so a test reads them
	// only between requests.
	requests sync.RWMutex
}

// Options of the CA.
type Options struct {
	// Validity of issued certificates; 0 is Pebble's default (90 days).
	Validity time.Duration
	// RequireEAB makes the CA demand external account binding (RFC 8555
	// §7.3.4); keys are added with AddEAB.
	RequireEAB bool
}

// Start starts Pebble's HTTPS front. Requests before Validate get 503.
func Start(t testing.TB, opts Options) *Pebble {
	t.Helper()
	// Real validation (no PEBBLE_VA_ALWAYS_VALID), without the random
	// pauses Pebble adds between validation attempts.
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	p := &Pebble{}
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(p.serve))
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	p.URL = p.srv.URL + wfe.DirectoryPath
	p.RootFile = filepath.Join(t.TempDir(), "pebble-https-root.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	if err := os.WriteFile(p.RootFile, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	logger := log.New(io.Discard, "pebble ", 0)
	if testing.Verbose() {
		logger = log.New(t.Output(), "pebble ", log.Lmicroseconds)
	}
	p.DB = db.NewMemoryStore()
	validity := uint64(opts.Validity / time.Second)
	p.ca = ca.New(logger, p.DB, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "test profile", ValidityPeriod: validity},
	})
	p.opts = wfeOptions{logger: logger, requireEAB: opts.RequireEAB}
	return p
}

type wfeOptions struct {
	logger     *log.Logger
	requireEAB bool
}

// Validate creates the validation authority: it resolves names through
// resolver (host:port of a DNS server over TCP) and checks HTTP-01 on
// httpPort and TLS-ALPN-01 on tlsPort of the address it resolves.
func (p *Pebble) Validate(resolver string, httpPort, tlsPort int) {
	o := p.opts
	v := va.New(o.logger, httpPort, tlsPort, true, resolver, p.DB)
	w := wfe.New(o.logger, p.DB, v, p.ca, nil, true, o.requireEAB, 0, 0)
	h := w.Handler()
	p.handler.Store(&h)
}

// SetMode switches the gate.
func (p *Pebble) SetMode(m Mode) { p.mode.Store(int32(m)) }

// AddEAB registers an external account key (base64url HMAC key).
func (p *Pebble) AddEAB(keyID, hmacKey string) error {
	return p.DB.AddExternalAccountKeyByID(keyID, hmacKey)
}

// Roots is a pool with the CA's issuing root, for clients of the edge.
func (p *Pebble) Roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.GetRootCert(0).Cert)
	return pool
}

// HTTPClient talks to Pebble's HTTPS front.
func (p *Pebble) HTTPClient() *http.Client { return p.srv.Client() }

// Orders lists the orders of the account with the given URL.
func (p *Pebble) Orders(accountURL string) []*core.Order {
	p.requests.Lock()
	defer p.requests.Unlock()
	return p.DB.GetOrdersByAccountID(accountID(accountURL))
}

func accountID(accountURL string) string { return accountURL[strings.LastIndex(accountURL, "/")+1:] }

// OrdersFor lists the account's orders for one name, oldest first, and
// the certificate each got (nil while it has none).
func (p *Pebble) OrdersFor(accountURL, name string) (orders []*core.Order, certs []*x509.Certificate) {
	for _, o := range p.Orders(accountURL) {
		o.RLock()
		idents, cert := o.Identifiers, o.CertificateObject
		o.RUnlock()
		if len(idents) != 1 || idents[0].Value != name {
			continue
		}
		orders = append(orders, o)
		if cert != nil {
			certs = append(certs, cert.Cert)
		} else {
			certs = append(certs, nil)
		}
	}
	return orders, certs
}

// Issue has the CA sign a certificate for names with key, as if the account
// with the given URL had ordered it at notBefore (its lifetime starts
// there): state another client, such as acmetool, left behind. It is an
// order of that account, known to the CA's renewal information (RFC 9773)
// and as the certificate a renewal replaces (§5). It returns the chain as
// the CA serves it (PEM).
func (p *Pebble) Issue(t testing.TB, accountURL string, key crypto.PublicKey, names []string, notBefore time.Time) []byte {
	t.Helper()
	var idents []pebbleacme.Identifier
	var authzs []*core.Authorization // valid, but not in the CA's store: later orders validate anew
	for _, n := range names {
		ident := pebbleacme.Identifier{Type: pebbleacme.IdentifierDNS, Value: n}
		idents = append(idents, ident)
		authzs = append(authzs, &core.Authorization{
			Authorization: pebbleacme.Authorization{Status: pebbleacme.StatusValid, Identifier: ident},
			ExpiresDate:   time.Now().Add(24 * time.Hour),
		})
	}
	order := &core.Order{
		ID:        fmt.Sprintf("direct-%d", p.direct.Add(1)),
		AccountID: accountID(accountURL),
		Order: pebbleacme.Order{
			Status: pebbleacme.StatusValid, Identifiers: idents, Profile: "default",
			NotBefore: notBefore.UTC().Format(time.RFC3339),
		},
		Names:                names,
		AuthorizationObjects: authzs,
		BeganProcessing:      true,
		ParsedCSR:            &x509.CertificateRequest{DNSNames: names, PublicKey: key},
	}
	p.ca.CompleteOrder(order)
	if order.CertificateObject == nil {
		t.Fatalf("pebble did not issue for %v", names)
	}
	if _, err := p.DB.AddOrder(order); err != nil {
		t.Fatal(err)
	}
	if err := p.DB.AddOrderByIssuedSerial(order); err != nil {
		t.Fatal(err)
	}
	return order.CertificateObject.Chain(0)
}

func (p *Pebble) serve(w http.ResponseWriter, r *http.Request) {
	h := p.handler.Load()
	switch Mode(p.mode.Load()) {
	case Down:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	case RateLimit:
		if strings.HasSuffix(r.URL.Path, "/order-plz") {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders (test gate)","status":429}`)
			return
		}
	}
	if h == nil {
		http.Error(w, "pebble: no validation authority yet", http.StatusServiceUnavailable)
		return
	}
	p.requests.RLock()
	defer p.requests.RUnlock()
	(*h).ServeHTTP(w, r)
}

// Addr is the host:port of Pebble's HTTPS front.
func (p *Pebble) Addr() net.Addr { return p.srv.Listener.Addr() }

// ValidChallenges maps each identifier the account's orders validated to
// the challenge type that did it (http-01, tls-alpn-01).
func (p *Pebble) ValidChallenges(accountURL string) map[string]string {
	out := map[string]string{}
	for _, o := range p.Orders(accountURL) {
		o.RLock()
		authzs := o.AuthorizationObjects
		o.RUnlock()
		for _, a := range authzs {
			a.RLock()
			ident, chals := a.Identifier.Value, a.Challenges
			a.RUnlock()
			for _, c := range chals {
				c.RLock()
				if c.Status == "valid" {
					out[ident] = c.Type
				}
				c.RUnlock()
			}
		}
	}
	return out
}

// WaitFor polls cond until it returns nil, failing the test with cond's
// last error once timeout has passed.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v: %v", what, timeout, err)
		}
		<-tick.C
	}
}
