package service

import (
	"os"
	"path/filepath"
	"testing"

	"chatmail-edge/config"
)

// TestPerAddressKeysReachTheEdge: the [edge] per-address keys become the
// edge's source limits; exempt_networks = (empty) exempts nothing.
func TestPerAddressKeysReachTheEdge(t *testing.T) {
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\nhello_timeout = 2s\nmax_connections_per_address = 7\nmax_handshakes_per_address = 3\nnew_connections_per_address = 9\nexempt_networks = 10.1.0.0/16 2001:db8::1\n"), 0o644)
	s, err := config.Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	l := edgeLimitsFrom(s)
	if l.HelloTimeout.Seconds() != 2 || l.Sources.MaxConnections != 7 || l.Sources.MaxHandshakes != 3 || l.Sources.NewPerSecond != 9 {
		t.Fatalf("limits %+v", l)
	}
	if len(l.Sources.Exempt) != 2 || l.Sources.Exempt[0].String() != "10.1.0.0/16" || l.Sources.Exempt[1].String() != "2001:db8::1/128" {
		t.Fatalf("exempt %v", l.Sources.Exempt)
	}
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\nexempt_networks =\n"), 0o644)
	if s, err = config.Load(path, true); err != nil {
		t.Fatal(err)
	}
	if ex := edgeLimitsFrom(s).Sources.Exempt; ex == nil || len(ex) != 0 {
		t.Fatalf("empty exempt_networks gave %v, want an empty, non-nil list", ex)
	}
}
