package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
