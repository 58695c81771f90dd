package main

import (
	"fmt"
	"net"
	"strings"
)

// notifier sends service state to systemd (sd_notify(3)): the unit is
// Type=notify, so systemd waits for READY=1 before it calls the start
// done, and RELOADING=1 ... READY=1 brackets a reload (systemd.service(5),
// Type=notify-reload, systemd 253 and later). Without NOTIFY_SOCKET (not
// started by systemd) every call does nothing.
type notifier struct {
	addr *net.UnixAddr // nil: no socket
}

// newNotifier reads $NOTIFY_SOCKET: a path, or an abstract socket written
// with a leading '@' (which Go's net package maps to the leading NUL).
func newNotifier(getenv func(string) string) notifier {
	socket := getenv("NOTIFY_SOCKET")
	if socket == "" || (socket[0] != '/' && socket[0] != '@') {
		return notifier{}
	}
	return notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}
}

// send writes one datagram of newline-separated VAR=value assignments.
func (n notifier) send(assignments ...string) error {
	if n.addr == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: connect to %s: %w", n.addr.Name, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(assignments, "\n") + "\n")); err != nil {
		return fmt.Errorf("sd_notify: send to %s: %w", n.addr.Name, err)
	}
	return nil
}

// status is a STATUS= assignment: one line, shown by `systemctl status`.
func status(format string, args ...any) string {
	return "STATUS=" + strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
}

// reloading starts a reload. MONOTONIC_USEC is required with RELOADING=1
// (sd_notify(3)): systemd uses it to tell this reload from an earlier one.
func reloading() []string {
	out := []string{"RELOADING=1"}
	if usec, ok := monotonicUsec(); ok {
		out = append(out, fmt.Sprintf("MONOTONIC_USEC=%d", usec))
	}
	return out
}
