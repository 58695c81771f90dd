package edge

import (
	"strings"
	"testing"
	"time"
)

func (e *Edge) handshakeSlotCount() int {
	e.slots.mu.Lock()
	defer e.slots.mu.Unlock()
	return e.slots.size
}

// TestSetLimits: new limits apply to what comes next, established
// connections stay, and the handshake slots follow MaxHandshakes.
func TestSetLimits(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.MaxHandshakes = 8 })
	if n := te.handshakeSlotCount(); n != 8 {
		t.Fatalf("%d handshake slots, want 8", n)
	}
	kept, err := te.dial(t, "imaps", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	readLine(t, kept)

	// One connection is open: a limit of 1 refuses the next one.
	if err := te.SetLimits(Limits{MaxConnections: 1, MaxHandshakes: 1}); err != nil {
		t.Fatal(err)
	}
	if got := te.Limits(); got.MaxConnections != 1 || got.MaxHandshakes != 1 || got.IdleTimeout != 30*time.Minute {
		t.Fatalf("limits %+v: zero values must keep the current ones", got)
	}
	if c, err := te.dial(t, "imaps", nil, nil); err == nil {
		c.Close()
		t.Fatal("a second connection got through a limit of 1")
	}
	if n := te.handshakeSlotCount(); n != 1 {
		t.Fatalf("%d handshake slots, want 1", n)
	}
	if _, err := kept.Write([]byte("a1 NOOP\r\n")); err != nil || readLine(t, kept) != "a1 NOOP\r\n" {
		t.Fatalf("the established connection stopped working: %v", err)
	}

	if err := te.SetLimits(Limits{MaxConnections: 10, MaxHandshakes: 3}); err != nil {
		t.Fatal(err)
	}
	if n := te.handshakeSlotCount(); n != 3 {
		t.Fatalf("%d handshake slots, want 3", n)
	}
	second, err := te.dial(t, "imaps", nil, nil)
	if err != nil {
		t.Fatalf("a raised limit still refuses: %v", err)
	}
	defer second.Close()
	if got := readLine(t, second); !strings.HasPrefix(got, "* OK") {
		t.Fatalf("greeting %q", got)
	}

	// A shorter idle timeout reaches sessions already established.
	if err := te.SetLimits(Limits{IdleTimeout: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, kept, 10*time.Second)

	if err := te.SetLimits(Limits{MaxHandshakes: -1}); err == nil {
		t.Fatal("a negative limit was accepted")
	}
}
