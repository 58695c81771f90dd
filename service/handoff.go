package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"chatmail-edge/internal/sdnotify"

	"github.com/cloudflare/tableflip"
	"go.uber.org/zap"
)

// sockets are serve's listening sockets and what keeps them open when the
// process goes, so that neither an upgrade nor a restart refuses a
// connection:
//
//   - An upgrade (`chatmail-edge upgrade`, SIGUSR2) starts the binary again
//     as a child that inherits every listening socket (cloudflare/tableflip).
//     Once the child is ready the old process stops accepting and drains its
//     sessions; the child has meanwhile told systemd it is the main process.
//   - Across a restart (`systemctl restart`, or Restart= after a crash)
//     systemd holds the public sockets in its file descriptor store
//     (FDSTORE=1, systemd.service(5) FileDescriptorStoreMax=): connections
//     wait in the kernel's backlog until the next process takes the sockets
//     back from LISTEN_FDS (sd_listen_fds(3)). systemd 252 (Debian 12) keeps
//     the store while a job runs for the unit, so through a restart but not
//     through a stop followed by a start.
type sockets struct {
	log    *zap.Logger
	notify sdnotify.Notifier
	upg    *tableflip.Upgrader // nil: this process cannot be upgraded
	// pidFile is where a ready process writes its PID (tableflip): the
	// replaced one learns its successor's there.
	pidFile string

	kept   map[string]*os.File         // passed by systemd, by name; taken ones are removed
	served map[string]*net.TCPListener // what this process listens on, by name, for the fd store
	unkept []string                    // names in the fd store that this process does not use
}

// UpgradeTimeout bounds an upgrade's new process from its start to ready; a
// slower one is killed and the old process goes on serving. It matches the
// unit's TimeoutStartSec: a start in acme mode may wait for the CA.
const UpgradeTimeout = 5 * time.Minute

// barrierTimeout bounds the wait for systemd to take in the new main PID.
const barrierTimeout = 10 * time.Second

// newSockets prepares the process's sockets. A pidFile makes it able to
// hand them to a new process, which writes its PID there before it reports
// ready (only one per process can: tableflip's Upgrader is process-wide);
// "" cannot.
func newSockets(log *zap.Logger, notify sdnotify.Notifier, getenv func(string) string, pidFile string) (*sockets, error) {
	s := &sockets{log: log, notify: notify, served: map[string]*net.TCPListener{}, pidFile: pidFile}
	var err error
	if s.kept, err = listenFDs(getenv); err != nil {
		return nil, err
	}
	if pidFile != "" {
		s.upg, err = tableflip.New(tableflip.Options{
			UpgradeTimeout: UpgradeTimeout,
			PIDFile:        pidFile,
			ListenConfig:   &net.ListenConfig{KeepAlive: -1},
		})
		if err != nil {
			s.closeKept()
			return nil, fmt.Errorf("prepare for upgrades: %w", err)
		}
	}
	return s, nil
}

// upgraded says whether this process replaces another one.
func (s *sockets) upgraded() bool { return s.upg != nil && s.upg.HasParent() }

// listenTCP returns the listening socket of the listener name on addr: the
// one the process this one replaces served, else the one systemd kept,
// else a new one.
func (s *sockets) listenTCP(name, addr string) (*net.TCPListener, error) {
	key := name + "=" + addr // tableflip's name for it: a changed address is a new socket
	var ln net.Listener
	var err error
	inherited := false
	if s.upg != nil {
		if ln, err = s.upg.Fds.Listener("tcp", key); err != nil {
			return nil, fmt.Errorf("listen %s on %s: take the socket of the replaced process: %w", name, addr, err)
		}
		inherited = ln != nil
	}
	if ln == nil {
		ln = s.takeKept(name, addr)
	}
	if ln == nil {
		// No keepalive on accepted connections, as the edge's own listen.
		lc := net.ListenConfig{KeepAlive: -1}
		if ln, err = lc.Listen(context.Background(), "tcp", addr); err != nil {
			return nil, fmt.Errorf("listen %s on %s: %w", name, addr, err)
		}
	}
	tcp, ok := ln.(*net.TCPListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("listen %s on %s: the inherited socket is a %T, not TCP", name, addr, ln)
	}
	if s.upg != nil && !inherited { // an inherited one is passed on as it is
		if err := s.upg.Fds.AddListener("tcp", key, tcp); err != nil {
			tcp.Close()
			return nil, fmt.Errorf("listen %s on %s: %w", name, addr, err)
		}
	}
	s.served[name] = tcp
	return tcp, nil
}

