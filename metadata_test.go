package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMetadataFileFollowsRotation: the demo publishes the ECH config list
// for IMAP METADATA at start, and rewrites it after `ech rotate` once the
// instance re-reads its keys (reloadECHKeys, which the 30 s watcher runs).
func TestMetadataFileFollowsRotation(t *testing.T) {
	state := t.TempDir()
	file := filepath.Join(t.TempDir(), "run", "ech-config-list")
	d := startTestDemoWeb(t, state, demoWeb{MetadataFile: file})
	show := func() string {
		var out bytes.Buffer
		if code := run([]string{"ech", "show", "--state", state}, &out, io.Discard); code != 0 {
			t.Fatalf("ech show exit %d", code)
		}
		return out.String()
	}
	read := func() string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	before := read()
	if before != show() || strings.Count(before, "\n") != 1 {
		t.Fatalf("METADATA file %q, want the one line of ech show %q", before, show())
	}
	if info, _ := os.Stat(file); info.Mode().Perm() != 0o644 {
		t.Fatalf("METADATA file mode %v, want 0644 (chatmail-metadata runs as another user)", info.Mode().Perm())
	}

	if code := run([]string{"ech", "rotate", "--state", state}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("ech rotate exit %d", code)
	}
	d.reloadECHKeys()
	after := read()
	if after == before || after != show() {
		t.Fatalf("after rotation the METADATA file is %q; before %q, ech show %q", after, before, show())
	}
	// What origin-svcb and autoconfig publish moved along with it.
	_, body := d.get(t, "chatmail.localhost", "/.well-known/autoconfig/mail/config-v1.1.xml")
	if !strings.Contains(string(body), strings.TrimSpace(after)) {
		t.Fatalf("autoconfig does not carry the rotated config:\n%s", body)
	}
}
