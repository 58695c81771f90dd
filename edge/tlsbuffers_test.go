package edge

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// tlsInputCap reads c's rawInput capacity under c's input lock, as the
// trim does.
func tlsInputCap(c *tls.Conn) int {
	p := unsafe.Pointer(c)
	mu := (*sync.Mutex)(unsafe.Add(p, tlsBufferLayout.in))
	mu.Lock()
	defer mu.Unlock()
	return (*bytes.Buffer)(unsafe.Add(p, tlsBufferLayout.rawInput)).Cap()
}

// TestParkedSessionReleasesTLSBuffers: after a burst of full-size records a
// parked session gives crypto/tls's input buffer back, and keeps working.
func TestParkedSessionReleasesTLSBuffers(t *testing.T) {
	if !tlsBufferLayout.ok {
		t.Fatal("crypto/tls's buffer fields were not recognised: idle connections keep ~22 KiB each; update tlsbuffers.go for this Go version")
	}
	te, _, _ := startEdgeWithBackends(t, nil)
	conn, err := te.dial(t, "imaps", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readLine(t, conn)
	data := make([]byte, 64<<10)
	rand.Read(data)
	go conn.Write(data)
	back := make([]byte, len(data))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(conn, back); err != nil || !bytes.Equal(back, data) {
		t.Fatalf("echo of 64 KiB: %v", err)
	}
	waitFor(t, 10*time.Second, "pumps parked", func() bool { return te.Snapshot().BusyPumps == 0 })

	te.mu.Lock()
	var s *session
	for s = range te.sessions {
	}
	te.mu.Unlock()
	if got := tlsInputCap(s.client); got > keepTLSInput {
		t.Fatalf("parked session keeps a %d-byte TLS input buffer", got)
	}
	// And it still carries data both ways.
	io.WriteString(conn, "a1 NOOP\r\n")
	if got := readLine(t, conn); got != "a1 NOOP\r\n" {
		t.Fatalf("after trimming: %q", got)
	}
}
