package edge

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"chatmail-edge/mail"
)

// hangingBackend accepts the connection and never answers, like a wedged
// daemon: its session is never opened.
type hangingBackend struct{ addr string }

func (b hangingBackend) Address() string { return b.addr }

func (hangingBackend) Open(ctx context.Context, conn net.Conn, _ mail.ClientInfo) (net.Conn, error) {
	<-ctx.Done()
	conn.Close()
	return nil, ctx.Err()
}

// listening is a loopback listener whose connections the kernel accepts
// and nobody reads.
func listening(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestBackendDownGetsProtocolRefusal(t *testing.T) {
	const backendTimeout = 300 * time.Millisecond
	te := startEdge(t, func(c *Config) { c.BackendTimeout = backendTimeout }, Backends{})
	refused := func(p mail.Protocol) Backend {
		b, err := mail.NewBackend(mail.BackendConfig{Protocol: p, Mode: "proxy", Address: closedPort(t), DialTimeout: backendTimeout})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	hung := listening(t)
	cases := []struct {
		name     string
		backends Backends
		listener string
		alpn     []string
		want     string
	}{
		{"imap refused", Backends{IMAP: refused(mail.IMAP)}, "imaps", nil, "* BYE "},
		{"smtp refused", Backends{SMTP: refused(mail.SMTP)}, "smtps", nil, "421 "},
		{"imap on 443 hanging", Backends{IMAP: hangingBackend{hung}}, "https", []string{"imap"}, "* BYE "},
		{"smtp on 443 hanging", Backends{SMTP: hangingBackend{hung}}, "https", []string{"smtp"}, "421 "},
		{"imap not configured", Backends{}, "imaps", nil, "* BYE "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			te.SetBackends(c.backends)
			conn, err := te.dial(t, c.listener, c.alpn, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			got := readLine(t, conn)
			if !strings.HasPrefix(got, c.want) || !strings.Contains(got, "chat.example") {
				t.Fatalf("got %q, want a line starting with %q naming the host", got, c.want)
			}
			expectClosed(t, conn, 5*time.Second)
		})
	}
	var refusals uint64
	for _, l := range te.Snapshot().Listeners {
		refusals += l.Failures["backend"]
	}
	if refusals != uint64(len(cases)) {
		t.Fatalf("%d backend failures counted, want %d", refusals, len(cases))
	}
}

// observedBackend records what the edge tells it of each attempt.
type observedBackend struct {
	Backend
	outcomes chan error
}

func (b observedBackend) Observe(err error) { b.outcomes <- err }

// TestBackendObserverHearsEveryAttempt: a backend that observes hears of a
// session that opened (nil) and of a dial that failed (its error), once each.
func TestBackendObserverHearsEveryAttempt(t *testing.T) {
	te, imapB, _ := startEdgeWithBackends(t, nil)
	up := observedBackend{Backend: imapB.backend(t, te.Edge, mail.IMAP), outcomes: make(chan error, 4)}
	down, err := mail.NewBackend(mail.BackendConfig{Protocol: mail.IMAP, Mode: "proxy", Address: closedPort(t)})
	if err != nil {
		t.Fatal(err)
	}
	refused := observedBackend{Backend: down, outcomes: make(chan error, 4)}
	for _, c := range []struct {
		b       observedBackend
		greeted string
		wantErr string
	}{{up, "* OK test imap ready", ""}, {refused, "* BYE ", "connection refused"}} {
		te.SetBackends(Backends{IMAP: c.b})
		conn, err := te.dial(t, "imaps", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := readLine(t, conn); !strings.HasPrefix(got, c.greeted) {
			t.Fatalf("got %q, want %q", got, c.greeted)
		}
		conn.Close()
		select {
		case err := <-c.b.outcomes:
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Errorf("observed %v, want %q", err, c.wantErr)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("nothing observed")
		}
		if len(c.b.outcomes) != 0 {
			t.Errorf("%d more outcomes for one attempt", len(c.b.outcomes))
		}
	}
}
