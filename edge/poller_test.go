//go:build linux

package edge

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"chatmail-edge/edge/internal/netpoll"
)

// pollSlotsInUse counts the poller's live registrations.
func pollSlotsInUse(e *Edge) int {
	return e.poller.Registered()
}

// TestLateHelloKeepsItsRegistration covers a client that connects and sends
// its ClientHello only later: it waits in the poller, and its session's
// client pump goes on with that same registration (re-armed, not removed and
// added again) through several rounds of parking, until the close gives it up.
func TestLateHelloKeepsItsRegistration(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	if n := pollSlotsInUse(te.Edge); n != 0 {
		t.Fatalf("%d registrations before any client", n)
	}
	raw, err := net.Dial("tcp", te.addr("imaps"))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	var admitted netpoll.Registration
	waitFor(t, 5*time.Second, "the silent connection parked in the poller", func() bool {
		te.mu.Lock()
		defer te.mu.Unlock()
		for pc := range te.pending {
			if pc.registered && pc.state == waitingForHello {
				admitted = pc.reg
				return true
			}
		}
		return false
	})

	conn := tls.Client(raw, &tls.Config{ServerName: "chat.example", RootCAs: te.roots})
	if got := readLine(t, conn); got != "* OK test imap ready\r\n" {
		t.Fatalf("greeting %q", got)
	}
	te.mu.Lock()
	var s *session
	for s = range te.sessions {
	}
	te.mu.Unlock()
	if s == nil {
		t.Fatal("no session after the greeting")
	}
	s.mu.Lock()
	upReg, upRegistered := s.up.reg, s.up.registered
	s.mu.Unlock()
	if !upRegistered || upReg != admitted {
		t.Fatalf("client pump registration %+v (registered %v), want the admission's %+v", upReg, upRegistered, admitted)
	}
	if n := pollSlotsInUse(te.Edge); n != 2 {
		t.Fatalf("%d registrations for one session, want 2 (one per socket)", n)
	}

	for i := range 5 {
		line := fmt.Sprintf("a%d NOOP\r\n", i)
		if _, err := io.WriteString(conn, line); err != nil {
			t.Fatal(err)
		}
		if got := readLine(t, conn); got != line {
			t.Fatalf("round %d: echo %q, want %q", i, got, line)
		}
	}

	// Half-close: the backend says goodbye and closes, and the session ends.
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, conn); got != "bye\r\n" {
		t.Fatalf("after the half-close: %q", got)
	}
	expectClosed(t, conn, 5*time.Second)
	waitFor(t, 5*time.Second, "the session gone", func() bool {
		te.mu.Lock()
		defer te.mu.Unlock()
		return len(te.sessions) == 0
	})
	if n := pollSlotsInUse(te.Edge); n != 0 {
		t.Fatalf("%d registrations left after the session closed", n)
	}
}
