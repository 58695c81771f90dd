package edge

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// watchStep is one piece of a session: from the client (up) or the server.
type watchStep struct {
	up   bool
	data string
	// quiet is whether a farewell would cut nothing after this step.
	quiet bool
}

func c(data string, quiet bool) watchStep { return watchStep{up: true, data: data, quiet: quiet} }
func s(data string, quiet bool) watchStep { return watchStep{up: false, data: data, quiet: quiet} }

// runWatch feeds steps, each split at random points, and checks quiet
// after each.
func runWatch(t *testing.T, route Route, steps []watchStep, rnd *rand.Rand) sessionWatch {
	t.Helper()
	w := newSessionWatch(route)
	for i, st := range steps {
		b := []byte(st.data)
		for len(b) > 0 {
			n := len(b)
			if rnd != nil {
				n = 1 + rnd.IntN(len(b))
			}
			if st.up {
				w.up(b[:n])
			} else {
				w.down(b[:n])
			}
			b = b[n:]
		}
		if got := w.quiet(); got != st.quiet {
			t.Fatalf("after step %d (%q): quiet %v, want %v", i, st.data, got, st.quiet)
		}
	}
	return w
}

func TestIMAPWatch(t *testing.T) {
	cases := map[string][]watchStep{
		"login, select, logout": {
			s("* OK [CAPABILITY IMAP4rev1] ready\r\n", true),
			c("a1 LOGIN bob secret\r\n", false),
			s("a1 OK logged in\r\n", true),
			c("a2 SELECT INBOX\r\n", false),
			s("* 3 EXISTS\r\n* OK [UIDVALIDITY 1] x\r\n", false),
			s("a2 OK [READ-WRITE] done\r\n", true),
		},
		"idle": {
			s("* OK ready\r\n", true),
			c("a3 IDLE\r\n", false),
			s("+ idling\r\n", true),
			s("* 4 EXISTS\r\n", true),
			c("DONE\r\n", false),
			s("a3 OK IDLE terminated\r\n", true),
		},
		"a fetch with a literal, split anywhere": {
			c("a4 UID FETCH 7 (BODY[])\r\n", false),
			s("* 7 FETCH (UID 7 BODY[] {29}\r\nline one\r\n* BYE not a bye\r\n\r\n", false),
			s(")\r\n", false),
			s("a4 OK fetched\r\n", true),
		},
		"append with a synchronizing literal": {
			c("a5 APPEND INBOX {11}\r\n", false),
			s("+ Ready for literal data\r\n", false),
			c("hello\r\nbye!", false),
			c("\r\n", false),
			s("a5 OK [APPENDUID 1 8] done\r\n", true),
		},
		"literal+ and literal8": {
			c("a6 APPEND INBOX {3+}\r\nabc\r\n", false),
			s("a6 OK done\r\n", true),
			c("a7 APPEND INBOX ~{2}\r\n", false),
			s("+ go\r\n", false),
			c("xy\r\n", false),
			s("a7 OK done\r\n", true),
		},
		"authenticate exchange": {
			c("a8 AUTHENTICATE PLAIN\r\n", false),
			s("+ \r\n", false),
			c("AGJvYgBzZWNyZXQ=\r\n", false),
			s("a8 OK authenticated\r\n", true),
		},
		"pipelined commands": {
			c("a9 NOOP\r\na10 NOOP\r\n", false),
			s("a9 OK\r\n", false),
			s("a10 OK\r\n", true),
		},
		"half a command line": {
			c("a11 NOO", false),
			c("P\r\n", false),
			s("a11 OK\r\n", true),
		},
		"compress": {
			c("a12 COMPRESS DEFLATE\r\n", false),
			s("a12 OK DEFLATE active\r\n", false),
			c("\x00\x01\x02", false),
		},
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			runWatch(t, RouteIMAP, steps, nil)
			for seed := range uint64(50) {
				runWatch(t, RouteIMAP, steps, rand.New(rand.NewPCG(seed, 1)))
			}
		})
	}
}

