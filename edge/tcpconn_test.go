package edge

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// acceptOne listens on addr and hands over the first connection accepted.
func acceptOne(t *testing.T, network, addr string) (net.Listener, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			t.Cleanup(func() { c.Close() })
			got <- c
		}
		close(got)
	}()
	return ln, got
}

// TestDialBackendCarriesData dials the way sessions reach their backends
// (the connect made early, see netpoll.ConnectEarly) over IPv4 and IPv6 and moves
// data both ways through the tcpConn.
func TestDialBackendCarriesData(t *testing.T) {
	e := &Edge{}
	for _, tc := range []struct{ network, listen string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) {
			ln, accepted := acceptOne(t, tc.network, tc.listen)
			c, err := e.dialBackend(context.Background(), ln.Addr().String())
			if err != nil {
				t.Fatalf("dial %s: %v", ln.Addr(), err)
			}
			defer c.Close()
			peer := <-accepted
			if peer == nil {
				t.Fatal("listener accepted nothing")
			}
			if got, want := peer.RemoteAddr().String(), c.LocalAddr().String(); got != want {
				t.Fatalf("listener sees %s, dialer is %s", got, want)
			}
			if _, err := c.Write([]byte("ping\n")); err != nil {
				t.Fatalf("write: %v", err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping\n" {
				t.Fatalf("peer read %q, %v", buf, err)
			}
			if _, err := peer.Write([]byte("pong\n")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong\n" {
				t.Fatalf("read %q, %v", buf, err)
			}

			// Half-close: the peer sees the end of stream and can still answer.
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("CloseWrite: %v", err)
			}
			if rest, err := io.ReadAll(peer); err != nil || len(rest) != 0 {
				t.Fatalf("peer after CloseWrite: read %q, %v; want the end of stream", rest, err)
			}
			if _, err := peer.Write([]byte("bye\n")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf[:4]); err != nil || string(buf[:4]) != "bye\n" {
				t.Fatalf("read after CloseWrite %q, %v", buf[:4], err)
			}
		})
	}
}

func TestDialBackendRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = (&Edge{}).dialBackend(context.Background(), addr)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a closed port: got %v, want connection refused", err)
	}
}

// TestTCPConnDeadlines checks that a tcpConn that is not parked waits for
// data and for room like a net.Conn, and gives up at its deadlines with a
// timeout error that names the operation.
func TestTCPConnDeadlines(t *testing.T) {
	ln, accepted := acceptOne(t, "tcp4", "127.0.0.1:0")
	nc, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := newTCPConn(nc.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer := <-accepted

	// A read waits for data that comes later.
	go peer.Write([]byte("late"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "late" {
		t.Fatalf("read %q, %v", buf, err)
	}

	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = c.Read(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: got %v, want a timeout", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("read past the deadline: got %v, want an OpError for read", err)
	}

	// The peer reads nothing, so writes fill both socket buffers and then
	// must wait; the deadline ends the wait.
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	var total int
	for err = nil; err == nil; {
		var n int
		n, err = c.Write(chunk)
		total += n
		if total > 1<<30 {
			t.Fatal("1 GiB written to a peer that reads nothing")
		}
	}
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("write past the deadline: got %v, want a timeout of write", err)
	}

	// Closed: the error is net.ErrClosed, as for any net.Conn.
	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: got %v, want net.ErrClosed", err)
	}
}
