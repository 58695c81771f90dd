package service

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/metadata"

	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestMetadataFileFollowsRotation: the demo publishes the ECH config list
// for IMAP METADATA at start, and rewrites it after `ech rotate` once the
// instance re-reads its keys (reloadECHKeys, which the 30 s watcher runs).
func TestMetadataFileFollowsRotation(t *testing.T) {
	state := t.TempDir()
	file := filepath.Join(t.TempDir(), "run", "ech-config-list")
	d := startTestDemoWeb(t, state, demoWeb{MetadataFile: file})
	show := func() string { return echShow(t, state) + "\n" }
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

	echRotate(t, state)
	d.reloadECHKeys(false)
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

// waitUntil polls cond, for states that announce themselves by no event;
// reaching the deadline fails the test.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetadataFileRetriedUntilWritten: a METADATA file that cannot be
// written (its folder's parent is a regular file: chmod does not stop root)
// is retried with backoff, logged once, and shown as not current; once the
// cause is gone the file appears with nothing else done.
func TestMetadataFileRetriedUntilWritten(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "run")
	if err := os.WriteFile(blocker, []byte("not a folder"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(blocker, "chatmail-metadata", "ech-config-list")
	core, logs := observer.New(zap.InfoLevel)
	state := t.TempDir()
	d, err := StartDemo(DemoConfig{StateDir: state, Domain: "chatmail.localhost", Host: "127.0.0.1", web: demoWeb{MetadataFile: file}}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Shutdown)

	waitUntil(t, "a retry failed too", func() bool { return d.metadata.State().FailedAttempts >= 2 })
	if n := logs.FilterMessageSnippet("cannot publish the ECH config list").Len(); n != 1 {
		t.Fatalf("the failure was logged %d times, want once for the episode", n)
	}
	if _, page := d.adminGet(t, "/"); !strings.Contains(string(page), "not current: publish the ECH config list: mkdir") {
		t.Errorf("the admin page does not show the failing METADATA file:\n%s", page)
	}
	if _, metrics := d.adminGet(t, "/metrics"); !strings.Contains(string(metrics), `chatmail_edge_ech_metadata_file_current{file="`+file+`"} 0`) {
		t.Errorf("the metric does not say the file is stale:\n%s", metrics)
	}

	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the METADATA file appeared", func() bool { _, err := os.Stat(file); return err == nil })
	show := echShow(t, state) + "\n"
	if got, err := os.ReadFile(file); err != nil || string(got) != show {
		t.Fatalf("METADATA file %q (%v), want the line of ech show %q", got, err, show)
	}
	if st := d.metadata.State(); !st.Current || st.FailedAttempts != 0 || st.Error != "" {
		t.Fatalf("state after the write: %+v", st)
	}
	if _, page := d.adminGet(t, "/"); !strings.Contains(string(page), "</code>: current</dd>") {
		t.Errorf("the admin page does not show the file current")
	}
	if _, metrics := d.adminGet(t, "/metrics"); !strings.Contains(string(metrics), `chatmail_edge_ech_metadata_file_current{file="`+file+`"} 1`) {
		t.Errorf("the metric does not say the file is current")
	}
	if n := logs.FilterMessageSnippet("after failed attempts").Len(); n != 1 {
		t.Errorf("the recovery was logged %d times, want once", n)
	}
}

// TestDemoAnswersGetMetadata: the demo's IMAP server, reached through the
// edge with ECH on 993 and on 443, answers GETMETADATA "" with what `ech
// show` prints, and follows `ech rotate`; a client that still has the old
// config list connects with it and reads the new one.
func TestDemoAnswersGetMetadata(t *testing.T) {
	state := t.TempDir()
	d := startTestDemo(t, state)
	email, password := newAccount(t, d)
	show := func() string { return echShow(t, state) }
	getECH := func(conn *tls.Conn) string {
		t.Helper()
		c := imapclient.New(conn, nil)
		defer c.Close()
		if err := c.Login(email, password).Wait(); err != nil {
			t.Fatalf("LOGIN: %v", err)
		}
		data, err := c.GetMetadata("", []string{metadata.ECHEntry}, nil).Wait()
		if err != nil {
			t.Fatalf("GETMETADATA: %v", err)
		}
		v := data.Entries[metadata.ECHEntry]
		if v == nil {
			t.Fatalf("GETMETADATA: no value in %v", data.Entries)
		}
		return string(*v)
	}

	before := show()
	oldConfig := d.tlsConfig(t)
	for _, route := range []struct {
		listener string
		alpn     []string
	}{{"imaps", nil}, {"https", []string{"imap"}}} {
		if got := getECH(d.dialECH(t, route.listener, route.alpn...)); got != before {
			t.Fatalf("%s: GETMETADATA gave %q, ech show %q", route.listener, got, before)
		}
	}

	echRotate(t, state)
	d.reloadECHKeys(false) // what the instance's key watcher runs every 30 s
	after := show()
	if after == before {
		t.Fatal("ech rotate changed nothing")
	}
	conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port("imaps"))), oldConfig)
	if err != nil || !conn.ConnectionState().ECHAccepted {
		t.Fatalf("with the old config list: %v", err)
	}
	if got := getECH(conn); got != after {
		t.Fatalf("after the rotation GETMETADATA gave %q, ech show %q", got, after)
	}
}
