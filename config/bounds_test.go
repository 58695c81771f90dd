package config

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryNumberHasBounds: each numeric key refuses a value beyond its
// range, and the error names the file, the line, the key and the range.
func TestEveryNumberHasBounds(t *testing.T) {
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	cases := []struct{ section, key, value, want string }{
		{"edge", "hello_timeout", "2m", "hello_timeout: want a duration from 100ms to 1m0s"},
		{"edge", "handshake_timeout", "1h", "handshake_timeout: want a duration from 1s to 5m0s"},
		{"edge", "idle_timeout", "100h", "idle_timeout: want a duration from 10s to 24h0m0s"},
		{"edge", "backend_timeout", "0s", "backend_timeout: want a duration from 100ms to 1m0s"},
		{"edge", "max_connections", "1000001", "max_connections: want a whole number from 1 to 1000000"},
		{"edge", "max_handshakes", "1000000", "max_handshakes: want a whole number from 1 to 4096"},
		{"edge", "max_connections_per_address", "0", "max_connections_per_address: want a whole number from 1 to 1000000"},
		{"edge", "max_handshakes_per_address", "-3", "max_handshakes_per_address: want a whole number from 1 to 100000"},
		{"edge", "new_connections_per_address", "1e9", "new_connections_per_address: want a whole number from 1 to 100000"},
		{"edge", "exempt_networks", "10.0.0.0/33", "exempt_networks: want addresses or networks"},
		{"ech", "retire_grace", "1m", "retire_grace: want a duration from 1h0m0s"},
		{"tls", "check_interval", "48h", "check_interval: want a duration from 10ms to 24h0m0s"},
		{"web", "upstream_timeout", "1h", "upstream_timeout: want a duration from 1s to 10m0s"},
		{"admin", "probe_interval", "2h", "probe_interval: want a duration from 1s to 1h0m0s"},
		{"mta-sts", "max_age", "31557601", "max_age: want seconds from 1 to 31557600"},
		{"web", "min_tls", "1.1", `min_tls: want 1.2 or 1.3, got "1.1"`},
		{"imap", "min_tls", "TLSv1.3", `min_tls: want 1.2 or 1.3, got "TLSv1.3"`},
		{"web", "access_log", "yes", `access_log: want on or off, got "yes"`},
		{"store", "timeout", "2m", "timeout: want a duration from 100ms to 1m0s"},
		{"store", "lock_ttl", "1s", "lock_ttl: want a duration from 5s to 10m0s"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, "edge.ini")
		header := "[" + c.section + "]\n"
		if c.section == "edge" {
			header = "# the key below is in [edge] too\n"
		}
		os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n"+header+c.key+" = "+c.value+"\n"), 0o644)
		_, err := Load(path, true)
		if want := path + ":4: " + c.want; !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s = %s: %v; want a configuration error with %q", c.key, c.value, err, want)
		}
	}
	// chatmail.ini's own numbers.
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n"), 0o644)
	for line, want := range map[string]string{
		"max_message_size = 99999999999999": "max_message_size: want a number of bytes from 1 to 4294967296",
		"max_smtp_connections = 0":          "max_smtp_connections: want a whole number from 1 to 1000000",
	} {
		os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"+line+"\n"), 0o644)
		if _, err := Load(path, true); err == nil || !strings.Contains(err.Error(), chatmailINI+":3: "+want) {
			t.Errorf("%s: %v", line, err)
		}
	}
}

// loadTestFiles loads the edge's file with edge below [edge]'s
// chatmail_ini line, and a chatmail.ini with params after its mail_domain.
func loadTestFiles(t *testing.T, params, edge string) (*Settings, error) {
	t.Helper()
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"+params), 0o644)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n"+edge), 0o644)
	return Load(path, true)
}

// TestMinTLSAndAccessLog: the TLS minimums per route and the access log
// from the file, and their defaults (nginx's TLS 1.2 for the web, TLS 1.3
// for IMAP and SMTP as chatmail's Dovecot and Postfix, no access log).
func TestMinTLSAndAccessLog(t *testing.T) {
	s, err := loadTestFiles(t, "max_smtp_connections = 3000\n", "")
	if err != nil {
		t.Fatal(err)
	}
	if s.MinTLS != tls.VersionTLS12 || s.IMAPBackend.MinTLS != tls.VersionTLS13 || s.SMTPBackend.MinTLS != tls.VersionTLS13 || s.AccessLog || s.MaxSMTPConnections != 3000 {
		t.Errorf("defaults: web %x imap %x smtp %x, access log %v, max_smtp_connections %d", s.MinTLS, s.IMAPBackend.MinTLS, s.SMTPBackend.MinTLS, s.AccessLog, s.MaxSMTPConnections)
	}
	if s, err = loadTestFiles(t, "", "[web]\nmin_tls = 1.3\naccess_log = on\n[smtp]\nmin_tls = 1.2\n"); err != nil {
		t.Fatal(err)
	}
	if s.MinTLS != tls.VersionTLS13 || s.SMTPBackend.MinTLS != tls.VersionTLS12 || !s.AccessLog {
		t.Errorf("set: web %x smtp %x, access log %v", s.MinTLS, s.SMTPBackend.MinTLS, s.AccessLog)
	}
}

// TestHelloTimeoutWithinHandshakeTimeout names both keys and where they are.
func TestHelloTimeoutWithinHandshakeTimeout(t *testing.T) {
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\nhandshake_timeout = 3s\nhello_timeout = 4s\n"), 0o644)
	_, err := Load(path, true)
	if err == nil || !strings.Contains(err.Error(), path+":4: hello_timeout 4s is longer than handshake_timeout 3s ("+path+":3)") {
		t.Fatalf("got %v", err)
	}
}

// TestOpenFileLimit: an explicit max_connections the open-file limit cannot
// hold fails with the file and line; the default is lowered to fit.
func TestOpenFileLimit(t *testing.T) {
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\nmax_connections = 5000\n"), 0o644)
	s, err := Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if note, err := s.FitOpenFileLimit(20000); err != nil || note != "" || s.MaxConnections != 5000 {
		t.Fatalf("5000 connections in 20000 files: %q, %v, %d", note, err, s.MaxConnections)
	}
	_, err = s.FitOpenFileLimit(8000)
	if err == nil || !strings.Contains(err.Error(), path+":3: max_connections = 5000 needs 10064 open files") || !strings.Contains(err.Error(), "the open-file limit is 8000") {
		t.Fatalf("too low a limit: %v", err)
	}

	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n"), 0o644)
	if s, err = Load(path, true); err != nil {
		t.Fatal(err)
	}
	note, err := s.FitOpenFileLimit(1024)
	if err != nil || s.MaxConnections != (1024-fdReserve)/2 || !strings.Contains(note, "using 480") {
		t.Fatalf("default in 1024 files: %q, %v, %d", note, err, s.MaxConnections)
	}
	if _, err := s.FitOpenFileLimit(fdReserve + 1); err == nil {
		t.Fatal("a limit below the reserve was accepted")
	}
}
