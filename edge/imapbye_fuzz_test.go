package edge

import (
	"bytes"
	"io"
	"testing"
)

// eofReader returns data in reads of the caller's size and io.EOF with
// the last bytes, as a TLS conn may.
type eofReader struct{ rest []byte }

func (r *eofReader) Read(p []byte) (int, error) {
	n := copy(p, r.rest)
	r.rest = r.rest[n:]
	if len(r.rest) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// refBye starts an untagged BYE (RFC 9051 §7.1.5).
const refBye = "* BYE "

// byeAtLineStart lists where "* BYE " starts a line of data.
func byeAtLineStart(data []byte) []int {
	var at []int
	for k := 0; k+len(refBye) <= len(data); k++ {
		if (k == 0 || data[k-1] == '\n') && string(data[k:k+len(refBye)]) == refBye {
			at = append(at, k)
		}
	}
	return at
}

// FuzzByeWatcher reads a backend's stream through a byeWatcher in reads of
// fuzzed sizes. The watcher must pass every byte on unchanged, never
// un-see a BYE, and see one exactly when a "* BYE " that starts a line lies
// within one read (its documented limit: a BYE split across reads goes
// unnoticed), by a reference that looks at every offset of the stream.
func FuzzByeWatcher(f *testing.F) {
	f.Add([]byte("* OK ready\r\n* BYE Server shutting down.\r\n"), []byte{})
	f.Add([]byte("* OK ready\r\n* BYE Server shutting down.\r\n"), []byte{11, 3, 200})
	f.Add([]byte("* BYE Logging out\r\na OK Logout completed.\r\n"), []byte{0})
	f.Add([]byte("* OK ready\r\n"), []byte{5})
	f.Add([]byte("a1 FETCH 1 BODY[] {21}\r\nx\r\n* BYE in a message\r\n)\r\na1 OK\r\n"), []byte{24, 64})
	f.Add([]byte("* 1 EXISTS\r\nxx* BYE not at a line start\r\n* BYE"), []byte{13})
	f.Add([]byte("\n* BYE \n* BYE "), []byte{1, 6})
	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		for _, eofWithData := range []bool{false, true} {
			var src io.Reader = bytes.NewReader(data)
			if eofWithData {
				src = &eofReader{rest: data}
			}
			w := newByeWatcher(src)
			var out []byte
			var reads [][2]int // [start, end) of each read in data
			for i := 0; ; i++ {
				if i > len(data)+1 {
					t.Fatalf("more than %d reads for %d bytes", i, len(data))
				}
				size := 4096
				if len(sizes) > 0 {
					size = 1 + int(sizes[i%len(sizes)])
				}
				p := make([]byte, size)
				wasBye := w.sawBye.Load()
				n, err := w.Read(p)
				if n < 0 || n > size {
					t.Fatalf("Read returned %d for a buffer of %d", n, size)
				}
				if wasBye && !w.sawBye.Load() {
					t.Fatal("a BYE seen was forgotten")
				}
				reads = append(reads, [2]int{len(out), len(out) + n})
				out = append(out, p[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(out, data) {
				t.Fatalf("passed on %q, read %q", out, data)
			}
			want := false
			for _, k := range byeAtLineStart(data) {
				for _, r := range reads {
					want = want || r[0] <= k && k+len(refBye) <= r[1]
				}
			}
			if got := w.sawBye.Load(); got != want {
				t.Fatalf("sawBye %v, want %v: %q in reads %v", got, want, data, reads)
			}
		}
	})
}
