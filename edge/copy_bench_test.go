package edge

import (
	"io"
	"testing"
)

// BenchmarkProxyCopy moves data through an established session: a TLS
// client (no ECH: the handshake is not what is measured) writes 16 KiB
// chunks through the edge to an echoing PROXY-v2 backend and reads them
// back, so each op crosses the edge twice (decrypt+forward, then
// read+encrypt). Client and backend run in this process too; the bench tool
// (go run ./bench figure bulk) measures the edge's own CPU per GB. allocs/op
// guards the copy path against per-chunk allocations.
func BenchmarkProxyCopy(b *testing.B) {
	te, _, _ := startEdgeWithBackends(b, nil)
	c, err := te.dial(b, "https", []string{"imap"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	readLine(b, c) // the greeting

	chunk := make([]byte, 16<<10)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	back := make([]byte, len(chunk))
	writeErr := make(chan error, 1)
	b.SetBytes(int64(2 * len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for range b.N {
			if _, err := c.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	for range b.N {
		if _, err := io.ReadFull(c, back); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := <-writeErr; err != nil {
		b.Fatal(err)
	}
	if back[len(back)-1] != chunk[len(chunk)-1] {
		b.Fatal("echoed data differs")
	}
}
