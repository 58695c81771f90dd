package main

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// notifyListener is systemd's end of $NOTIFY_SOCKET: it yields every
// datagram received.
func notifyListener(t *testing.T, name string) <-chan string {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 100)
	go func() {
		defer close(got)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { c.Close() })
	return got
}

// nextNotice returns the next datagram; the deadline only turns a hang
// into a failure.
func nextNotice(t *testing.T, got <-chan string) string {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("no sd_notify message")
		return ""
	}
}

func TestNotifier(t *testing.T) {
	for _, socket := range []string{
		filepath.Join(t.TempDir(), "notify"),
		"@chatmail-edge-test-" + strconv.FormatInt(time.Now().UnixNano(), 36),
	} {
		got := notifyListener(t, socket)
		n := newNotifier(func(string) string { return socket })
		if err := n.send(append(reloading(), status("reloading\nconfig"))...); err != nil {
			t.Fatal(err)
		}
		msg := nextNotice(t, got)
		lines := strings.Split(strings.TrimSuffix(msg, "\n"), "\n")
		if len(lines) != 3 || lines[0] != "RELOADING=1" || lines[2] != "STATUS=reloading config" {
			t.Fatalf("%s: message %q", socket, msg)
		}
		usec, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
		if err != nil || usec == 0 {
			t.Fatalf("%s: %q is not MONOTONIC_USEC", socket, lines[1])
		}
	}
	// Not under systemd: nothing to do, no error.
	for _, env := range []string{"", "relative/path"} {
		if err := newNotifier(func(string) string { return env }).send("READY=1"); err != nil {
			t.Fatalf("NOTIFY_SOCKET=%q: %v", env, err)
		}
	}
	// A socket that is gone is an error the caller can log.
	gone := newNotifier(func(string) string { return filepath.Join(t.TempDir(), "gone") })
	if err := gone.send("READY=1"); err == nil {
		t.Fatal("no error for a missing socket")
	}
}
