//go:build linux

// Package servicemanager runs the real chatmail-edge binary in tests the way
// systemd runs its unit (Type=notify, NotifyAccess=all,
// FileDescriptorStoreMax=): it is the other end of $NOTIFY_SOCKET
// (sd_notify(3): READY, STATUS, STOPPING, MAINPID, BARRIER, FDSTORE and
// FDSTOREREMOVE), keeps the file descriptor store and passes it back at the
// next start (LISTEN_FDS, sd_listen_fds(3)), follows the main PID, and
// flags what systemd 252 would hold against the service: a STOPPING=1 from
// a process that is not the main one (systemd stops the unit), or a main
// process that exits while the unit should run. systemd itself cannot run
// here (it wants to be PID 1); the protocol spoken is the same.
package servicemanager

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Unit is what ExecStart= runs.
type Unit struct {
	Binary string
	Args   []string
	Stderr io.Writer // the journal; nil discards
	// NotifyAccessMain takes messages from the main process only
	// (NotifyAccess=main); the default is NotifyAccess=all.
	NotifyAccessMain bool
}

// Manager is one unit's service manager.
type Manager struct {
	t      testing.TB
	unit   Unit
	socket string
	conn   *net.UnixConn

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced at every event
	mainPID  int
	ready    map[int]bool // PIDs that sent READY=1
	status   string
	stopping bool // a stop was asked for
	store    map[string]*os.File
	exited   map[int]error // PIDs seen to exit, with how
	watched  map[int]bool
	problems []string
}

// New starts the manager's notify socket in a folder of the test.
func New(t testing.TB, unit Unit) *Manager {
	t.Helper()
	m := &Manager{
		t: t, unit: unit, socket: filepath.Join(t.TempDir(), "notify"),
		changed: make(chan struct{}), ready: map[int]bool{}, store: map[string]*os.File{},
		exited: map[int]error{}, watched: map[int]bool{},
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: m.socket, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	// SO_PASSCRED: every message says which process sent it, as systemd
	// needs to tell the main process from others.
	raw, err := conn.SyscallConn()
	if err == nil {
		raw.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	}
	if err != nil {
		t.Fatal(err)
	}
	m.conn = conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.receive()
	}()
	t.Cleanup(func() {
		m.killAll()
		conn.Close()
		<-done
		m.mu.Lock()
		for name, f := range m.store {
			f.Close()
			delete(m.store, name)
		}
		m.mu.Unlock()
	})
	return m
}

// Socket is $NOTIFY_SOCKET.
func (m *Manager) Socket() string { return m.socket }

// broadcast wakes the waiters; m.mu is held.
func (m *Manager) broadcast() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// waitFor waits until cond (called with m.mu held) holds.
func (m *Manager) waitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	m.mu.Lock()
	for !cond() {
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			m.mu.Lock()
			defer m.mu.Unlock()
			return fmt.Errorf("%s: not within %v (main pid %d, status %q)", what, timeout, m.mainPID, m.status)
		}
		m.mu.Lock()
	}
	m.mu.Unlock()
	return nil
}

func (m *Manager) receive() {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(16*4)+unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := m.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var fds []int
		sender := 0
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, cm := range msgs {
			if rights, err := unix.ParseUnixRights(&cm); err == nil {
				fds = append(fds, rights...)
			} else if cred, err := unix.ParseUnixCredentials(&cm); err == nil {
				sender = int(cred.Pid)
			}
		}
		m.handle(sender, strings.Split(strings.TrimSpace(string(buf[:n])), "\n"), fds)
	}
}

