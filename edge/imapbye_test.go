package edge

import (
	"io"
	"net"
	"testing"
	"time"

	"chatmail-edge/mail"

	proxyproto "github.com/pires/go-proxyproto"
)

// closingBackend is a daemon that reads the PROXY header, says script and
// closes the connection, as Dovecot does when it is stopped.
func closingBackend(t *testing.T, te *testEdge, proto mail.Protocol, script string) Backend {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &proxyproto.Listener{Listener: raw, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*proxyproto.Conn).ProxyHeader() // reads the header, so that closing sends FIN, not RST
			io.WriteString(c, script)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	b, err := mail.NewBackend(mail.BackendConfig{Protocol: proto, Mode: mail.ModeProxy, Address: raw.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBackendGoneWithoutBye: an IMAP client whose server goes away without
// a BYE gets one from the edge (found against Dovecot in tls mode, whose
// BYE dies with its login process); a server's own BYE is not doubled, and
// SMTP streams are passed on untouched.
func TestBackendGoneWithoutBye(t *testing.T) {
	te := startEdge(t, nil, Backends{})
	cases := []struct {
		name     string
		proto    mail.Protocol
		listener string
		alpn     []string
		script   string
		want     string
	}{
		{"imap silent close", mail.IMAP, "imaps", nil, "* OK ready\r\n",
			"* OK ready\r\n* BYE [UNAVAILABLE] chat.example connection to the mail server lost\r\n"},
		{"imap on 443 silent close", mail.IMAP, "https", []string{"imap"}, "* OK ready\r\n",
			"* OK ready\r\n* BYE [UNAVAILABLE] chat.example connection to the mail server lost\r\n"},
		{"imap own bye", mail.IMAP, "imaps", nil, "* OK ready\r\n* BYE Server shutting down.\r\n",
			"* OK ready\r\n* BYE Server shutting down.\r\n"},
		{"imap bye then tagged ok", mail.IMAP, "imaps", nil, "* BYE Logging out\r\na OK Logout completed.\r\n",
			"* BYE Logging out\r\na OK Logout completed.\r\n"},
		{"smtp silent close", mail.SMTP, "smtps", nil, "220 ready\r\n", "220 ready\r\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := closingBackend(t, te, c.proto, c.script)
			te.SetBackends(Backends{IMAP: b, SMTP: b})
			conn, err := te.dial(t, c.listener, c.alpn, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(conn)
			if err != nil {
				t.Fatalf("read until the edge closes: %v (got %q)", err, got)
			}
			if string(got) != c.want {
				t.Fatalf("client read %q, want %q", got, c.want)
			}
		})
	}
}

// TestClientLeavesFirstGetsNoBye: when the client ends its stream first
// (after LOGOUT), the server's close that follows is no news to it.
func TestClientLeavesFirstGetsNoBye(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	conn, err := te.dial(t, "imaps", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readLine(t, conn)
	io.WriteString(conn, "a LOGOUT\r\n")
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	conn.NetConn().(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	if string(rest) != "a LOGOUT\r\nbye\r\n" {
		t.Fatalf("got %q after the client left", rest)
	}
}
