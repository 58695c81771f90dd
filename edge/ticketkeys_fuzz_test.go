package edge

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/filelimit"
)

// FuzzReadTicketKeys: reading the ticket key file never panics; an error
// names the file and a line that holds a key; a file that reads has one key
// of 32 bytes per line that is neither blank nor a comment, and what
// formatTicketKeys writes of them reads back to the same keys (to the
// second, as the file holds them).
func FuzzReadTicketKeys(f *testing.F) {
	now := time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)
	var keys []ticketKey
	for i := range ticketKeysKept {
		k := ticketKey{created: now.Add(-time.Duration(i) * ticketKeyRotation)}
		for j := range k.key {
			k.key[j] = byte(i*32 + j)
		}
		keys = append(keys, k)
	}
	written := formatTicketKeys(keys)
	f.Add(written)
	f.Add(formatTicketKeys(keys[:1]))
	f.Add(bytes.ReplaceAll(written, []byte("\n"), []byte("\r\n")))
	f.Add([]byte("# only a comment\n\n"))
	f.Add([]byte("2026-05-01T08:00:00+02:00 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"))
	f.Add([]byte("2026-05-01T08:00:00.123456Z AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"))
	f.Add([]byte("2026-05-01T08:00:00Z AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n")) // 31 bytes
	f.Add([]byte("garbage line\n"))
	f.Add([]byte{})
	// Found by this target: a line over the scanner's buffer dropped the rest
	// of the file without an error, and times out of RFC 3339's years could
	// not be written back.
	const b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	f.Add([]byte("2026-05-01T08:00:00Z " + b64 + "\n#" + strings.Repeat("x", 70000) + "\ngarbage\n"))
	f.Add([]byte("9999-12-31T23:59:59-01:00 " + b64 + "\n"))
	f.Add([]byte("0000-01-01T00:30:00+01:00 " + b64 + "\n"))
	f.Add([]byte(strings.Repeat("2026-05-01T08:00:00Z "+b64+"\n", 5)))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "tls-ticket-keys")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readTicketKeys(path)
		lines := strings.Split(string(data), "\n")
		if len(data) > maxTicketKeyFile {
			if !errors.Is(err, filelimit.ErrTooLarge) {
				t.Fatalf("a file of %d bytes read with %v", len(data), err)
			}
			return
		}
		if err != nil {
			var n int
			if _, scanErr := fmt.Sscanf(strings.TrimPrefix(err.Error(), path+":"), "%d: malformed key line", &n); scanErr != nil || n < 1 || n > len(lines) {
				t.Fatalf("error %q names no line of the file", err)
			}
			if text := strings.TrimSpace(lines[n-1]); text == "" || strings.HasPrefix(text, "#") {
				t.Fatalf("error %q names a blank or comment line %q", err, lines[n-1])
			}
			return
		}
		significant := 0
		for _, l := range lines {
			if text := strings.TrimSpace(l); text != "" && !strings.HasPrefix(text, "#") {
				significant++
			}
		}
		if len(got) != min(significant, ticketKeysKept) {
			t.Fatalf("%d keys from %d key lines", len(got), significant)
		}
		if err := os.WriteFile(path, formatTicketKeys(got), 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := readTicketKeys(path)
		if err != nil || len(again) != len(got) {
			t.Fatalf("the file written from the keys read: %d keys, %v\n%s", len(again), err, formatTicketKeys(got))
		}
		for i := range got {
			if again[i].key != got[i].key || !again[i].created.Equal(got[i].created.Truncate(time.Second)) {
				t.Fatalf("key %d: wrote %v, read back %v", i, got[i].created, again[i].created)
			}
		}
	})
}
