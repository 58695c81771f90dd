package acme

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/acmetest"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// testEdge stands in for the edge: a TLS listener that takes its
// certificates from the Manager (and so answers TLS-ALPN-01) and a plain
// HTTP listener with the Manager's HTTP-01 handler in front of a 301.
type testEdge struct {
	tls, http net.Listener
}

func startTestEdge(t *testing.T, m *Manager) *testEdge {
	t.Helper()
	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		GetCertificate: m.GetCertificate,
		NextProtos:     []string{"http/1.1", acmeTLSProtocol},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := tlsLn.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.HTTPHandler(http.RedirectHandler("https://example.invalid/", http.StatusMovedPermanently))}
	go srv.Serve(httpLn)
	t.Cleanup(func() { tlsLn.Close(); srv.Close() })
	return &testEdge{tls: tlsLn, http: httpLn}
}

func (e *testEdge) listeners() Listeners { return Listeners{HTTP: e.http.Addr(), HTTPS: e.tls.Addr()} }

func (e *testEdge) ports() (int, int) {
	return e.http.Addr().(*net.TCPAddr).Port, e.tls.Addr().(*net.TCPAddr).Port
}

// served is the certificate chain a client gets for name.
func (e *testEdge) served(t *testing.T, name string, roots *x509.CertPool) ([]*x509.Certificate, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", e.tls.Addr().String(), &tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates, nil
}

// newManagerOn makes a Manager for p and a test edge for it, and has p
// validate against that edge, with DNS for dnsNames. It does not Start it.
func newManagerOn(t *testing.T, p *acmetest.Pebble, cfg Config, dnsNames ...string) (*Manager, *testEdge) {
	t.Helper()
	if cfg.CA == "" {
		cfg.CA, cfg.CARootFile = p.URL, p.RootFile
	}
	m, err := NewManager(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	e := startTestEdge(t, m)
	httpPort, tlsPort := e.ports()
	p.Validate(acmetest.StartDNS(t, dnsNames...), httpPort, tlsPort)
	return m, e
}

// start starts m and stops it at the end of the test.
func start(t *testing.T, m *Manager, e *testEdge) {
	t.Helper()
	if err := m.Start(context.Background(), e.listeners()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	acmetest.WaitFor(t, timeout, what, cond)
}

func testLogger(t *testing.T) *zap.Logger {
	if testing.Verbose() {
		return zaptest.NewLogger(t)
	}
	return zap.NewNop()
}

// fastRetry makes failed attempts come back quickly.
var fastRetry = Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}

// fastCheck has certmagic look for renewals, and the Manager read the
// storage, often enough for certificates that live seconds.
const fastCheck = 100 * time.Millisecond

// recordingCommand is a reload command that appends its arguments to a
// file; with failFirst it fails the first n calls.
func recordingCommand(t *testing.T, failFirst int) ([]string, func() []string) {
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	script := filepath.Join(dir, "reload")
	body := fmt.Sprintf(`#!/bin/sh
echo "$*" >> %q
n=$(wc -l < %q)
[ "$n" -gt %d ] || { echo "daemon not ready" >&2; exit 1; }
`, calls, calls, failFirst)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{script, "dovecot"}, func() []string {
		b, err := os.ReadFile(calls)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return strings.Split(strings.TrimSpace(string(b)), "\n")
	}
}

func statusOf(m *Manager, name string) CertStatus {
	for _, s := range m.Status() {
		if s.Names[0] == name {
			return s
		}
	}
	return CertStatus{}
}

func pemChain(chain []*x509.Certificate) []byte {
	var out []byte
	for _, c := range chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// renewNow renews name at once, as certmagic does when a certificate is
// due (RenewCertSync, forced: the certificate is fresh), and has m serve
// the result.
func renewNow(t *testing.T, m *Manager, name string) {
	t.Helper()
	if err := m.configFor(name).RenewCertSync(context.Background(), name, true); err != nil {
		t.Fatalf("renew %s: %v", name, err)
	}
	m.pokeSync()
}

// spki is what Delta Chat pins of a certificate it verified: the hash of
// its subject public key info (core src/net/tls/spki.rs).
func spki(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// leafOf waits for name's certificate, verified with roots, at e.
func leafOf(t *testing.T, e *testEdge, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	return newLeaf(t, e, name, roots, nil)
}

// newLeaf waits until e serves name a certificate other than prev.
func newLeaf(t *testing.T, e *testEdge, name string, roots *x509.CertPool, prev *x509.Certificate) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	waitFor(t, 30*time.Second, "a new certificate for "+name, func() error {
		chain, err := e.served(t, name, roots)
		if err != nil {
			return err
		}
		if chain[0].Equal(prev) {
			return errors.New("still the certificate before")
		}
		leaf = chain[0]
		return leaf.VerifyHostname(name)
	})
	return leaf
}
