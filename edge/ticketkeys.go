package edge

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/internal/filelimit"

	"go.uber.org/zap"
)

// Session ticket keys (RFC 8446 §4.6.1, §2.2) are kept in a file so that a
// client can resume after the edge restarts: after a restart every client
// reconnects at once, and a resumed handshake skips the certificate
// signature on our side and the chain verification on the client's.
//
// A new key encrypts from every ticketKeyRotation on; the previous ones keep
// decrypting, so a ticket stays usable for up to ticketKeysKept rotations.
const (
	ticketKeyRotation = 24 * time.Hour
	ticketKeysKept    = 3
)

type ticketKey struct {
	created time.Time
	key     [32]byte
}

// rotateTicketKeys loads the key file, adds a key when the newest is due,
// stores the file and installs the keys. A missing or unreadable file starts
// over with a new key: a lost ticket key only costs clients one full
// handshake, so it is logged, not fatal.
func (e *Edge) rotateTicketKeys(now time.Time) error {
	path := e.cfg.TicketKeyFile
	keys, err := readTicketKeys(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.log.Warn("session ticket keys unreadable, starting with a new key; clients do one full handshake", zap.String("file", path), zap.Error(err))
		keys = nil
	}
	if len(keys) == 0 || now.Sub(keys[0].created) >= ticketKeyRotation {
		var k ticketKey
		k.created = now
		rand.Read(k.key[:])
		keys = append([]ticketKey{k}, keys...)
		if len(keys) > ticketKeysKept {
			keys = keys[:ticketKeysKept]
		}
		if err := atomicfile.Write(path, formatTicketKeys(keys), 0o600); err != nil {
			return fmt.Errorf("store session ticket keys: %w", err)
		}
	}
	raw := make([][32]byte, len(keys))
	for i, k := range keys {
		raw[i] = k.key
	}
	e.SetSessionTicketKeys(raw)
	e.nextTicketRotation = keys[0].created.Add(ticketKeyRotation)
	return nil
}

// The file holds one key per line, newest first: "<RFC 3339 time> <base64>".
func formatTicketKeys(keys []ticketKey) []byte {
	var b bytes.Buffer
	b.WriteString("# chatmail-edge TLS session ticket keys, newest first. Secret.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %s\n", k.created.UTC().Format(time.RFC3339), base64.StdEncoding.EncodeToString(k.key[:]))
	}
	return b.Bytes()
}

// maxTicketKeyFile bounds the key file (three lines of 78 bytes).
const maxTicketKeyFile = filelimit.Small

// readTicketKeys reads the key file. Only the newest ticketKeysKept keys
// are used; a line that is not a key, or a time that formatTicketKeys could
// not write back (outside the years 1 to 9999), makes the file unreadable.
func readTicketKeys(path string) ([]ticketKey, error) {
	data, err := filelimit.ReadFile(path, maxTicketKeyFile)
	if err != nil {
		return nil, err
	}
	var keys []ticketKey
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		when, b64, ok := strings.Cut(text, " ")
		created, terr := time.Parse(time.RFC3339, when)
		raw, berr := base64.StdEncoding.DecodeString(b64)
		if y := created.UTC().Year(); !ok || terr != nil || berr != nil || len(raw) != 32 || y < 1 || y > 9999 {
			return nil, fmt.Errorf("%s:%d: malformed key line", path, line)
		}
		k := ticketKey{created: created}
		copy(k.key[:], raw)
		keys = append(keys, k)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return keys[:min(len(keys), ticketKeysKept)], nil
}
