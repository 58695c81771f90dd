package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/mail"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/zap/zaptest"
)

// The tests share one CA and leaf (for the test names), made in TestMain,
// so that a client can resume a session with a restarted edge.
var (
	testLeaf  *tls.Certificate
	testRoots *x509.CertPool
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edge-test-ca")
	if err != nil {
		panic(err)
	}
	ca, err := acme.LoadOrCreateLocalCA(dir, time.Now())
	if err == nil {
		testLeaf, err = ca.Leaf(dir, []string{"chat.example", "www.chat.example", "127.0.0.1"}, time.Now())
	}
	if err != nil {
		panic(err)
	}
	testRoots = x509.NewCertPool()
	testRoots.AppendCertsFromPEM(ca.CertPEM)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type testEdge struct {
	*Edge
	roots *x509.CertPool
}

// startEdge runs an edge with the three listeners on loopback port 0 and an
// HTTP server answering "web" on the HTTP route.
func startEdge(t testing.TB, mod func(*Config), backends Backends) *testEdge {
	t.Helper()
	cfg := Config{
		Listeners: []ListenerConfig{
			{Name: "https", Address: "127.0.0.1:0", Kind: KindMux},
			{Name: "imaps", Address: "127.0.0.1:0", Kind: KindIMAP},
			{Name: "smtps", Address: "127.0.0.1:0", Kind: KindSMTP},
		},
		Hostname: "chat.example",
	}
	if mod != nil {
		mod(&cfg)
	}
	e, err := New(cfg, zaptest.NewLogger(t), acme.NewStatic(testLeaf, "local-ca").GetCertificate)
	if err != nil {
		t.Fatal(err)
	}
	e.SetBackends(backends)
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "web "+r.Proto) }),
		ConnState: e.HTTPConnState,
	}
	go srv.Serve(e.HTTPListener())
	t.Cleanup(func() {
		e.Shutdown()
		srv.Close()
	})
	return &testEdge{Edge: e, roots: testRoots}
}

func (te *testEdge) addr(name string) string { return te.Addr(name).String() }

// dial opens a TLS connection to the named listener.
func (te *testEdge) dial(t testing.TB, name string, alpn []string, echList []byte) (*tls.Conn, error) {
	t.Helper()
	return tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", te.addr(name), &tls.Config{
		ServerName:                     "chat.example",
		RootCAs:                        te.roots,
		NextProtos:                     alpn,
		EncryptedClientHelloConfigList: echList,
	})
}

// testBackend is a backend daemon stand-in: it requires a PROXY v2 header,
// greets, then echoes every byte back. It records the headers it received.
type testBackend struct {
	ln       net.Listener
	greeting string
	headers  chan *proxyproto.Header
	wg       sync.WaitGroup
}

func newTestBackend(t testing.TB, greeting string) *testBackend {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &proxyproto.Listener{
		Listener:          raw,
		ReadHeaderTimeout: 5 * time.Second,
		ConnPolicy:        func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil },
	}
	b := &testBackend{ln: ln, greeting: greeting, headers: make(chan *proxyproto.Header, 1024)}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Go(func() { b.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		b.wg.Wait()
	})
	return b
}

func (b *testBackend) serve(c net.Conn) {
	defer c.Close()
	pc := c.(*proxyproto.Conn)
	if _, err := io.WriteString(c, b.greeting); err != nil {
		return
	}
	if h := pc.ProxyHeader(); h != nil {
		select {
		case b.headers <- h: // tests that look at headers read them as they come
		default:
		}
	}
	// Echo until the client half-closes, then say goodbye and close: what
	// IMAP and SMTP servers do after LOGOUT / QUIT.
	if _, err := io.Copy(c, c); err == nil {
		io.WriteString(c, "bye\r\n")
	}
}

func (b *testBackend) backend(t testing.TB, e *Edge, proto mail.Protocol) Backend {
	t.Helper()
	mb, err := mail.NewBackend(mail.BackendConfig{
		Protocol: proto, Mode: "proxy", Address: b.ln.Addr().String(),
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return mb
}

// startEdgeWithBackends wires an IMAP and an SMTP test backend in proxy mode.
func startEdgeWithBackends(t testing.TB, mod func(*Config)) (*testEdge, *testBackend, *testBackend) {
	t.Helper()
	imapB := newTestBackend(t, "* OK test imap ready\r\n")
	smtpB := newTestBackend(t, "220 test smtp ready\r\n")
	te := startEdge(t, mod, Backends{})
	te.SetBackends(Backends{IMAP: imapB.backend(t, te.Edge, mail.IMAP), SMTP: smtpB.backend(t, te.Edge, mail.SMTP)})
	return te, imapB, smtpB
}

func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read line: %v (got %q)", err, line)
	}
	return line
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// expectClosed reads (and discards, e.g. a TLS alert) until the peer closes,
// failing if that takes longer than d, the edge's timeout plus slack.
func expectClosed(t testing.TB, c net.Conn, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			t.Fatalf("connection still open after %v", d)
		}
		return
	}
}
