package config

import (
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
	// chatmail.ini's own number.
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\nmax_message_size = 99999999999999\n"), 0o644)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n"), 0o644)
	_, err := Load(path, true)
	if err == nil || !strings.Contains(err.Error(), chatmailINI+":3: max_message_size: want a number of bytes from 1 to 4294967296") {
		t.Errorf("huge max_message_size: %v", err)
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
