package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"crypto/tls"
)

// TestECHKeysAcrossRestartsAndRotation covers the key life cycle as an
// operator sees it, on the demo's state folder.
func TestECHKeysAcrossRestartsAndRotation(t *testing.T) {
	state := t.TempDir()
	d := startTestDemo(t, state)
	original := d.echKeys.Load().ConfigList()
	d.shutdown()

	// A restart alone keeps the config byte for byte.
	d = startTestDemo(t, state)
	if got := d.echKeys.Load().ConfigList(); !bytes.Equal(got, original) {
		t.Fatal("ECH config changed across a restart")
	}
	d.shutdown()

	// Rotate, restart: the published list starts with the new key, and a
	// client holding the old config still gets ECH accepted.
	var out bytes.Buffer
	if code := run([]string{"ech", "rotate", "--state", state}, &out, io.Discard); code != 0 {
		t.Fatalf("ech rotate exit %d: %s", code, out.String())
	}
	d = startTestDemo(t, state)
	published := d.echKeys.Load().ConfigList()
	if bytes.Equal(published, original) {
		t.Fatal("rotation did not change the published config")
	}
	var show bytes.Buffer
	run([]string{"ech", "show", "--state", state, "--format", "json"}, &show, io.Discard)
	if !strings.Contains(show.String(), `"current": true`) || strings.Count(show.String(), `"config_id"`) != 2 {
		t.Fatalf("ech show --format json after rotation:\n%s", show.String())
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
	d.shutdown()

	// A corrupt key file stops the start, naming the file; nothing is replaced.
	files, _ := filepath.Glob(filepath.Join(state, "ech", "*.pem"))
	if len(files) != 2 {
		t.Fatalf("%d key files, want 2", len(files))
	}
	os.WriteFile(files[0], []byte("-----BEGIN PRIVATE KEY-----\nbroken\n"), 0o600)
	log, _ := newLogger(io.Discard, "info")
	_, err = startDemo(demoConfig{StateDir: state, Domain: "chatmail.localhost", Host: "127.0.0.1"}, log)
	if err == nil || !strings.Contains(err.Error(), files[0]) {
		t.Fatalf("start with a corrupt key: want an error naming %s, got %v", files[0], err)
	}
	if after, _ := filepath.Glob(filepath.Join(state, "ech", "*.pem")); len(after) != 2 {
		t.Fatalf("key files changed after a failed start: %v", after)
	}
}

func TestConfigErrorsNameFileAndLine(t *testing.T) {
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	cases := map[string]string{
		"[edge]\nchatmail_ini = " + chatmailINI + "\nidle_timeout = soon\n": ":3: idle_timeout: want a duration from 10s to 24h0m0s",
		"[edge]\nchatmail_ini = " + chatmailINI + "\nnonsense = 1\n":        `:3: unknown key "nonsense" in [edge]`,
		"[imap]\nbackend = carrier-pigeon\n":                                ":2: backend: want tls or proxy",
		"[edge]\nhttps = 443\n":                                             ":2: https: want host:port",
		"[wat]\nx = 1\n":                                                    ":2: unknown section [wat]",
	}
	for content, want := range cases {
		path := filepath.Join(dir, "edge.ini")
		os.WriteFile(path, []byte(content), 0o644)
		var stderr bytes.Buffer
		code := run([]string{"serve", "--config", path}, io.Discard, &stderr)
		if code != exitConfig || !strings.Contains(stderr.String(), path+want) {
			t.Errorf("config %q: exit %d, stderr %q; want %d and %q", content, code, stderr.String(), exitConfig, path+want)
		}
	}
	// chatmail.ini without mail_domain.
	os.WriteFile(chatmailINI, []byte("[params]\n"), 0o644)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n"), 0o644)
	var stderr bytes.Buffer
	if code := run([]string{"serve", "--config", path}, io.Discard, &stderr); code != exitConfig || !strings.Contains(stderr.String(), "mail_domain is missing") {
		t.Errorf("missing mail_domain: exit %d, %q", code, stderr.String())
	}
}

func TestConfigDescribeParses(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"config", "describe"}, &out, io.Discard); code != 0 {
		t.Fatal(code)
	}
	// Uncommenting every key gives a valid file with the defaults.
	var uncommented []string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "#") && strings.Contains(line, " = ") && !strings.HasPrefix(line, "# ") {
			line = strings.TrimPrefix(line, "#")
		}
		uncommented = append(uncommented, line)
	}
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	text := strings.Replace(strings.Join(uncommented, "\n"), "chatmail_ini = /usr/local/lib/chatmaild/chatmail.ini", "chatmail_ini = "+chatmailINI, 1)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte(text), 0o644)
	s, err := loadSettings(path, true)
	if err != nil {
		t.Fatalf("described config does not load: %v", err)
	}
	if s.MailDomain != "chat.example" || s.HTTPS != ":443" || s.IMAPBackend.Address != "127.0.0.1:993" {
		t.Fatalf("defaults not as described: %+v", s)
	}
}