// takeKept returns the socket systemd kept for name if it still listens on
// addr. One for another address is given back: the listen address changed.
func (s *sockets) takeKept(name, addr string) net.Listener {
	f, ok := s.kept[name]
	if !ok {
		return nil
	}
	delete(s.kept, name)
	defer f.Close() // FileListener made a duplicate
	ln, err := net.FileListener(f)
	if err != nil {
		s.log.Warn("unusable socket from systemd's fd store, listening anew", zap.String("listener", name), zap.Error(err))
		s.unkept = append(s.unkept, name)
		return nil
	}
	if !sameListenAddress(addr, ln.Addr()) {
		s.log.Info("the listen address changed since systemd stored the socket, listening anew",
			zap.String("listener", name), zap.String("stored", ln.Addr().String()), zap.String("address", addr))
		ln.Close()
		s.unkept = append(s.unkept, name)
		return nil
	}
	return ln
}

// sameListenAddress says whether bound, a listening socket's address, is
// what listening on addr gives: the same port (any for port 0) and the same
// IP, where ":443" is the IPv6 wildcard (dual stack) and "0.0.0.0:443" the
// IPv4 one.
func sameListenAddress(addr string, bound net.Addr) bool {
	b, ok := bound.(*net.TCPAddr)
	if !ok {
		return false
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if p, err := strconv.Atoi(port); err != nil || (p != 0 && p != b.Port) {
		return false
	}
	if host == "" {
		return b.IP.Equal(net.IPv6unspecified)
	}
	ips := []net.IP{net.ParseIP(host)}
	if ips[0] == nil { // a name, such as localhost
		ips, _ = net.DefaultResolver.LookupIP(context.Background(), "ip", host)
	}
	for _, ip := range ips {
		if ip.Equal(b.IP) && (ip.To4() == nil) == (b.IP.To4() == nil) {
			return true
		}
	}
	return false
}

// listenUnix returns the control socket at path: the replaced process's, or
// a new one (a file left by a process that died is removed first), 0600.
func (s *sockets) listenUnix(path string) (net.Listener, error) {
	listen := func(network, addr string) (net.Listener, error) {
		if fi, err := os.Lstat(addr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(addr)
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(addr, 0o600); err != nil {
			ln.Close()
			return nil, err
		}
		return ln, nil
	}
	if s.upg == nil {
		return listen("unix", path)
	}
	ln, err := s.upg.Fds.ListenWithCallback("unix", path, listen)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}

// ready tells systemd that this process serves, as its main process when it
// replaces another, then tells the replaced process (which then drains), and
// puts the public sockets in systemd's fd store for the next restart.
func (s *sockets) ready(status string) {
	msg := []string{"READY=1", status}
	if s.upgraded() {
		// NotifyAccess=all lets this child of the main process say so.
		msg = append(msg, "MAINPID="+strconv.Itoa(os.Getpid()))
	}
	if err := s.notify.Send(msg...); err != nil {
		s.log.Warn("cannot notify systemd", zap.Error(err))
	}
	if s.upgraded() {
		if err := s.notify.Barrier(barrierTimeout); err != nil {
			s.log.Warn("systemd may not know the new main process yet", zap.Error(err))
		}
	}
	if s.upg != nil {
		if err := s.upg.Ready(); err != nil {
			s.log.Error("cannot tell the replaced process that this one is ready; it goes on serving", zap.Error(err))
		}
	}
	s.store()
}

// store puts the served sockets in systemd's fd store under their names,
// replacing what it held under those names, and drops the names no longer
// served. A store systemd does not offer (no FileDescriptorStoreMax=) only
// costs a line in its journal.
func (s *sockets) store() {
	if !s.notify.Enabled() {
		return
	}
	for name := range s.kept { // passed but not asked for: listener removed from the config
		s.unkept = append(s.unkept, name)
	}
	s.closeKept()
	for _, name := range s.unkept {
		s.storeRemove(name)
	}
	s.unkept = nil
	for name, ln := range s.served {
		s.storeRemove(name)
		raw, err := ln.SyscallConn()
		if err == nil {
			cerr := raw.Control(func(fd uintptr) {
				err = s.notify.SendFDs([]int{int(fd)}, "FDSTORE=1", "FDNAME="+name)
			})
			err = errors.Join(err, cerr)
		}
		if err != nil {
			s.log.Warn("cannot store the socket with systemd; a restart refuses connections until the edge listens again",
				zap.String("listener", name), zap.Error(err))
		}
	}
}

// handOverMainPID tells systemd that the process in the PID file is the
// main one now, waits until systemd has taken it in, and returns it.
func (s *sockets) handOverMainPID() int {
	data, err := os.ReadFile(s.pidFile)
	pid := 0
	if err == nil {
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	if err != nil || pid <= 0 || pid == os.Getpid() {
		s.log.Warn("the new process's PID is unknown; systemd learns it from the new process only", zap.String("pid_file", s.pidFile), zap.Error(err))
		return 0
	}
	if err := s.notify.Send("MAINPID=" + strconv.Itoa(pid)); err != nil {
		s.log.Warn("cannot notify systemd", zap.Error(err))
	} else if err := s.notify.Barrier(barrierTimeout); err != nil {
		s.log.Warn("systemd may not know the new main process yet", zap.Error(err))
	}
	return pid
}

func (s *sockets) storeRemove(name string) {
	if err := s.notify.Send("FDSTOREREMOVE=1", "FDNAME="+name); err != nil {
		s.log.Warn("cannot remove a socket from systemd's fd store", zap.String("listener", name), zap.Error(err))
	}
}

// upgrade starts the binary again with the sockets and waits until the new
// process is ready (nil) or failed: then this process goes on serving.
// Once it is ready this process, still the unit's main process, names it
// as the new one (MAINPID=): so that systemd follows it even when the unit
// allows notifications from the main process only (NotifyAccess=main, as
// before upgrades existed), which drops the new process's own MAINPID=.
// It returns the new process's PID (0 if unknown).
func (s *sockets) upgrade() (int, error) {
	if s.upg == nil {
		return 0, errors.New("this process cannot be upgraded")
	}
	err := s.upg.Upgrade()
	switch {
	case err == nil:
		return s.handOverMainPID(), nil
	// tableflip's words (its errors have no types) for what is not a
	// failure of the new process.
	case err.Error() == "parent hasn't exited":
		return 0, errors.New("the process this one replaced is still draining its sessions (up to [edge] drain_timeout); upgrade again once it has exited")
	case err.Error() == "upgrade in progress":
		return 0, errors.New("another upgrade is in progress")
	}
	return 0, fmt.Errorf("new process: %w (its own log lines say why)", err)
}

// stopUpgrades ends the sockets' use for upgrades, from any goroutine: an
// upgrade in progress is cancelled (its process killed), and, unless this
// process was replaced, the control socket file is removed.
func (s *sockets) stopUpgrades() {
	if s.upg != nil {
		s.upg.Stop()
	}
}

// close is stopUpgrades and closes what systemd passed and nobody took;
// after serve has returned.
func (s *sockets) close() {
	s.stopUpgrades()
	s.closeKept()
}

func (s *sockets) closeKept() {
	for name, f := range s.kept {
		f.Close()
		delete(s.kept, name)
	}
}

// sdListenFDsStart is the first descriptor systemd passes (sd_listen_fds(3)).
const sdListenFDsStart = 3

// listenFDs takes the descriptors systemd passed to this process: LISTEN_FDS
// of them from descriptor 3 on, named by LISTEN_FDNAMES, if LISTEN_PID is
// this process (a child started by an upgrade inherits the variables, not
// the descriptors).
func listenFDs(getenv func(string) string) (map[string]*os.File, error) {
	kept := map[string]*os.File{}
	if pid, err := strconv.Atoi(getenv("LISTEN_PID")); err != nil || pid != os.Getpid() {
		return kept, nil
	}
	n, err := strconv.Atoi(getenv("LISTEN_FDS"))
	if err != nil || n < 0 || n > maxListenFDs {
		return nil, fmt.Errorf("LISTEN_FDS=%q: want 0 to %d descriptors", getenv("LISTEN_FDS"), maxListenFDs)
	}
	names := strings.Split(getenv("LISTEN_FDNAMES"), ":")
	for i := range n {
		fd := sdListenFDsStart + i
		syscall.CloseOnExec(fd)
		name := ""
		if i < len(names) {
			name = names[i]
		}
		f := os.NewFile(uintptr(fd), "systemd:"+name)
		if _, dup := kept[name]; dup {
			f.Close()
			continue
		}
		kept[name] = f // one not asked for is dropped from the store at ready
	}
	return kept, nil
}

// maxListenFDs is far above the unit's FileDescriptorStoreMax.
const maxListenFDs = 64
