package service

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// mailConn is an IMAP or SMTP client through the edge, with ECH, past the
// greeting.
type mailConn struct {
	*tls.Conn
	r *bufio.Reader
}

func (env *catalogueEnv) dialMail(t *testing.T, listener string, alpn ...string) *mailConn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", env.addr(listener), env.tlsConfig(alpn...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if !c.ConnectionState().ECHAccepted {
		t.Fatal("ECH not accepted")
	}
	c.SetDeadline(time.Now().Add(time.Minute)) // a safety net
	m := &mailConn{Conn: c, r: bufio.NewReaderSize(c, 64<<10)}
	if g := m.line(t); !strings.HasPrefix(g, "* OK") && !strings.HasPrefix(g, "220 ") {
		t.Fatalf("greeting %q", g)
	}
	return m
}

func (m *mailConn) line(t *testing.T) string {
	t.Helper()
	l, err := m.r.ReadString('\n')
	if err != nil {
		t.Fatalf("read a line: %v (got %q)", err, l)
	}
	return l
}

func (m *mailConn) write(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(m, s); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// until reads lines up to one starting with prefix and returns them all.
func (m *mailConn) until(t *testing.T, prefix string) []string {
	t.Helper()
	var lines []string
	for {
		l := m.line(t)
		lines = append(lines, l)
		if strings.HasPrefix(l, prefix) {
			return lines
		}
	}
}

// rest reads until the close and returns what came.
func (m *mailConn) rest(t *testing.T) string {
	t.Helper()
	b, err := io.ReadAll(m.r)
	if err != nil && !isClose(err) {
		t.Fatalf("read to the close: %v (got %q)", err, b)
	}
	return string(b)
}

// login opens an IMAP session of a new account through the edge.
func (env *catalogueEnv) login(t *testing.T, listener string, alpn ...string) (m *mailConn, user, password string) {
	t.Helper()
	user, password, err := env.delivery.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	m = env.dialMail(t, listener, alpn...)
	m.write(t, fmt.Sprintf("l1 LOGIN %s %q\r\n", user, password))
	if l := m.until(t, "l1 "); !strings.HasPrefix(l[len(l)-1], "l1 OK") {
		t.Fatalf("LOGIN: %q", l)
	}
	return m, user, password
}

// expectEmptyInbox logs in as user and wants no message in INBOX.
func (env *catalogueEnv) expectEmptyInbox(t *testing.T, user, password string) {
	t.Helper()
	m := env.dialMail(t, "imaps")
	m.write(t, fmt.Sprintf("l1 LOGIN %s %q\r\ns1 SELECT INBOX\r\n", user, password))
	lines := strings.Join(m.until(t, "s1 "), "")
	if !strings.Contains(lines, "s1 OK") || !strings.Contains(lines, "* 0 EXISTS") {
		t.Fatalf("INBOX of %s: %q, want it empty", user, lines)
	}
}

// leaveMidMessage sends the start of a message to user and leaves: the
// session ends on both sides, and nothing of the message is stored.
func (env *catalogueEnv) leaveMidMessage(t *testing.T, m *mailConn, start, user, password string) {
	t.Helper()
	m.write(t, start)
	m.Conn.Close()
	env.sessionsGone(t)
	env.expectEmptyInbox(t, user, password)
}

// sessionsGone waits until no proxied session is left: the edge closed
// the backend side of the ones that ended.
func (env *catalogueEnv) sessionsGone(t *testing.T) {
	t.Helper()
	eventually(t, "the sessions closed", func() bool { return env.metric(t, "chatmail_edge_sessions_active") == 0 })
}

// TestCatalogueMail: IMAP and SMTP clients that misbehave after a good TLS
// handshake. The edge passes their bytes on and bounds nothing of them
// itself (the mail servers do: Dovecot, Postfix, here the local delivery);
// what it must do is keep one client from slowing or locking out others,
// lose nothing of what goes back, and close both sides when one ends.
func TestCatalogueMail(t *testing.T) {
	env := startCatalogue(t, "")
	env.run(t, []badInput{
		{name: "IMAP line of 1 MB without CRLF", send: func(t *testing.T, env *catalogueEnv) {
			m := env.dialMail(t, "imaps")
			go io.WriteString(m, "a1 "+strings.Repeat("x", 1<<20)) // the server may close before it is all written
			// The local delivery (go-imap: 64 KiB per command) hangs up
			// without a word. The edge passes the close on, or, when its
			// write to the server failed first, says so in the client's
			// protocol (RFC 9051 §7.1.5).
			if got := m.rest(t); got != "" && !strings.HasPrefix(got, "* BYE [UNAVAILABLE] ") {
				t.Fatalf("got %q, want the close or a BYE", got)
			}
			env.sessionsGone(t)
		}, counts: routed("imaps", "imap")},
		{name: "10000 pipelined IMAP commands, read only afterwards", send: func(t *testing.T, env *catalogueEnv) {
			pipelined(t, env, env.dialMail(t, "https", "imap"), 10000, func(i int) string { return fmt.Sprintf("p%d NOOP\r\n", i) },
				func(i int) string { return fmt.Sprintf("p%d OK", i) })
		}, counts: routed("https", "imap")},
		{name: "IMAP client closes in the middle of a literal", send: func(t *testing.T, env *catalogueEnv) {
			m, user, password := env.login(t, "https", "imap")
			m.write(t, "a1 APPEND INBOX {1000}\r\n")
			if l := m.line(t); !strings.HasPrefix(l, "+") {
				t.Fatalf("APPEND: %q, want a continuation request", l)
			}
			env.leaveMidMessage(t, m, "From: half\r\n", user, password)
		}, counts: routed("https", "imap")},
		{name: "IMAP half-close after LOGOUT", send: func(t *testing.T, env *catalogueEnv) {
			m := env.dialMail(t, "imaps")
			m.write(t, "a1 LOGOUT\r\n")
			m.CloseWrite() // close_notify and FIN: the answer must still come back
			if got := m.rest(t); !strings.Contains(got, "* BYE") || !strings.Contains(got, "a1 OK") {
				t.Fatalf("after the half-close: %q, want the BYE and the OK", got)
			}
		}, counts: routed("imaps", "imap")},
		{name: "SMTP line of 1 MB without CRLF", send: func(t *testing.T, env *catalogueEnv) {
			m := env.dialMail(t, "smtps")
			go io.WriteString(m, "EHLO "+strings.Repeat("x", 1<<20))
			// The local delivery (go-smtp: 2000 bytes a line) answers 500
			// and hangs up, sometimes after answering the line's first
			// 2000 bytes as a command. It closes with the rest of the line
			// unread, which resets the connection: the reset can overtake
			// the 500 on its way through the edge, as it would from Postfix.
			if got := m.rest(t); got != "" && !strings.Contains(got, "500 5.4.0 Too long line") {
				t.Fatalf("got %q, want 500 too long line or the close", got)
			}
			env.sessionsGone(t)
		}, counts: routed("smtps", "smtp")},
		{name: "10000 pipelined SMTP commands, read only afterwards", send: func(t *testing.T, env *catalogueEnv) {
			pipelined(t, env, env.dialMail(t, "smtps"), 10000, func(int) string { return "NOOP\r\n" }, func(int) string { return "250 " })
		}, counts: routed("smtps", "smtp")},
		{name: "SMTP client closes in the middle of DATA", send: func(t *testing.T, env *catalogueEnv) {
			user, password, err := env.delivery.CreateAccount()
			if err != nil {
				t.Fatal(err)
			}
			m := env.dialMail(t, "https", "smtp")
			m.write(t, "EHLO client.example\r\n")
			m.until(t, "250 ")
			m.write(t, "AUTH PLAIN "+saslPlain(user, password)+"\r\n")
			if l := m.line(t); !strings.HasPrefix(l, "235") {
				t.Fatalf("AUTH: %q", l)
			}
			m.write(t, "MAIL FROM:<"+user+">\r\nRCPT TO:<"+user+">\r\nDATA\r\n")
			for _, want := range []string{"250", "250", "354"} {
				if l := m.line(t); !strings.HasPrefix(l, want) {
					t.Fatalf("got %q, want %s", l, want)
				}
			}
			env.leaveMidMessage(t, m, "Subject: half\r\n\r\nthe first line of a message that never ends\r\n", user, password)
		}, counts: routed("https", "smtp")},
		{name: "SMTP half-close after QUIT", send: func(t *testing.T, env *catalogueEnv) {
			m := env.dialMail(t, "smtps")
			m.write(t, "QUIT\r\n")
			m.CloseWrite()
			if got := m.rest(t); !strings.HasPrefix(got, "221 ") {
				t.Fatalf("after the half-close: %q, want 221", got)
			}
		}, counts: routed("smtps", "smtp")},
	})
}

// pipelined writes n commands without reading, has good clients served
// meanwhile, then reads the n answers, in order.
func pipelined(t *testing.T, env *catalogueEnv, m *mailConn, n int, command, answer func(int) string) {
	t.Helper()
	written := make(chan error, 1)
	go func() {
		var b strings.Builder
		for i := range n {
			b.WriteString(command(i))
		}
		_, err := io.WriteString(m, b.String())
		written <- err
	}()
	select {
	case err := <-written:
		if err != nil {
			t.Fatalf("write the commands: %v", err)
		}
	case <-time.After(time.Minute): // a safety net: the answers fill the buffers
		t.Fatal("the commands could not be written")
	}
	for i := range n {
		if l := m.line(t); !strings.HasPrefix(l, answer(i)) {
			t.Fatalf("answer %d: %q, want %q", i, l, answer(i))
		}
	}
}

func saslPlain(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + password))
}
