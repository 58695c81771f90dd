package servicemanager

import (
	"net"
	"testing"
	"time"
)

// NotifyListener is systemd's end of $NOTIFY_SOCKET: it yields every
// datagram received.
func NotifyListener(t testing.TB, name string) <-chan string {
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

// NextNotice returns the next datagram; the deadline only turns a hang
// into a failure.
func NextNotice(t testing.TB, got <-chan string) string {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("no sd_notify message")
		return ""
	}
}
