package edge

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/filelimit"
)

// TestResumptionSurvivesRestart: a client resumes its TLS session with a new
// edge process that shares the ticket key file, and not with one that does not.
func TestResumptionSurvivesRestart(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "tls-ticket-keys")
	cache := tls.NewLRUClientSessionCache(8)
	connect := func(te *testEdge) bool {
		t.Helper()
		conn, err := tls.Dial("tcp", te.addr("imaps"), &tls.Config{ServerName: "chat.example", RootCAs: te.roots, ClientSessionCache: cache})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		readLine(t, conn) // the ticket arrives after the handshake; reading processes it
		return conn.ConnectionState().DidResume
	}
	withKeys := func(file string) func(*Config) { return func(c *Config) { c.TicketKeyFile = file } }

	first, _, _ := startEdgeWithBackends(t, withKeys(keyFile))
	if connect(first) {
		t.Fatal("first connection resumed")
	}
	first.Shutdown()

	second, _, _ := startEdgeWithBackends(t, withKeys(keyFile))
	if !connect(second) {
		t.Fatal("no resumption after a restart with the same ticket keys")
	}

	other, _, _ := startEdgeWithBackends(t, withKeys(filepath.Join(t.TempDir(), "other-keys")))
	if connect(other) {
		t.Fatal("resumed with an edge holding other ticket keys")
	}

	fi, err := os.Stat(keyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ticket key file: %v, mode %v", err, fi.Mode().Perm())
	}
}

func TestTicketKeysRotateAndAreBounded(t *testing.T) {
	te := startEdge(t, nil, Backends{})
	te.cfg.TicketKeyFile = filepath.Join(t.TempDir(), "keys")
	now := time.Now()
	for i := range 5 {
		if err := te.rotateTicketKeys(now.Add(time.Duration(i) * ticketKeyRotation)); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := readTicketKeys(te.cfg.TicketKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != ticketKeysKept {
		t.Fatalf("%d keys kept, want %d", len(keys), ticketKeysKept)
	}
	if !keys[0].created.After(keys[1].created) {
		t.Fatal("keys not newest first")
	}
	// Within the rotation period nothing changes.
	before, _ := os.ReadFile(te.cfg.TicketKeyFile)
	te.rotateTicketKeys(now.Add(4*ticketKeyRotation + time.Hour))
	after, _ := os.ReadFile(te.cfg.TicketKeyFile)
	if string(before) != string(after) {
		t.Fatal("keys rotated before they were due")
	}
	// A damaged file is replaced (and logged), never fatal.
	os.WriteFile(te.cfg.TicketKeyFile, []byte("garbage line\n"), 0o600)
	if err := te.rotateTicketKeys(now); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(te.cfg.TicketKeyFile)
	if strings.Contains(string(b), "garbage") {
		t.Fatal("damaged key file kept")
	}
}

// TestTicketKeyFileLimit: a key file over its limit is not read whole; the
// error names it and the limit, and the next rotation replaces it.
func TestTicketKeyFileLimit(t *testing.T) {
	te := startEdge(t, nil, Backends{})
	te.cfg.TicketKeyFile = filepath.Join(t.TempDir(), "keys")
	os.WriteFile(te.cfg.TicketKeyFile, []byte(strings.Repeat("# comment\n", filelimit.Small/10+1)), 0o600)
	_, err := readTicketKeys(te.cfg.TicketKeyFile)
	if !errors.Is(err, filelimit.ErrTooLarge) || !strings.Contains(err.Error(), te.cfg.TicketKeyFile) || !strings.Contains(err.Error(), "more than 65536 bytes") {
		t.Fatalf("oversized key file: %v", err)
	}
	if err := te.rotateTicketKeys(time.Now()); err != nil {
		t.Fatal(err)
	}
	if keys, err := readTicketKeys(te.cfg.TicketKeyFile); err != nil || len(keys) != 1 {
		t.Fatalf("after the rotation: %d keys, %v", len(keys), err)
	}
}