func TestIMAPWatchSeesServerBye(t *testing.T) {
	w := runWatch(t, RouteIMAP, []watchStep{
		s("* OK ready\r\n", true),
		c("a1 FETCH 1 BODY[]\r\n", false),
		s("* 1 FETCH (BODY[] {14}\r\n* BYE inside\r\n)\r\na1 OK\r\n", true),
	}, nil)
	if w.serverSaidBye() {
		t.Fatal("a BYE inside a literal counted as the server's")
	}
	w.down([]byte("* BYE [UNAVAILABLE] shutting down\r\n"))
	if !w.serverSaidBye() {
		t.Fatal("the server's BYE went unnoticed")
	}
}

func TestSMTPWatch(t *testing.T) {
	cases := map[string][]watchStep{
		"a message": {
			s("220 relay ESMTP\r\n", true),
			c("EHLO client\r\n", false),
			s("250-relay\r\n250-PIPELINING\r\n", false),
			s("250 CHUNKING\r\n", true),
			c("MAIL FROM:<a@x>\r\n", false),
			s("250 2.1.0 Ok\r\n", false), // a transaction is open
			c("RCPT TO:<b@x>\r\n", false),
			s("250 2.1.5 Ok\r\n", false),
			c("DATA\r\n", false),
			s("354 End data with <CR><LF>.<CR><LF>\r\n", false),
			c("Subject: hi\r\n\r\nMAIL FROM:<not a command>\r\n..dot\r\n", false),
			c(".\r\n", false), // the end of data: its reply decides the message's fate
			s("250 2.0.0 Ok: queued as 123\r\n", true),
			c("QUIT\r\n", false),
			s("221 2.0.0 Bye\r\n", true),
		},
		"pipelined": {
			s("220 relay\r\n", true),
			c("MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n", false),
			s("250 Ok\r\n250 Ok\r\n", false),
			s("354 go\r\n", false),
			c("body\r\n.\r\nRSET\r\n", false),
			s("250 queued\r\n", false),
			s("250 reset\r\n", true),
		},
		"refused recipient, data refused": {
			s("220 relay\r\n", true),
			c("MAIL FROM:<a@x>\r\nRCPT TO:<nobody@x>\r\nDATA\r\n", false),
			s("250 Ok\r\n550 no such user\r\n554 no valid recipients\r\n", true),
			c("NOOP\r\n", false),
			s("250 Ok\r\n", true),
		},
		"refused sender": {
			s("220 relay\r\n", true),
			c("MAIL FROM:<spam@x>\r\n", false),
			s("553 refused\r\n", true),
		},
		"empty message": {
			s("220 relay\r\n", true),
			c("MAIL FROM:<a@x>\r\n", false),
			s("250 Ok\r\n", false),
			c("DATA\r\n", false),
			s("354 go\r\n", false),
			c(".\r\n", false),
			s("250 queued\r\n", true),
		},
		"bdat": {
			s("220 relay\r\n", true),
			c("MAIL FROM:<a@x>\r\n", false),
			s("250 Ok\r\n", false),
			c("BDAT 7\r\nabc\r\n.\r", false),
			s("250 7 bytes\r\n", false),
			c("BDAT 2 LAST\r\n\r\n", false),
			s("250 queued\r\n", true),
		},
		"auth exchange": {
			s("220 relay\r\n", true),
			c("AUTH PLAIN\r\n", false),
			s("334 \r\n", false),
			c("AGJvYgBzZWNyZXQ=\r\n", false),
			s("235 2.7.0 Authentication successful\r\n", true),
		},
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			runWatch(t, RouteSMTP, steps, nil)
			for seed := range uint64(50) {
				runWatch(t, RouteSMTP, steps, rand.New(rand.NewPCG(seed, 2)))
			}
		})
	}
}

func TestLiteralAnnounced(t *testing.T) {
	for in, want := range map[string]int64{
		"a APPEND x {5}\r\n": 5, "{0}\r\n": 0, "x {12+}\r\n": 12, "x {3-}\n": 3, "~{7}\r\n": 7,
		"x {}\r\n": -1, "x {a}\r\n": -1, "x 5}\r\n": -1, "\"{5}\"\r\n": -1, "x {99999999999999}\r\n": -1,
	} {
		n, ok := literalAnnounced([]byte(in))
		if (want < 0) == ok || ok && int64(n) != want {
			t.Errorf("literalAnnounced(%q) = %d, %v; want %d", in, n, ok, want)
		}
	}
}

