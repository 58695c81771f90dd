package mail

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"chatmail-edge/internal/testserver"

	"github.com/pires/go-proxyproto"
	"go.uber.org/zap/zaptest"
)

// testDaemons stands in for Dovecot and Postfix in the backend tests: the
// local delivery's go-imap and go-smtp servers, served on listeners the test
// chooses (PROXY v2 required, or implicit TLS).
type testDaemons struct {
	delivery           *LocalDelivery
	imapAddr, smtpAddr string
	headers            chan *proxyproto.Header // PROXY headers received, in order
}

func startTestDaemons(t *testing.T, wrap func(net.Listener) net.Listener) *testDaemons {
	t.Helper()
	d := &testDaemons{
		delivery: NewLocalDelivery("example.org", zaptest.NewLogger(t)),
		headers:  make(chan *proxyproto.Header, 16),
	}
	d.delivery.listen = func() (net.Listener, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		return &recordingListener{Listener: wrap(ln), headers: d.headers}, nil
	}
	if err := d.delivery.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.delivery.Close(); err != nil {
			t.Error(err)
		}
	})
	d.imapAddr, d.smtpAddr = d.delivery.IMAPAddr(), d.delivery.SMTPAddr()
	return d
}

// nextHeader returns the next PROXY header a daemon received.
func (d *testDaemons) nextHeader(t *testing.T) *proxyproto.Header {
	t.Helper()
	select {
	case h := <-d.headers:
		if h == nil {
			t.Fatal("a connection came without a readable PROXY header")
		}
		return h
	case <-time.After(10 * time.Second):
		t.Fatal("no PROXY header received")
		return nil
	}
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// requireProxyHeader makes a listener strict as a haproxy=yes Dovecot port:
// every connection must start with a PROXY header.
func requireProxyHeader(ln net.Listener) net.Listener {
	return &proxyproto.Listener{
		Listener: ln,
		ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			return proxyproto.REQUIRE, nil
		},
		ReadHeaderTimeout: 5 * time.Second,
	}
}

// recordingListener passes on the PROXY header of each connection, once the
// server has read it.
type recordingListener struct {
	net.Listener
	headers chan<- *proxyproto.Header
}

func (l *recordingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	header := conn
	if tc, ok := conn.(*tls.Conn); ok { // proxyThenTLS: the header comes before the TLS
		header = tc.NetConn()
	}
	if pc, ok := header.(*proxyproto.Conn); ok {
		go func() { l.headers <- pc.ProxyHeader() }()
	}
	return conn, err
}

// implicitTLS wraps listeners as a daemon's 993/465 port with cert.
func implicitTLS(cert tls.Certificate) func(net.Listener) net.Listener {
	return func(ln net.Listener) net.Listener {
		return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
	}
}

// proxyThenTLS wraps listeners as a relay's ports for nodes in proxy mode
// (Dovecot `haproxy = yes` with `ssl = yes`, Postfix's upstream proxy
// protocol with wrappermode): a PROXY header, then TLS with cert.
func proxyThenTLS(cert tls.Certificate) func(net.Listener) net.Listener {
	return func(ln net.Listener) net.Listener { return implicitTLS(cert)(requireProxyHeader(ln)) }
}

// scriptedServer accepts connections, sends each the greeting (nothing when
// nil, like a hung daemon) and then stays silent.
func scriptedServer(t *testing.T, greeting []byte) string {
	t.Helper()
	return testserver.Serve(t, func(conn net.Conn) { conn.Write(greeting) })
}

// testContext is a context for one test step, bounded so that a hang fails
// the test instead of stalling it.
func testContext(t *testing.T, timeout time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return ctx
}
