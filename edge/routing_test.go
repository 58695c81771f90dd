package edge

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"chatmail-edge/mail"
)

func TestRoutesByPortAndALPN(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	cases := []struct {
		listener string
		alpn     []string
		want     string
	}{
		{"https", []string{"imap"}, "* OK test imap ready"},
		{"https", []string{"smtp"}, "220 test smtp ready"},
		{"imaps", nil, "* OK test imap ready"},
		{"imaps", []string{"imap"}, "* OK test imap ready"},
		{"smtps", nil, "220 test smtp ready"},
	}
	for _, c := range cases {
		conn, err := te.dial(t, c.listener, c.alpn, nil)
		if err != nil {
			t.Fatalf("%s %v: %v", c.listener, c.alpn, err)
		}
		if got := readLine(t, conn); !strings.HasPrefix(got, c.want) {
			t.Errorf("%s %v: got %q, want %q", c.listener, c.alpn, got, c.want)
		}
		conn.Close()
	}
	for _, alpn := range [][]string{{"h2"}, {"http/1.1"}, nil} {
		conn, err := te.dial(t, "https", alpn, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\r\n")
		if alpn != nil && alpn[0] == "h2" {
			// An HTTP/1 request on an h2 connection is a protocol error; what
			// matters is that the web server, not a mail backend, answered.
			if got := conn.ConnectionState().NegotiatedProtocol; got != "h2" {
				t.Errorf("ALPN h2 negotiated %q", got)
			}
			conn.Close()
			continue
		}
		body, _ := io.ReadAll(conn)
		if !bytes.Contains(body, []byte("web HTTP/1.1")) {
			t.Errorf("ALPN %v: got %q", alpn, body)
		}
		conn.Close()
	}
	// A client offering only protocols nobody serves is refused (RFC 7301 §3.2).
	if _, err := te.dial(t, "imaps", []string{"h2"}, nil); err == nil {
		t.Error("ALPN h2 accepted on the IMAP port")
	}
	// The edge counts when its side of a handshake ends, which may be
	// after the client has closed (the h2 connection above).
	waitFor(t, 5*time.Second, "the https listener's counts", func() bool {
		l := te.Snapshot().Listeners[0]
		return l.Routes["imap"] == 1 && l.Routes["http"] == 3 && l.ECH["none"] == 5
	})
}

// TestProxiedDataIsExact pushes random data both ways through several
// sessions at once, with idle connections parked and with a goroutine per
// direction, and checks every byte.
func TestProxiedDataIsExact(t *testing.T) {
	for _, noParking := range []bool{false, true} {
		name := map[bool]string{false: "parked", true: "goroutines"}[noParking]
		t.Run(name, func(t *testing.T) {
			te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.NoParking = noParking })
			if got := te.Snapshot().Parked; got == noParking {
				t.Fatalf("Parked = %v", got)
			}
			var wg sync.WaitGroup
			for i := range 4 {
				wg.Go(func() { echoRoundTrip(t, te, 1<<20+i*4099) })
			}
			wg.Wait()
		})
	}
}

// TestProxiedDataIsExactThroughTLSBackend covers the other backend mode:
// the edge re-encrypts to the daemon's own TLS port, so both pumps read
// through crypto/tls (read-ahead) and write through it (batched records).
func TestProxiedDataIsExactThroughTLSBackend(t *testing.T) {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*testLeaf}})
	if err != nil {
		t.Fatal(err)
	}
	var served sync.WaitGroup
	served.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Go(func() {
				defer c.Close()
				io.WriteString(c, "* OK tls backend ready\r\n")
				io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); served.Wait() })

	te := startEdge(t, nil, Backends{})
	b, err := mail.NewBackend(mail.BackendConfig{
		Protocol: mail.IMAP, Mode: mail.ModeTLS, Address: ln.Addr().String(),
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	te.SetBackends(Backends{IMAP: b})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() { echoRoundTrip(t, te, 1<<20+i*4099) })
	}
	wg.Wait()
}

func echoRoundTrip(t *testing.T, te *testEdge, size int) {
	conn, err := te.dial(t, "imaps", nil, nil)
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close()
	readLine(t, conn)
	data := make([]byte, size)
	rand.Read(data)
	sent := sha256.Sum256(data)
	go func() {
		conn.Write(data)
	}()
	got := make([]byte, size)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Errorf("read back %d bytes: %v", size, err)
		return
	}
	if sha256.Sum256(got) != sent {
		t.Errorf("%d bytes came back altered", size)
	}
}

// TestIdleSessionsAreParked is the memory design's core promise: an idle
// proxied connection holds no goroutine (and so no stack and no buffer).
func TestIdleSessionsAreParked(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	var conns []net.Conn
	for range 50 {
		conn, err := te.dial(t, "imaps", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		readLine(t, conn)
		conns = append(conns, conn)
	}
	waitFor(t, 10*time.Second, "all pumps parked", func() bool { return te.Snapshot().BusyPumps == 0 })
	if got := te.Snapshot().ActiveSessions; got != 50 {
		t.Fatalf("%d active sessions, want 50", got)
	}
	// Parked sessions still work, in both directions.
	for _, c := range conns[:5] {
		io.WriteString(c, "a1 NOOP\r\n")
		if got := readLine(t, c); got != "a1 NOOP\r\n" {
			t.Fatalf("echo through a parked session: %q", got)
		}
	}
}

func TestHalfCloseIsPassedOn(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	conn, err := te.dial(t, "smtps", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readLine(t, conn)
	io.WriteString(conn, "QUIT\r\n")
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	conn.NetConn().(*net.TCPConn).CloseWrite()
	// The backend sees the end of stream, answers and closes.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	rest, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	if string(rest) != "QUIT\r\nbye\r\n" {
		t.Fatalf("got %q after half-close", rest)
	}
	waitFor(t, 10*time.Second, "session closed", func() bool { return te.Snapshot().ActiveSessions == 0 })
}

func TestIdleTimeoutClosesSession(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.IdleTimeout = 200 * time.Millisecond })
	conn, err := te.dial(t, "imaps", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readLine(t, conn)
	expectClosed(t, conn, 10*time.Second)
	waitFor(t, 10*time.Second, "session forgotten", func() bool { return te.Snapshot().ActiveSessions == 0 })
}
