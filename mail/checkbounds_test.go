package mail

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/testserver"
)

// spinningGreeting made go-imap v2.0.0-beta.8's client loop forever without
// reading: its CAPABILITY parser takes "(" as a space it never consumes.
const spinningGreeting = "* OK [CAPABILITY (IMAP4rev1)] x\r\n"

// dialogueServer runs serve on every connection, with a reader of what the
// client sends.
func dialogueServer(t *testing.T, serve func(conn net.Conn, in *bufio.Reader)) string {
	t.Helper()
	return testserver.Serve(t, func(conn net.Conn) { serve(conn, bufio.NewReader(conn)) })
}

// scriptedDialogue sends greeting, then answers each command line the
// client sends with the text answer returns for its tag and command (the
// words after the tag, upper case; for SMTP the tag is the verb), until the
// client leaves. A nil answer answers nothing.
func scriptedDialogue(greeting string, answer func(tag, command string) string) func(net.Conn, *bufio.Reader) {
	return func(conn net.Conn, in *bufio.Reader) {
		if _, err := conn.Write([]byte(greeting)); err != nil {
			return
		}
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				return
			}
			if answer == nil {
				continue
			}
			tag, command, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			if _, err := conn.Write([]byte(answer(tag, strings.ToUpper(command)))); err != nil {
				return
			}
		}
	}
}

// wellBehaved answers as Dovecot would, with a CAPABILITY code on LOGIN's OK.
func wellBehaved(tag, command string) string {
	switch {
	case command == "CAPABILITY":
		return "* CAPABILITY IMAP4rev1  IDLE AUTH=PLAIN\r\n" + tag + " OK done\r\n"
	case strings.HasPrefix(command, "LOGIN "):
		return tag + " OK [CAPABILITY IMAP4rev1 (X)] Logged in\r\n"
	case command == "SELECT INBOX":
		return "* 3 EXISTS\r\n* FLAGS (\\Seen)\r\n* LIST () \"/\" {5}\r\nINBOX\r\n* OK [UIDNEXT 4] next\r\n" + tag + " OK [READ-WRITE] done\r\n"
	case command == "LOGOUT":
		return "* BYE bye\r\n" + tag + " OK done\r\n"
	}
	return tag + " BAD unknown command\r\n"
}

// runBounded runs check and fails the test when check has not returned
// limit after its start: a check that does not end is the bug these tests
// guard against, and a hung test says less than a failure.
func runBounded(t *testing.T, limit time.Duration, check func() (CheckResult, error)) (CheckResult, error) {
	t.Helper()
	type outcome struct {
		res CheckResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := check()
		done <- outcome{res, err}
	}()
	watchdog := time.NewTimer(limit)
	defer watchdog.Stop()
	select {
	case o := <-done:
		return o.res, o.err
	case <-watchdog.C:
		t.Fatalf("the check has not returned %v after its start", limit)
		return CheckResult{}, nil
	}
}

// TestCheckIMAPSpinningGreeting is the regression test of the greeting that
// made the status probe spin a core forever: the check now refuses the
// greeting at once, with the reason, and does not wait for its deadline.
func TestCheckIMAPSpinningGreeting(t *testing.T) {
	addr := scriptedServer(t, []byte(spinningGreeting))
	ctx := testContext(t, 10*time.Second)
	res, err := runBounded(t, 15*time.Second, func() (CheckResult, error) { return CheckIMAP(ctx, dialTest(t, addr), nil) })
	if err == nil || !strings.HasPrefix(err.Error(), "imap greeting: ") || !strings.Contains(err.Error(), `"(IMAP4rev1)" is not an atom`) {
		t.Fatalf("error %v, want imap greeting: ... \"(IMAP4rev1)\" is not an atom", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Errorf("the check ended by its deadline (%v), not by reading the greeting", err)
	}
	if res.Greeting != strings.TrimSuffix(spinningGreeting, "\r\n") {
		t.Errorf("greeting %q", res.Greeting)
	}

	// The status page's probe takes the same path.
	b := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: ModeProxy, Address: addr})
	_, err = runBounded(t, 15*time.Second, func() (CheckResult, error) {
		res, err := b.Probe(ctx)
		return res.CheckResult, err
	})
	if want := "probe " + b.String() + ": imap greeting: "; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Probe error %v, want %q...", err, want)
	}
}

