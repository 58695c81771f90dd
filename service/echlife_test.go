package service

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/ech"
)

// TestECHKeysAcrossRestartsAndRotation covers the key life cycle as an
// operator sees it, on the demo's state folder.
func TestECHKeysAcrossRestartsAndRotation(t *testing.T) {
	state := t.TempDir()
	d := startTestDemo(t, state)
	original := d.echKeys.Load().ConfigList()
	d.Shutdown()

	// A restart alone keeps the config byte for byte.
	d = startTestDemo(t, state)
	if got := d.echKeys.Load().ConfigList(); !bytes.Equal(got, original) {
		t.Fatal("ECH config changed across a restart")
	}
	d.Shutdown()

	// Rotate, restart: the published list starts with the new key, and a
	// client holding the old config still gets ECH accepted.
	echRotate(t, state)
	d = startTestDemo(t, state)
	published := d.echKeys.Load().ConfigList()
	if bytes.Equal(published, original) {
		t.Fatal("rotation did not change the published config")
	}
	set, err := ech.Load(ech.Dir(state))
	if err != nil {
		t.Fatal(err)
	}
	show, err := set.Format("json", "", 443, time.Now())
	if err != nil || !strings.Contains(string(show), `"current": true`) || strings.Count(string(show), `"config_id"`) != 2 {
		t.Fatalf("ech show --format json after rotation: %v\n%s", err, show)
	}
	cfg := d.tlsConfig(t)
	cfg.EncryptedClientHelloConfigList = original
	conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port("imaps"))), cfg)
	if err != nil {
		t.Fatalf("old config after rotation: %v", err)
	}
	if !conn.ConnectionState().ECHAccepted {
		t.Fatal("old config no longer accepted after rotation")
	}
	conn.Close()
	d.Shutdown()

	// A corrupt key file stops the start, naming the file; nothing is replaced.
	files, _ := filepath.Glob(filepath.Join(state, "ech", "*.pem"))
	if len(files) != 2 {
		t.Fatalf("%d key files, want 2", len(files))
	}
	os.WriteFile(files[0], []byte("-----BEGIN PRIVATE KEY-----\nbroken\n"), 0o600)
	log, _ := NewLogger(io.Discard, "info")
	_, err = StartDemo(DemoConfig{StateDir: state, Domain: "chatmail.localhost", Host: "127.0.0.1"}, log)
	if err == nil || !strings.Contains(err.Error(), files[0]) {
		t.Fatalf("start with a corrupt key: want an error naming %s, got %v", files[0], err)
	}
	if after, _ := filepath.Glob(filepath.Join(state, "ech", "*.pem")); len(after) != 2 {
		t.Fatalf("key files changed after a failed start: %v", after)
	}
}
