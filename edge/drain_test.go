package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"chatmail-edge/mail"

	"go.uber.org/zap/zaptest"
)

// deliveryEdge is an edge in front of the demo's local delivery: real IMAP
// (go-imap) and SMTP (go-smtp) servers in proxy mode.
func deliveryEdge(t *testing.T) (*testEdge, *mail.LocalDelivery) {
	t.Helper()
	d := mail.NewLocalDelivery("chat.example", zaptest.NewLogger(t))
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	te := startEdge(t, nil, Backends{})
	backend := func(p mail.Protocol, addr string) Backend {
		b, err := mail.NewBackend(mail.BackendConfig{Protocol: p, Mode: mail.ModeProxy, Address: addr})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	te.SetBackends(Backends{IMAP: backend(mail.IMAP, d.IMAPAddr()), SMTP: backend(mail.SMTP, d.SMTPAddr())})
	return te, d
}

// lineConn speaks a line protocol over TLS, for tests.
type lineConn struct {
	t *testing.T
	c *tls.Conn
	r *bufio.Reader
}

func (te *testEdge) lines(t *testing.T, listener string) *lineConn {
	t.Helper()
	c, err := te.dial(t, listener, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &lineConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (lc *lineConn) send(s string) {
	lc.t.Helper()
	if _, err := io.WriteString(lc.c, s); err != nil {
		lc.t.Fatalf("send %q: %v", s, err)
	}
}

// expect reads lines until one starts with prefix, failing on EOF or after
// 10 s; it returns that line.
func (lc *lineConn) expect(prefix string) string {
	lc.t.Helper()
	lc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		line, err := lc.r.ReadString('\n')
		if err != nil {
			lc.t.Fatalf("waiting for %q: %v (got %q)", prefix, err, line)
		}
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
}

// expectNothing checks that nothing comes within a short while, by a
// round trip through the server that must come back first.
func (lc *lineConn) expectEOF() {
	lc.t.Helper()
	lc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(lc.r)
	if err != nil && !errors.Is(err, io.EOF) {
		lc.t.Fatalf("want the end of the stream, got %v after %q", err, rest)
	}
	if len(rest) > 0 {
		lc.t.Fatalf("more before the end of the stream: %q", rest)
	}
}

func imapLogin(t *testing.T, te *testEdge, user, password string) *lineConn {
	lc := te.lines(t, "imaps")
	lc.expect("* OK")
	lc.send("a1 LOGIN " + imapQuote(user) + " " + imapQuote(password) + "\r\n")
	lc.expect("a1 OK")
	lc.send("a2 SELECT INBOX\r\n")
	lc.expect("a2 OK")
	return lc
}

func smtpLogin(t *testing.T, te *testEdge, user, password string) *lineConn {
	lc := te.lines(t, "smtps")
	lc.expect("220 ")
	lc.send("EHLO client\r\n")
	lc.expect("250 ")
	lc.send("AUTH PLAIN " + plainAuth(user, password) + "\r\n")
	lc.expect("235 ")
	return lc
}

func plainAuth(user, password string) string {
	return base64Std("\x00" + user + "\x00" + password)
}

// TestDrainWaitsForCommandsAndMessages: a drain says goodbye to an IMAP
// client in IDLE at once, to one in the middle of an APPEND only once the
// APPEND is done, and to an SMTP client in the middle of its message only
// after the server's reply to its end of data; the message arrives once.
func TestDrainWaitsForCommandsAndMessages(t *testing.T) {
	te, d := deliveryEdge(t)
	user, password, err := d.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	idle := imapLogin(t, te, user, password)
	idle.send("a3 IDLE\r\n")
	idle.expect("+ ")

	appending := imapLogin(t, te, user, password)
	appending.send("a3 APPEND INBOX {20}\r\n")
	appending.expect("+ ")
	appending.send("Subject: one\r\n")

	sending := smtpLogin(t, te, user, password)
	sending.send("MAIL FROM:<" + user + ">\r\nRCPT TO:<" + user + ">\r\nDATA\r\n")
	sending.expect("250 ")
	sending.expect("250 ")
	sending.expect("354 ")
	sending.send("Subject: two\r\n\r\nhalf a message\r\n")

	idleSMTP := smtpLogin(t, te, user, password)

	drained := make(chan struct{})
	go func() {
		te.Drain(context.Background(), 0, false)
		close(drained)
	}()
	if line := idle.expect("* BYE "); !strings.Contains(line, "chat.example") {
		t.Fatalf("BYE %q does not name the host", line)
	}
	idle.expectEOF()
	idleSMTP.expect("421 4.3.2 ")
	idleSMTP.expectEOF()

	appending.send("\r\nxy\r\n" + "\r\n") // the rest of the 20 bytes, then the line's end
	appending.expect("a3 OK")
	appending.expect("* BYE ")
	appending.expectEOF()

	sending.send("the rest\r\n.\r\n")
	sending.expect("250 ")
	sending.expect("421 ")
	sending.expectEOF()
	select {
	case <-drained:
	case <-time.After(10 * time.Second):
		t.Fatal("Drain did not return once every session was gone")
	}

	// Both messages are there, once each: look with a new session to the
	// delivery, through a second edge (this one stopped accepting).
	te2 := startEdge(t, nil, te.backends())
	check := imapLogin(t, te2, user, password)
	check.send("a4 SEARCH ALL\r\n")
	if got := check.expect("* SEARCH"); strings.TrimSpace(got) != "* SEARCH 1 2" {
		t.Fatalf("messages after the drain: %q, want two", got)
	}
}

// TestDrainGraceKeepsSessions: during the grace time sessions go on (an
// idle client gets new mail), new connections are not taken, and when the
// drain's time is over the rest is closed.
func TestDrainGraceKeepsSessions(t *testing.T) {
	te, d := deliveryEdge(t)
	user, password, err := d.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	idle := imapLogin(t, te, user, password)
	idle.send("a3 IDLE\r\n")
	idle.expect("+ ")
	sending := smtpLogin(t, te, user, password)

	ctx, cancel := context.WithCancel(context.Background())
	drained := make(chan struct{})
	go func() {
		te.Drain(ctx, time.Hour, false)
		close(drained)
	}()
	waitFor(t, 5*time.Second, "the listeners closed", func() bool {
		c, err := dialFrom(te.addr("imaps"), "")
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	sending.send("MAIL FROM:<" + user + ">\r\nRCPT TO:<" + user + ">\r\nDATA\r\n")
	sending.expect("354 ")
	sending.send("Subject: during the drain\r\n\r\nhi\r\n.\r\n")
	sending.expect("250 ")
	idle.expect("* 1 EXISTS")

	cancel()
	<-drained
	idle.expectEOF()
}

func (te *testEdge) backends() Backends { return *te.Edge.backends.Load() }

func base64Std(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// imapQuote is s as an IMAP quoted string (RFC 9051 §4.3).
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// Drain stops accepting at once, keeps proxying an established session
// through its grace time until the session ends, and returns then, without
// waiting for its context.
func TestDrainWaitsForSessions(t *testing.T) {
	te, c := startSession(t, "imaps", "* OK test imap ready\r\n")
	addr := te.addr("imaps")
	done := drainInBackground(te, context.Background(), time.Hour)
	waitFor(t, 10*time.Second, "the listener to close", func() bool {
		probe, err := net.Dial("tcp", addr)
		if err == nil {
			probe.Close()
		}
		return err != nil
	})
	// The session still works both ways.
	if _, err := c.Write([]byte("a NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	if line := readLine(t, c); line != "a NOOP\r\n" {
		t.Fatalf("echo during the drain: %q", line)
	}
	select {
	case <-done:
		t.Fatal("Drain returned while a session was open")
	default:
	}
	c.Close()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Drain did not return after the last session ended")
	}
}

// When its context ends first, Drain closes what remains.
func TestDrainBoundedByContext(t *testing.T) {
	te, c := startSession(t, "smtps", "220 test smtp ready\r\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := drainInBackground(te, ctx, time.Hour)
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Drain did not return when its context ended")
	}
	expectClosed(t, c, 10*time.Second)
}

// An open listener handed to the edge is served as is, and closed by it.
func TestGivenListener(t *testing.T) {
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	te, _, _ := startEdgeWithBackends(t, func(c *Config) {
		c.Listeners[1].Listener = ln
	})
	if te.addr("imaps") != ln.Addr().String() {
		t.Fatalf("edge serves %s, want the given %s", te.addr("imaps"), ln.Addr())
	}
	c, err := te.dial(t, "imaps", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if line := readLine(t, c); line != "* OK test imap ready\r\n" {
		t.Fatalf("greeting %q", line)
	}
	te.Shutdown()
	if _, err := ln.Accept(); err == nil {
		t.Fatal("the given listener is still open after Shutdown")
	}
}

// startSession starts an edge and a session through its listener, which
// the backend greets with greeting.
func startSession(t *testing.T, listener, greeting string) (*testEdge, net.Conn) {
	t.Helper()
	te, _, _ := startEdgeWithBackends(t, nil)
	c, err := te.dial(t, listener, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if line := readLine(t, c); line != greeting {
		t.Fatalf("greeting %q", line)
	}
	return te, c
}

// drainInBackground runs Drain; the channel is closed when it returns.
func drainInBackground(te *testEdge, ctx context.Context, grace time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		te.Drain(ctx, grace, false)
		close(done)
	}()
	return done
}