// handle acts on one message as systemd 252 does (src/core/service.c,
// service_notify_message) for NotifyAccess=all, or main.
func (m *Manager) handle(sender int, lines []string, fds []int) {
	vars := map[string]string{}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, "=")
		vars[k] = v
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	defer m.broadcast()
	if m.unit.NotifyAccessMain && sender != m.mainPID {
		// "Got notification message from PID ..., but reception only
		// permitted for main PID ..."
		closeAll(fds)
		return
	}
	if pid, err := strconv.Atoi(vars["MAINPID"]); err == nil && pid != m.mainPID {
		m.mainPID = pid
		m.watchLocked(pid)
	}
	if vars["READY"] == "1" {
		m.ready[sender] = true
	}
	if s, ok := vars["STATUS"]; ok {
		m.status = s
	}
	if vars["STOPPING"] == "1" && sender != m.mainPID && !m.stopping {
		m.problems = append(m.problems, fmt.Sprintf("STOPPING=1 from pid %d, not the main process %d: systemd would stop the unit", sender, m.mainPID))
	}
	switch {
	case vars["BARRIER"] == "1":
		for _, fd := range fds {
			unix.Close(fd) // all earlier messages are handled: release the waiter
		}
	case vars["FDSTOREREMOVE"] == "1":
		if f, ok := m.store[vars["FDNAME"]]; ok {
			f.Close()
			delete(m.store, vars["FDNAME"])
		}
		closeAll(fds)
	case vars["FDSTORE"] == "1" && len(fds) == 1:
		name := vars["FDNAME"]
		if old, ok := m.store[name]; ok {
			old.Close()
		}
		m.store[name] = os.NewFile(uintptr(fds[0]), "fdstore:"+name)
	default:
		closeAll(fds)
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// watchLocked notes when pid exits, also when it is not a child of this
// process (an upgrade's new process is the old one's child): a pidfd turns
// readable then.
func (m *Manager) watchLocked(pid int) {
	if m.watched[pid] {
		return
	}
	m.watched[pid] = true
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		m.exited[pid] = fmt.Errorf("gone before it was watched: %w", err)
		return
	}
	go func() {
		defer unix.Close(pidfd)
		for {
			_, err := unix.Poll([]unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}, -1)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		m.noteExit(pid, nil)
	}()
}

// noteExit records pid's end (how, if known: a child's exit status).
func (m *Manager) noteExit(pid int, how error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if prev, seen := m.exited[pid]; seen && (prev != nil || how == nil) {
		return
	}
	m.exited[pid] = how
	if pid == m.mainPID && !m.stopping {
		m.problems = append(m.problems, fmt.Sprintf("main process %d exited (%v) while the unit should run", pid, how))
	}
	m.broadcast()
}

