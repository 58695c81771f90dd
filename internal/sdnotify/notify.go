// Package sdnotify tells systemd about the service's state (sd_notify(3)).
package sdnotify

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Notifier sends service state to systemd (sd_notify(3)): the unit is
// Type=notify, so systemd waits for READY=1 before it calls the start
// done, and RELOADING=1 ... READY=1 brackets a reload (systemd.service(5),
// Type=notify-reload, systemd 253 and later). Without NOTIFY_SOCKET (not
// started by systemd) every call does nothing.
type Notifier struct {
	addr *net.UnixAddr // nil: no socket
}

// New reads $NOTIFY_SOCKET: a path, or an abstract socket written
// with a leading '@' (which Go's net package maps to the leading NUL).
func New(getenv func(string) string) Notifier {
	socket := getenv("NOTIFY_SOCKET")
	if socket == "" || (socket[0] != '/' && socket[0] != '@') {
		return Notifier{}
	}
	return Notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}
}

// Send writes one datagram of newline-separated VAR=value assignments.
func (n Notifier) Send(assignments ...string) error {
	return n.SendFDs(nil, assignments...)
}

// SendFDs is Send with file descriptors attached (SCM_RIGHTS), as FDSTORE=1
// and BARRIER=1 want them; systemd gets its own duplicates. It uses a
// socket of its own per message (as sd_notify(3) does): Go's connected
// datagram sockets cannot carry descriptors.
func (n Notifier) SendFDs(fds []int, assignments ...string) error {
	if n.addr == nil {
		return nil
	}
	// Close-on-exec before an upgrade's fork can see it (SOCK_CLOEXEC is
	// not everywhere).
	syscall.ForkLock.RLock()
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err == nil {
		unix.CloseOnExec(sock)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return fmt.Errorf("sd_notify: socket: %w", err)
	}
	defer unix.Close(sock)
	var rights []byte
	if len(fds) > 0 {
		rights = unix.UnixRights(fds...)
	}
	to := &unix.SockaddrUnix{Name: n.addr.Name} // a leading '@' is the abstract namespace
	if err := unix.Sendmsg(sock, []byte(strings.Join(assignments, "\n")+"\n"), rights, to, 0); err != nil {
		return fmt.Errorf("sd_notify: send to %s: %w", n.addr.Name, err)
	}
	return nil
}

// Barrier waits until systemd has handled every message sent before it
// (BARRIER=1, sd_notify_barrier(3), systemd 246 and later): systemd closes
// the pipe end it was sent. An upgraded process uses it to be sure systemd
// knows it as the main process before the old one may exit.
func (n Notifier) Barrier(timeout time.Duration) error {
	if n.addr == nil {
		return nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("sd_notify barrier: %w", err)
	}
	defer r.Close()
	err = n.SendFDs([]int{int(w.Fd())}, "BARRIER=1")
	w.Close()
	if err != nil {
		return err
	}
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("sd_notify barrier: %w", err)
	}
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		return fmt.Errorf("sd_notify barrier: no answer within %v: %v", timeout, err)
	}
	return nil
}

// Status is a STATUS= assignment: one line, shown by `systemctl status`.
func Status(format string, args ...any) string {
	return "STATUS=" + strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
}

// Reloading starts a reload. MONOTONIC_USEC is required with RELOADING=1
// (sd_notify(3)): systemd uses it to tell this reload from an earlier one.
func Reloading() []string {
	out := []string{"RELOADING=1"}
	if usec, ok := monotonicUsec(); ok {
		out = append(out, fmt.Sprintf("MONOTONIC_USEC=%d", usec))
	}
	return out
}

// Enabled reports whether there is a service manager to tell.
func (n Notifier) Enabled() bool { return n.addr != nil }
