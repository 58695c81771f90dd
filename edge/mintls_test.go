package edge

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/mail"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// startEdgeObserved is startEdge with the edge's log entries kept for the
// test to read.
func startEdgeObserved(t *testing.T, backends Backends) (*testEdge, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	e, err := New(Config{
		Listeners: []ListenerConfig{{Name: "https", Address: "127.0.0.1:0", Kind: KindMux}, {Name: "imaps", Address: "127.0.0.1:0", Kind: KindIMAP}},
		Hostname:  "chat.example",
	}, zap.New(core), acme.NewStatic(testLeaf, "local-ca").GetCertificate)
	if err != nil {
		t.Fatal(err)
	}
	e.SetBackends(backends)
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := e.HTTPListener().Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "web")
			c.Close()
		}
	}()
	t.Cleanup(e.Shutdown)
	return &testEdge{Edge: e, roots: testRoots}, logs
}

// dialVersion dials a listener with TLS versions up to maxVersion.
func (te *testEdge) dialVersion(name string, maxVersion uint16, alpn ...string) (*tls.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", te.addr(name), &tls.Config{
		ServerName: "chat.example", RootCAs: te.roots, NextProtos: alpn, MaxVersion: maxVersion,
	})
}

// waitForLog waits until an entry with message msg whose detail contains
// want is logged: the edge logs after the client saw the alert, and
// nothing else tells when.
func waitForLog(t *testing.T, logs *observer.ObservedLogs, msg, want string) {
	t.Helper()
	waitFor(t, 10*time.Second, "a "+msg+" log entry with "+want, func() bool {
		for _, e := range logs.FilterMessage(msg).All() {
			if d, _ := e.ContextMap()["detail"].(string); strings.Contains(d, want) {
				return true
			}
		}
		return false
	})
}

// A TLS 1.2 client gets the site on 443, as from chatmail's nginx, but not
// IMAP or SMTP, which need TLS 1.3 as chatmail's Dovecot and Postfix do: it
// gets a protocol_version alert and the log says why.
func TestMinTLSPerRoute(t *testing.T) {
	imap := newTestBackend(t, "* OK imap\r\n")
	te, logs := startEdgeObserved(t, Backends{})
	te.SetBackends(Backends{IMAP: imap.backend(t, te.Edge, mail.IMAP)})

	for _, alpn := range [][]string{nil, {"http/1.1"}, {"h2", "http/1.1"}} {
		c, err := te.dialVersion("https", tls.VersionTLS12, alpn...)
		if err != nil {
			t.Fatalf("TLS 1.2 client with ALPN %v on 443: %v", alpn, err)
		}
		cs := c.ConnectionState()
		got, _ := io.ReadAll(c)
		c.Close()
		if cs.Version != tls.VersionTLS12 || string(got) != "web" {
			t.Errorf("TLS 1.2 client with ALPN %v: %s, read %q: want TLS 1.2 and the site", alpn, tls.VersionName(cs.Version), got)
		}
	}

	for _, alpn := range [][]string{{"imap"}, {"h2", "imap"}, {"smtp"}} {
		// The alert protocol_version (70, RFC 8446 §6), as crypto/tls names it.
		if _, err := te.dialVersion("https", tls.VersionTLS12, alpn...); err == nil || !strings.Contains(err.Error(), "remote error: tls: protocol version not supported") {
			t.Errorf("TLS 1.2 client with ALPN %v on 443: %v, want a protocol_version alert", alpn, err)
		}
	}
	waitForLog(t, logs, "connection dropped", "the imap route needs TLS 1.3 or later, the client offers up to TLS 1.2")
	waitForLog(t, logs, "connection dropped", "the smtp route needs TLS 1.3 or later")
	if _, err := te.dialVersion("imaps", tls.VersionTLS12); err == nil {
		t.Error("TLS 1.2 client on 993 accepted")
	}

	// TLS 1.3 gets everything.
	c, err := te.dialVersion("https", tls.VersionTLS13, "imap")
	if err != nil {
		t.Fatal(err)
	}
	greeting := make([]byte, len("* OK imap\r\n"))
	if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != "* OK imap\r\n" {
		t.Errorf("IMAP over TLS 1.3 on 443: %q %v", greeting, err)
	}
	c.Close()

	// The minimums follow SetLimits, for the next handshake.
	if err := te.SetLimits(Limits{MinTLS: MinTLS{HTTP: tls.VersionTLS13, IMAP: tls.VersionTLS12}}); err != nil {
		t.Fatal(err)
	}
	if _, err := te.dialVersion("https", tls.VersionTLS12, "http/1.1"); err == nil {
		t.Error("TLS 1.2 web client accepted with the web's minimum at TLS 1.3")
	}
	c, err = te.dialVersion("imaps", tls.VersionTLS12)
	if err != nil {
		t.Fatalf("TLS 1.2 client on 993 with the IMAP minimum at TLS 1.2: %v", err)
	}
	c.Close()
	if err := te.SetLimits(Limits{MinTLS: MinTLS{SMTP: tls.VersionTLS11}}); err == nil {
		t.Error("TLS 1.1 accepted as a minimum")
	}
}

// Picking the configuration by route allocates nothing: no tls.Config is
// cloned or built per handshake.
func TestConfigForClientAllocatesNothing(t *testing.T) {
	te := startEdge(t, nil, Backends{})
	l := te.listeners[0]
	chi := &tls.ClientHelloInfo{SupportedProtos: []string{"h2", "http/1.1"}, SupportedVersions: []uint16{tls.VersionTLS12}}
	chis := map[string]*tls.ClientHelloInfo{"web": chi}
	for name, protos := range map[string][]string{"imap": {"imap"}, "none": nil} {
		c := *chi
		c.SupportedProtos = protos
		chis[name] = &c
	}
	want := map[string]*tls.Config{"web": l.tls12, "imap": l.tls13, "none": l.tls12}
	for name, c := range chis {
		if got, err := l.configForClient(c); err != nil || got != want[name] {
			t.Errorf("%s: config %p, %v; want %p", name, got, err, want[name])
		}
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = l.configForClient(chis["imap"]) }); n != 0 {
		t.Errorf("configForClient allocates %v times per handshake", n)
	}
}
