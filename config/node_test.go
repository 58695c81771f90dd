package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"chatmail-edge/mail"
)

// loadEdgeINI loads the edge's file text on a chatmail.ini for
// chat.example, and returns the settings and the file's path.
func loadEdgeINI(t *testing.T, text string) (*Settings, string, error) {
	t.Helper()
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n"+text), 0o644)
	s, err := Load(path, true)
	return s, path, err
}

// TestNodeSettings: [node] relay makes a node, with the relay's ports by
// the connect mode, the mail ports to listen on and no certificate
// export, unless the file says otherwise.
func TestNodeSettings(t *testing.T) {
	relay, _, err := loadEdgeINI(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if relay.IsNode() || relay.IMAPS != "" || relay.Certs.ExportCert == "" || len(relay.Certs.Reload) == 0 {
		t.Fatalf("without [node] relay: node %v, imaps %q, export %q, reload %q", relay.IsNode(), relay.IMAPS, relay.Certs.ExportCert, relay.Certs.Reload)
	}

	tests := []struct {
		text                                string
		imap, smtp, https, imaps, smtps, ex string
	}{
		{"[node]\nrelay = Relay.Example.NET.\n", "relay.example.net:993", "relay.example.net:465", "relay.example.net:443", ":993", ":465", ""},
		{"[node]\nrelay = 192.0.2.7\nconnect = proxy\n", "192.0.2.7:11993", "192.0.2.7:11465", "192.0.2.7:443", ":993", ":465", ""},
		{"[node]\nrelay = 2001:db8::7\nconnect = proxy\nimap_port = 994\nsmtp_port = 466\nhttps_port = 8443\n", "[2001:db8::7]:994", "[2001:db8::7]:466", "[2001:db8::7]:8443", ":993", ":465", ""},
		{"imaps = 127.0.0.1:10993\nsmtps =\n[node]\nrelay = relay.example.net\n[acme]\nexport_cert = /tmp/x/fullchain\n", "relay.example.net:993", "relay.example.net:465", "relay.example.net:443", "127.0.0.1:10993", "", "/tmp/x/fullchain"},
	}
	for _, tt := range tests {
		s, _, err := loadEdgeINI(t, tt.text)
		if err != nil {
			t.Fatalf("%q: %v", tt.text, err)
		}
		n := s.Node
		if !s.IsNode() || n.RelayIMAP() != tt.imap || n.RelaySMTP() != tt.smtp || n.RelayHTTPS() != tt.https {
			t.Errorf("%q: node %v, relay %s %s %s", tt.text, s.IsNode(), n.RelayIMAP(), n.RelaySMTP(), n.RelayHTTPS())
		}
		if s.IMAPS != tt.imaps || s.SMTPS != tt.smtps || s.Certs.ExportCert != tt.ex || s.Certs.ExportKey != "" || s.Certs.Reload != nil {
			t.Errorf("%q: imaps %q smtps %q export %q %q reload %q", tt.text, s.IMAPS, s.SMTPS, s.Certs.ExportCert, s.Certs.ExportKey, s.Certs.Reload)
		}
	}

	bad := []struct{ text, want string }{
		{"[node]\nrelay = relay.example.net:993\n", ":4: relay: want a host name or an IP address without a port"},
		{"[node]\nrelay = https://relay.example.net\n", ":4: relay: want a host name or an IP address"},
		{"[node]\nrelay = -relay.example.net\n", ":4: relay: want a host name"},
		{"[node]\nconnect = haproxy\n", ":4: connect: want tls or proxy"},
		{"[node]\nimap_port = 0\n", ":4: imap_port: want a whole number from 1 to 65535"},
		{"[node]\nsmtp_port = 65536\n", ":4: smtp_port: want a whole number from 1 to 65535"},
		{"[node]\nhttps_port = 44x\n", ":4: https_port: want a whole number from 1 to 65535"},
		{"[node]\nname = " + strings.Repeat("n", 65) + "\n", ":4: name: want at most 64 printable characters"},
		{"[node]\nrelay = CHAT.example\n", ":4: relay = chat.example is the mail domain"},
	}
	for _, b := range bad {
		_, path, err := loadEdgeINI(t, b.text)
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), path+b.want) {
			t.Errorf("%q: %v, want a configuration error with %q", b.text, err, path+b.want)
		}
	}
}

// TestNodeRestart: becoming a node or a relay needs a restart; another
// relay or port a reload applies.
func TestNodeRestart(t *testing.T) {
	load := func(text string) Restart {
		s, _, err := loadEdgeINI(t, text)
		if err != nil {
			t.Fatal(err)
		}
		s.StateDir = "" // differs by temporary folder only
		return s.Restart()
	}
	// imaps and smtps change with it: a node listens on them by default.
	if got := load("").Changed(load("[node]\nrelay = relay.example.net\n")); !slices.Contains(got, "[node] relay (set or empty)") {
		t.Errorf("relay to node: %q", got)
	}
	if got := load("[node]\nrelay = a.example.net\n").Changed(load("[node]\nrelay = b.example.net\nconnect = proxy\nname = n2\n")); len(got) != 0 {
		t.Errorf("another relay: %q need a restart", got)
	}
}

// TestNodePortsAreTheDropIns: connect = proxy goes where the relay's
// drop-ins for nodes listen.
func TestNodePortsAreTheDropIns(t *testing.T) {
	if NodeProxyIMAPPort != mail.NodeIMAPPort || NodeProxySMTPPort != mail.NodeSMTPPort ||
		!strings.Contains(mail.DovecotNodeDropIn, "port = 11993\n") || !strings.HasPrefix(strings.SplitN(mail.PostfixNodeService(mail.DefaultMaxSMTPConnections), "\n", 4)[3], "11465 ") {
		t.Errorf("[node] proxy ports %d, %d; the drop-ins' %d, %d", NodeProxyIMAPPort, NodeProxySMTPPort, mail.NodeIMAPPort, mail.NodeSMTPPort)
	}
}
