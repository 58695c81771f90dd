package sdnotify

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/servicemanager"
)

func TestNotifier(t *testing.T) {
	for _, socket := range []string{
		filepath.Join(t.TempDir(), "notify"),
		"@chatmail-edge-test-" + strconv.FormatInt(time.Now().UnixNano(), 36),
	} {
		got := servicemanager.NotifyListener(t, socket)
		n := New(func(string) string { return socket })
		if err := n.Send(append(Reloading(), Status("reloading\nconfig"))...); err != nil {
			t.Fatal(err)
		}
		msg := servicemanager.NextNotice(t, got)
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
		if err := New(func(string) string { return env }).Send("READY=1"); err != nil {
			t.Fatalf("NOTIFY_SOCKET=%q: %v", env, err)
		}
	}
	// A socket that is gone is an error the caller can log.
	gone := New(func(string) string { return filepath.Join(t.TempDir(), "gone") })
	if err := gone.Send("READY=1"); err == nil {
		t.Fatal("no error for a missing socket")
	}
}