// TestCheckIMAPServerQuirks: what a server sends is parsed by the check's
// own client; malformed capability lists fail the step that got them, with
// the reason, and CAPABILITY codes of tagged responses are not parsed.
func TestCheckIMAPServerQuirks(t *testing.T) {
	withCapability := func(capability string) func(tag, command string) string {
		return func(tag, command string) string {
			if command == "CAPABILITY" {
				return capability + tag + " OK done\r\n"
			}
			return wellBehaved(tag, command)
		}
	}
	tests := []struct {
		name     string
		greeting string
		answer   func(tag, command string) string
		want     string // error prefix, "" for success
		detail   string // in the error
	}{
		{"well-behaved", "* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n", wellBehaved, "", ""},
		{"spinning list in CAPABILITY response", "* OK ready\r\n", withCapability("* CAPABILITY (IMAP4rev1)\r\n"), "imap CAPABILITY: ", `"(IMAP4rev1)" is not an atom`},
		{"list after a capability", "* OK ready\r\n", withCapability("* CAPABILITY IMAP4rev1 (X)\r\n"), "imap CAPABILITY: ", `"(X)" is not an atom`},
		{"no IMAP version", "* OK ready\r\n", withCapability("* CAPABILITY IDLE\r\n"), "imap CAPABILITY: ", "no IMAP4rev1 or IMAP4rev2"},
		{"no CAPABILITY response", "* OK ready\r\n", withCapability(""), "imap CAPABILITY: ", "no IMAP4rev1 or IMAP4rev2"},
		{"unclosed code", "* OK [CAPABILITY IMAP4rev1 ready\r\n", wellBehaved, "imap greeting: ", `without "]"`},
		{"empty capability code", "* OK [CAPABILITY] ready\r\n", wellBehaved, "imap greeting: ", "no capabilities"},
		{"not IMAP", "220 mail.example.org ESMTP\r\n", wellBehaved, "imap greeting: ", `not an untagged response`},
		{"unknown status", "* HELLO there\r\n", wellBehaved, "imap greeting: ", `status "HELLO"`},
		{"BYE", "* BYE [UNAVAILABLE] busy\r\n", wellBehaved, "imap greeting: ", "refuses the connection"},
		{"CAPABILITY refused", "* OK ready\r\n", func(tag, command string) string { return tag + " BAD no\r\n" }, "imap CAPABILITY: ", `BAD "no"`},
		{"other tag", "* OK ready\r\n", func(tag, command string) string { return "x1 OK done\r\n" }, "imap CAPABILITY: ", `a tagged response to "x1"`},
		{"BYE in CAPABILITY", "* OK ready\r\n", withCapability("* BYE going\r\n"), "imap CAPABILITY: ", "the server closes the connection"},
		{"continuation not asked for", "* OK ready\r\n", withCapability("+ more\r\n"), "imap CAPABILITY: ", "continuation request that was not asked for"},
		{"garbage line", "* OK ready\r\n", withCapability("garbage\r\n"), "imap CAPABILITY: ", `not an IMAP response: "garbage"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := dialogueServer(t, scriptedDialogue(tt.greeting, tt.answer))
			creds := &Credentials{User: `user "1"`, Password: `pass\word`}
			res, err := runBounded(t, 15*time.Second, func() (CheckResult, error) {
				return CheckIMAP(testContext(t, 10*time.Second), dialTest(t, addr), creds)
			})
			if tt.want == "" {
				if err != nil || !res.LoggedIn || res.Messages != 3 || !slices.Equal(res.Capabilities, []string{"AUTH=PLAIN", "IDLE", "IMAP4rev1"}) {
					t.Fatalf("check %+v, %v; want logged in, 3 messages, the capabilities of the CAPABILITY response", res, err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.detail) {
				t.Fatalf("error %v, want %q...%q", err, tt.want, tt.detail)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("the check waited for its deadline: %v", err)
			}
		})
	}
}

// check runs the check of p against the daemon, in proxy mode.
func (d *testDaemons) check(t *testing.T, p Protocol, creds *Credentials) (CheckResult, error) {
	t.Helper()
	addr := map[Protocol]string{IMAP: d.imapAddr, SMTP: d.smtpAddr}[p]
	b := newTestBackend(t, BackendConfig{Protocol: p, Mode: ModeProxy, Address: addr})
	ctx := testContext(t, 10*time.Second)
	conn, err := b.Dial(ctx, ClientInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return check(ctx, p, conn, creds)
}

// TestCheckIMAPLoginQuotingAndLiterals logs in to the real go-imap server
// with a user name and password that need quoting and, for 8-bit, a
// synchronizing literal (RFC 9051 §4.3); SMTP AUTH PLAIN takes them too.
func TestCheckIMAPLoginQuotingAndLiterals(t *testing.T) {
	daemons := startTestDaemons(t, requireProxyHeader)
	for i, creds := range []Credentials{
		{User: `quote"and\back@example.org`, Password: `p"a\s s`},
		{User: "caf\u00e9@example.org", Password: "p\u00e4ssw\u00f6rd"},
		{User: "plain@example.org", Password: "{5}\u00e9"},
	} {
		if !daemons.delivery.addAccount(creds.User, creds.Password) {
			t.Fatalf("account %d exists", i)
		}
		for _, p := range []Protocol{IMAP, SMTP} {
			if res, err := daemons.check(t, p, &creds); err != nil || !res.LoggedIn {
				t.Errorf("%v login as %q: %+v, %v", p, creds.User, res, err)
			}
		}
	}
	// A NUL cannot go in IMAP (CHAR8 excludes it) nor in PLAIN.
	for _, p := range []Protocol{IMAP, SMTP} {
		_, err := daemons.check(t, p, &Credentials{User: "a@example.org", Password: "nul\x00\u00e9"})
		if err == nil || !strings.Contains(err.Error(), "NUL byte") {
			t.Errorf("%v: error %v, want the NUL refused", p, err)
		}
	}
}

// TestCheckBounds: a server that sends too long a line, too many lines or
// too many bytes ends the check at once with an error that says so.
func TestCheckBounds(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	manyLines := func(n int, line string) string { return strings.Repeat(line, n) }
	tests := []struct {
		name   string
		p      Protocol
		server func(net.Conn, *bufio.Reader)
		want   string
	}{
		{"imap long greeting", IMAP, scriptedDialogue("* OK "+long(9000)+"\r\n", wellBehaved),
			"imap greeting: a line longer than 8192 bytes"},
		{"imap endless untagged", IMAP, scriptedDialogue("* OK ready\r\n", func(string, string) string { return manyLines(200, "* OK still here\r\n") }),
			"imap CAPABILITY: more than 100 responses without the tagged one"},
		{"imap too many bytes", IMAP, scriptedDialogue("* OK ready\r\n", func(string, string) string { return manyLines(80, "* X "+long(1000)+"\r\n") }),
			fmt.Sprintf("imap CAPABILITY: the server sent more than %d bytes", maxCheckBytes)},
		{"imap huge literal", IMAP, scriptedDialogue("* OK ready\r\n", func(string, string) string { return "* LIST () \"/\" {100000}\r\n" }),
			"imap CAPABILITY: a literal of 100000 bytes, more than 8192"},
		{"imap many literals", IMAP, scriptedDialogue("* OK ready\r\n", func(string, string) string { return "* X {1}\r\n" + manyLines(20, "a{1}\r\n") }),
			"imap CAPABILITY: a response with more than 16 literals"},
		{"imap NUL", IMAP, scriptedDialogue("* OK re\x00dy\r\n", wellBehaved), `imap greeting: a line with a '\x00' byte`},
		{"smtp long greeting", SMTP, scriptedDialogue("220 "+long(2000)+"\r\n", nil),
			"smtp greeting: a line longer than 1024 bytes"},
		{"smtp endless greeting", SMTP, scriptedDialogue(manyLines(150, "220-hello\r\n"), nil),
			"smtp greeting: a reply of more than 100 lines"},
		{"smtp endless EHLO", SMTP, scriptedDialogue("220 ready\r\n", func(string, string) string { return manyLines(150, "250-X\r\n") }),
			"smtp EHLO: a reply of more than 100 lines"},
		{"smtp mixed codes", SMTP, scriptedDialogue("220-a\r\n250 b\r\n", nil),
			"smtp greeting: a reply line with code 250 in a reply with code 220"},
		{"smtp not a reply", SMTP, scriptedDialogue("* OK ready\r\n", nil), `smtp greeting: not an SMTP reply line: "* OK ready"`},
		{"smtp refusal", SMTP, scriptedDialogue("554 no\r\n", nil), `smtp greeting: the server refuses the connection: "554 no"`},
		{"smtp EHLO refused", SMTP, scriptedDialogue("220 ready\r\n", func(string, string) string { return "421 bye\r\n" }),
			`smtp EHLO: reply "421 bye", want 250`},
		{"smtp closes inside a line", SMTP, func(conn net.Conn, _ *bufio.Reader) { conn.Write([]byte("220 rea")); conn.Close() },
			"smtp greeting: connection closed inside a line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := dialogueServer(t, tt.server)
			ctx := testContext(t, 10*time.Second)
			_, err := runBounded(t, 15*time.Second, func() (CheckResult, error) { return check(ctx, tt.p, dialTest(t, addr), nil) })
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q...", err, tt.want)
			}
			if ctx.Err() != nil {
				t.Errorf("the check ended by its deadline: %v", err)
			}
		})
	}
}

// TestCheckDeadlineHoldsAgainstDribbling: a server that sends one byte at a
// time, each well within any per-read timeout, still meets the one deadline
// of the check, set on the connection.
func TestCheckDeadlineHoldsAgainstDribbling(t *testing.T) {
	for _, p := range []Protocol{IMAP, SMTP} {
		t.Run(p.String(), func(t *testing.T) {
			greeting := map[Protocol]string{IMAP: "* OK ready\r\n", SMTP: "220 ready\r\n"}[p]
			addr := dialogueServer(t, func(conn net.Conn, _ *bufio.Reader) {
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				for i := 0; ; i = (i + 1) % (len(greeting) - 2) { // never the CRLF
					if _, err := conn.Write([]byte{greeting[i]}); err != nil {
						return
					}
					<-tick.C
				}
			})
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			_, err := runBounded(t, 10*time.Second, func() (CheckResult, error) { return check(ctx, p, dialTest(t, addr), nil) })
			if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), p.String()+" greeting: ") {
				t.Fatalf("error %v, want %s greeting: ... deadline exceeded", err, p)
			}
		})
	}
}
