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
