package service

import (
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/systemd"
)

// A socket kept by systemd is taken back only for the address it was bound
// to; a changed listen address gets a new socket.
func TestSameListenAddress(t *testing.T) {
	v4 := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip).To4(), Port: port} }
	v6 := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	for _, c := range []struct {
		addr  string
		bound net.Addr
		same  bool
	}{
		{":443", v6("::", 443), true},
		{":443", v4("0.0.0.0", 443), false}, // disable_ipv6 was set or unset
		{"0.0.0.0:443", v4("0.0.0.0", 443), true},
		{"0.0.0.0:443", v6("::", 443), false},
		{":443", v6("::", 8443), false},
		{"127.0.0.1:993", v4("127.0.0.1", 993), true},
		{"127.0.0.1:993", v4("127.0.0.2", 993), false},
		{"[::1]:8081", v6("::1", 8081), true},
		{"localhost:8081", v4("127.0.0.1", 8081), true},
		{"127.0.0.1:0", v4("127.0.0.1", 40123), true}, // tests: whatever port it got
		{"bad", v4("127.0.0.1", 1), false},
		{"127.0.0.1:1", &net.UnixAddr{Name: "/x", Net: "unix"}, false},
	} {
		if got := sameListenAddress(c.addr, c.bound); got != c.same {
			t.Errorf("sameListenAddress(%q, %v) = %v, want %v", c.addr, c.bound, got, c.same)
		}
	}
}

// Descriptors passed to another process (LISTEN_PID is not this one: an
// upgrade's child inherits the variables) are not taken.
func TestListenFDsForAnotherProcess(t *testing.T) {
	env := map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "https:imaps:smtps"}
	kept, err := listenFDs(func(k string) string { return env[k] })
	if err != nil || len(kept) != 0 {
		t.Fatalf("kept %v, %v", kept, err)
	}
}

// A stop drains for up to drain_timeout, and systemd must not kill the
// edge before: the unit's TimeoutStopSec stays above the default.
func TestUnitStopTimeoutCoversTheDrain(t *testing.T) {
	units, err := systemd.Units(systemd.Params{Binary: "/usr/local/bin/chatmail-edge", Config: config.DefaultFile})
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`\nTimeoutStopSec=(\d+)s\n`).FindSubmatch(units[0].Data)
	if m == nil {
		t.Fatal("the unit sets no TimeoutStopSec in seconds")
	}
	secs, _ := strconv.Atoi(string(m[1]))
	v, _ := config.Default("edge", "drain_timeout")
	def, err := time.ParseDuration(v)
	if err != nil || def == 0 {
		t.Fatalf("no default drain_timeout: %q, %v", v, err)
	}
	if stop := time.Duration(secs) * time.Second; stop < def+httpGrace+10*time.Second {
		t.Errorf("TimeoutStopSec=%v leaves no room after drain_timeout %v and %v for HTTP", stop, def, httpGrace)
	}
}
