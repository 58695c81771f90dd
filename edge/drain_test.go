package edge

import (
	"context"
	"net"
	"testing"
	"time"
)

// Drain stops accepting at once, keeps proxying an established session
// until it ends, and returns then, without waiting for its context.
func TestDrainWaitsForSessions(t *testing.T) {
	te, c := startSession(t, "imaps", "* OK test imap ready\r\n")
	addr := te.addr("imaps")
	done := drainInBackground(te, context.Background())
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
	done := drainInBackground(te, ctx)
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
func drainInBackground(te *testEdge, ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		te.Drain(ctx)
		close(done)
	}()
	return done
}
