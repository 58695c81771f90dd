package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/testcert"
	"chatmail-edge/internal/testserver"
)

const testDomain = "mail.example.org"

// testServer runs serve on every connection, after a TLS handshake with a
// certificate for testDomain unless plainTCP.
func testServer(t *testing.T, plainTCP bool, serve func(net.Conn)) (port int, roots *x509.CertPool) {
	t.Helper()
	cert, roots := testcert.SelfSigned(t, testDomain)
	addr := testserver.Serve(t, func(conn net.Conn) {
		if !plainTCP {
			tc := tls.Server(conn, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"imap", "smtp", "http/1.1"}})
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.Handshake() != nil {
				return
			}
			tc.SetDeadline(time.Time{})
			conn = tc
		}
		serve(conn)
	})
	_, p, _ := net.SplitHostPort(addr)
	port, _ = strconv.Atoi(p)
	return port, roots
}

// runBounded runs the probe and fails the test when it has not returned
// well after its timeout: the bug guarded against is a probe that hangs.
func runBounded(t *testing.T, opts Options) Report {
	t.Helper()
	done := make(chan Report, 1)
	go func() { done <- Run(context.Background(), opts) }()
	watchdog := time.NewTimer(opts.Timeout + 10*time.Second)
	defer watchdog.Stop()
	select {
	case r := <-done:
		return r
	case <-watchdog.C:
		t.Fatalf("probe with --timeout %v has not returned 10 s after it", opts.Timeout)
		return Report{}
	}
}

// firstStep is how the error of check c starts when its server never
// finishes its first answer.
func firstStep(c Check) string {
	if c.Name == "https" {
		return "GET /.well-known/origin-svcb: "
	}
	protocol, _, _ := strings.Cut(c.Name, ":")
	return protocol + " greeting: "
}

// TestRunBoundedByTimeout: against servers that loop a client's parser,
// never speak or dribble a byte a second, the probe returns with every
// check failed, each with an error that names its step.
func TestRunBoundedByTimeout(t *testing.T) {
	greetingThenListen := func(greeting string) func(net.Conn) {
		return func(conn net.Conn) {
			if _, err := io.WriteString(conn, greeting); err == nil {
				io.Copy(io.Discard, conn)
			}
		}
	}
	silent := func(conn net.Conn) { io.Copy(io.Discard, conn) }
	dribble := func(conn net.Conn) {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for _, b := range []byte(strings.Repeat("* OK ", 100)) {
			if _, err := conn.Write([]byte{b}); err != nil {
				return
			}
			<-tick.C
		}
	}
	timedOut := func(c Check) bool { return strings.Contains(c.Error, context.DeadlineExceeded.Error()) }
	tests := []struct {
		name     string
		plainTCP bool
		serve    func(net.Conn)
		// want says whether the error of check c names the right step.
		want func(c Check) bool
	}{
		{"spinning greeting", false, greetingThenListen("* OK [CAPABILITY (IMAP4rev1)] x\r\n"), func(c Check) bool {
			switch {
			case strings.HasPrefix(c.Name, "imap"):
				return strings.HasPrefix(c.Error, "imap greeting: ") && strings.Contains(c.Error, "is not an atom") && !timedOut(c)
			case strings.HasPrefix(c.Name, "smtp"):
				return strings.HasPrefix(c.Error, "smtp greeting: not an SMTP reply line") && !timedOut(c)
			}
			return strings.HasPrefix(c.Error, "GET /.well-known/origin-svcb: ")
		}},
		{"silent after TLS", false, silent, func(c Check) bool { return strings.HasPrefix(c.Error, firstStep(c)) && timedOut(c) }},
		{"silent TCP", true, silent, func(c Check) bool {
			return strings.HasPrefix(c.Error, "TLS handshake: ") && timedOut(c)
		}},
		{"one byte a second", false, dribble, func(c Check) bool { return strings.HasPrefix(c.Error, firstStep(c)) && timedOut(c) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			port, roots := testServer(t, tt.plainTCP, tt.serve)
			r := runBounded(t, Options{Domain: testDomain, Connect: "127.0.0.1", HTTPSPort: port, IMAPSPort: port, SMTPSPort: port,
				ECH: "off", RootCAs: roots, Timeout: 2500 * time.Millisecond})
			if r.OK || len(r.Checks) != 5 {
				t.Fatalf("report OK %v with %d checks, want 5 failed", r.OK, len(r.Checks))
			}
			for _, c := range r.Checks {
				if c.OK || !tt.want(c) {
					t.Errorf("check %s: ok %v, error %q", c.Name, c.OK, c.Error)
				}
			}
		})
	}
}

// TestRunTimeoutCoversTheECHFetch: the ECH config fetch counts against the
// one timeout too; the checks after it fail at once instead of waiting a
// timeout each.
func TestRunTimeoutCoversTheECHFetch(t *testing.T) {
	port, roots := testServer(t, true, func(conn net.Conn) { io.Copy(io.Discard, conn) })
	r := runBounded(t, Options{Domain: testDomain, Connect: "127.0.0.1", HTTPSPort: port, IMAPSPort: port, SMTPSPort: port,
		ECH: "auto", RootCAs: roots, Timeout: time.Second})
	if r.OK || len(r.Checks) != 6 || r.Checks[0].Name != "ech-config" {
		t.Fatalf("report %+v, want 6 failed checks, the ECH config fetch first", r)
	}
	for _, c := range r.Checks {
		if c.OK || !strings.Contains(c.Error, context.DeadlineExceeded.Error()) {
			t.Errorf("check %s: ok %v, error %q, want the deadline", c.Name, c.OK, c.Error)
		}
	}
	if !strings.HasPrefix(r.Checks[0].Error, "TLS handshake: ") {
		t.Errorf("ECH config fetch error %q, want it in the TLS handshake", r.Checks[0].Error)
	}
}

func TestPrintable(t *testing.T) {
	if got := printable("220-a\n220 b\x1b[31m\u00e9"); got != "220-a 220 b?[31m?" {
		t.Errorf("printable: %q", got)
	}
}