// Start starts the unit as systemd does: the fd store's sockets as
// LISTEN_FDS (with LISTEN_PID set to the process, as systemd does between
// fork and exec: here by a shell that execs the binary), $NOTIFY_SOCKET,
// and waits for READY=1 from the main process.
func (m *Manager) Start(timeout time.Duration) (pid int, err error) {
	m.mu.Lock()
	var names []string
	var files []*os.File
	for name, f := range m.store {
		names = append(names, name)
		files = append(files, f)
	}
	m.stopping = false
	m.mu.Unlock()
	args := append([]string{"-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, m.unit.Binary}, m.unit.Args...)
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+m.socket,
		"LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	cmd.ExtraFiles = files
	// The journal is a pipe of its own: os/exec's Wait would wait for the
	// copy of a pipe it made, which an upgrade's new process holds open.
	journal, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		journal.Close()
		return 0, err
	}
	out := m.unit.Stderr
	if out == nil {
		out = io.Discard
	}
	go func() {
		io.Copy(out, journal)
		journal.Close()
	}()
	pid = cmd.Process.Pid
	m.mu.Lock()
	m.mainPID = pid
	m.watched[pid] = true
	m.mu.Unlock()
	go func() { m.noteExit(pid, cmd.Wait()) }()
	err = m.waitFor(timeout, "READY=1 from the started process", func() bool {
		_, gone := m.exited[pid]
		return m.ready[pid] || gone
	})
	if err == nil && !m.Ready(pid) {
		err = fmt.Errorf("process %d exited before it was ready: %v", pid, m.ExitError(pid))
	}
	return pid, err
}

// Stop sends SIGTERM to every process of the unit (KillMode=control-group)
// and waits until they have all exited.
func (m *Manager) Stop(timeout time.Duration) error {
	return m.signalAll(syscall.SIGTERM, timeout)
}

// signalAll sends sig to every process of the unit that runs and waits
// until they have exited.
func (m *Manager) signalAll(sig syscall.Signal, timeout time.Duration) error {
	m.mu.Lock()
	m.stopping = true
	var alive []int
	for pid := range m.watched {
		if _, gone := m.exited[pid]; !gone {
			alive = append(alive, pid)
		}
	}
	m.mu.Unlock()
	for _, pid := range alive {
		syscall.Kill(pid, sig)
	}
	return m.waitFor(timeout, "every process of the unit to exit", func() bool {
		for _, pid := range alive {
			if _, gone := m.exited[pid]; !gone {
				return false
			}
		}
		return true
	})
}

// Restart is `systemctl restart`: stop, then start with the fd store kept
// (systemd 252 keeps it while the restart job runs).
func (m *Manager) Restart(stopTimeout, startTimeout time.Duration) (int, error) {
	if err := m.Stop(stopTimeout); err != nil {
		return 0, err
	}
	return m.Start(startTimeout)
}

// WaitNewMain waits until a process other than old is the main process and
// has sent READY=1 (with NotifyAccessMain its READY=1 came before it was
// the main one and was dropped), and returns it.
func (m *Manager) WaitNewMain(old int, timeout time.Duration) (int, error) {
	var pid int
	err := m.waitFor(timeout, "a new main process", func() bool {
		pid = m.mainPID
		return pid != old && (m.ready[pid] || m.unit.NotifyAccessMain)
	})
	return pid, err
}

// WaitExit waits until pid has exited.
func (m *Manager) WaitExit(pid int, timeout time.Duration) error {
	m.mu.Lock()
	m.watchLocked(pid)
	m.mu.Unlock()
	return m.waitFor(timeout, fmt.Sprintf("process %d to exit", pid), func() bool {
		_, gone := m.exited[pid]
		return gone
	})
}

// Exited says whether pid has exited.
func (m *Manager) Exited(pid int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, gone := m.exited[pid]
	return gone
}

// ExitError is how pid ended, when it was a child of the manager.
func (m *Manager) ExitError(pid int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exited[pid]
}

// MainPID is the unit's main process.
func (m *Manager) MainPID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mainPID
}

// Ready says whether pid sent READY=1.
func (m *Manager) Ready(pid int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ready[pid]
}

// Status is the last STATUS= line.
func (m *Manager) Status() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

// Stored lists the names in the fd store.
func (m *Manager) Stored() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for name := range m.store {
		names = append(names, name)
	}
	return names
}

// Addr is the address of the socket stored under name, for a test that
// let the service bind port 0; it waits until one is stored.
func (m *Manager) Addr(name string, timeout time.Duration) (string, error) {
	var f *os.File
	if err := m.waitFor(timeout, "socket "+name+" in the fd store", func() bool {
		f = m.store[name]
		return f != nil
	}); err != nil {
		return "", err
	}
	sa, err := unix.Getsockname(int(f.Fd()))
	if err != nil {
		return "", err
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port)), nil
	}
	return "", fmt.Errorf("socket %s is not TCP: %T", name, sa)
}

// Problems are what systemd would have held against the service.
func (m *Manager) Problems() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.problems...)
}

// killAll ends every process of the unit still running, at the test's end.
func (m *Manager) killAll() {
	if err := m.signalAll(syscall.SIGKILL, 30*time.Second); err != nil {
		m.t.Errorf("servicemanager: %v", err)
	}
}

// Build compiles the chatmail-edge binary (the module's main package) into
// dir and returns its path.
func Build(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "chatmail-edge")
	out, err := exec.Command("go", "build", "-o", bin, "chatmail-edge").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// Replace puts the file src in place of the binary at path as a package
// manager does: a new file renamed over the old one, which running
// processes keep (writing into a running binary fails: ETXTBSY).
func Replace(t testing.TB, path, src string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