// FuzzSessionWatch: however a session's bytes are split into reads, a
// watch ends in the same state, and never panics; and a watch never calls
// quiet a stream that has half a line.
func FuzzSessionWatch(f *testing.F) {
	f.Add(true, "* OK ready\r\n", "a1 LOGIN x y\r\n", uint64(1))
	f.Add(true, "* OK ready\r\n* BYE Server shutting down.\r\n", "", uint64(5))
	f.Add(true, "* 1 EXISTS\r\nxx* BYE not at a line start\r\n* BYE", "a IDLE\r\n", uint64(6))
	f.Add(true, "* 1 FETCH (BODY[] {5}\r\nhello)\r\na1 OK\r\n", "a1 FETCH 1 BODY[]\r\n", uint64(2))
	f.Add(false, "220 x\r\n250 ok\r\n354 go\r\n250 q\r\n", "MAIL FROM:<a>\r\nDATA\r\nbody\r\n.\r\n", uint64(3))
	f.Add(false, "220 x\r\n250 ok\r\n250 ok\r\n", "MAIL FROM:<a>\r\nBDAT 3 LAST\r\nabc", uint64(4))
	f.Fuzz(func(t *testing.T, imap bool, fromServer, fromClient string, seed uint64) {
		route := RouteSMTP
		if imap {
			route = RouteIMAP
		}
		whole := newSessionWatch(route)
		whole.down([]byte(fromServer))
		whole.up([]byte(fromClient))
		split := newSessionWatch(route)
		rnd := rand.New(rand.NewPCG(seed, 3))
		for _, side := range []struct {
			data string
			feed func([]byte)
		}{{fromServer, split.down}, {fromClient, split.up}} {
			b := []byte(side.data)
			for len(b) > 0 {
				n := 1 + rnd.IntN(len(b))
				side.feed(b[:n])
				b = b[n:]
			}
		}
		if whole.quiet() != split.quiet() || whole.serverSaidBye() != split.serverSaidBye() || whole.opaque() != split.opaque() {
			t.Fatalf("state differs by how the bytes were split: quiet %v/%v", whole.quiet(), split.quiet())
		}
		if whole.quiet() && (!endsLine(fromServer) || !endsLine(fromClient)) {
			t.Fatal("quiet with half a line in flight")
		}
		// Without literals, the server said BYE exactly when one of its
		// whole lines starts with "* BYE " (the reference).
		if imap && !strings.Contains(fromServer, "{") {
			lines := strings.SplitAfter(fromServer, "\n")
			want := false
			for _, l := range lines {
				want = want || strings.HasSuffix(l, "\n") && strings.HasPrefix(l, "* BYE ")
			}
			if got := whole.serverSaidBye(); got != want {
				t.Fatalf("serverSaidBye %v, the reference says %v", got, want)
			}
		}
	})
}

func endsLine(s string) bool { return s == "" || strings.HasSuffix(s, "\n") }

// BenchmarkSessionWatch is the watch's cost per byte moved, for what it
// sees most: a message in an IMAP literal, lines of text (a mailbox
// listing, headers), an SMTP message body.
func BenchmarkSessionWatch(b *testing.B) {
	text := strings.Repeat(strings.Repeat("x", 78)+"\r\n", 820) // 64 KiB of 80-byte lines
	cases := []struct {
		name  string
		route Route
		down  bool
		data  string
	}{
		{"imap-literal", RouteIMAP, true, "* 1 FETCH (BODY[] {65600}\r\n" + text},
		{"imap-lines", RouteIMAP, true, text},
		{"smtp-body", RouteSMTP, false, text},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			chunk := []byte(c.data)[:64<<10]
			b.SetBytes(int64(len(chunk)))
			w := newSessionWatch(c.route)
			if c.route == RouteSMTP { // into a message
				w.down([]byte("220 x\r\n"))
				w.up([]byte("MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n"))
				w.down([]byte("250 ok\r\n250 ok\r\n354 go\r\n"))
			}
			for b.Loop() {
				if c.down {
					w.down(chunk)
				} else {
					w.up(chunk)
				}
			}
		})
	}
}
