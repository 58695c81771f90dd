package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// daemon is a server process the tool starts and must stop again: in its
// own process group (so its workers and helpers go with it), killed by the
// kernel if the tool dies (Pdeathsig), and stopped by lab.close on every
// way out, Ctrl-C and failures included.
type daemon struct {
	Name    string
	Argv    []string
	LogFile string
	// Ports must accept connections before the daemon counts as started.
	Ports []string
	// CPUs, if set, pins the daemon with taskset (e.g. "0" or "0,1").
	CPUs string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

const stopGrace = 10 * time.Second

func (d *daemon) start(ctx context.Context) error {
	argv := d.Argv
	if d.CPUs != "" {
		argv = append([]string{"taskset", "-c", d.CPUs}, argv...)
	}
	logf, err := os.OpenFile(d.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: open log: %w", d.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s (%s): %w", d.Name, strings.Join(argv, " "), err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	d.mu.Lock()
	d.cmd, d.done = cmd, done
	d.mu.Unlock()

	for _, p := range d.Ports {
		waitCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-done:
				cancel()
			case <-waitCtx.Done():
			}
		}()
		err := waitListening(waitCtx, p, 30*time.Second)
		cancel()
		if err != nil {
			if isClosed(done) {
				err = fmt.Errorf("it exited: %s", d.logTail())
			}
			return fmt.Errorf("start %s: %w", d.Name, err)
		}
	}
	return nil
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// logTail is the end of the daemon's log, for error messages.
func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.LogFile)
	s := strings.TrimSpace(string(b))
	if len(s) > 1500 {
		s = "…" + s[len(s)-1500:]
	}
	return fmt.Sprintf("log %s: %s", d.LogFile, s)
}

// PID is the main process (nginx or Dovecot master, the edge), 0 when not
// running. taskset execs the daemon in place, so the PID is the same.
func (d *daemon) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || isClosed(d.done) {
		return 0
	}
	return d.cmd.Process.Pid
}

// roots is the daemon's process for a procGroup. A daemon that exited
// without being stopped is an error that says how it ended.
func (d *daemon) roots() ([]int, error) {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.mu.Unlock()
	switch {
	case cmd == nil:
		return nil, fmt.Errorf("%s is not running", d.Name)
	case isClosed(done):
		return nil, fmt.Errorf("%s exited unexpectedly (%v); %s", d.Name, cmd.ProcessState, d.logTail())
	}
	return []int{cmd.Process.Pid}, nil
}

// stop sends SIGTERM to the main process (it stops its workers and
// helpers), then, as systemd does, SIGTERM to whatever is left in the
// process group (a Dovecot helper may outlive its master), and SIGKILL to
// what is left after the grace time. It returns once the group is gone and
// the daemon's ports are closed, so that a new start cannot be fooled by a
// dying process that still holds a listening socket.
func (d *daemon) stop() error {
	d.mu.Lock()
	cmd, done := d.cmd, d.done
	d.cmd = nil
	d.mu.Unlock()
	if cmd == nil {
		return nil
	}
	pgid := cmd.Process.Pid
	var errs []error
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(stopGrace):
		errs = append(errs, fmt.Errorf("stop %s: still running %v after SIGTERM, killed", d.Name, stopGrace))
	}
	gone := func() bool { return len(groupMembers(pgid)) == 0 }
	if !gone() {
		syscall.Kill(-pgid, syscall.SIGTERM)
		if !pollUntil(gone, stopGrace) {
			syscall.Kill(-pgid, syscall.SIGKILL)
			if !pollUntil(gone, stopGrace) {
				errs = append(errs, fmt.Errorf("stop %s: processes %v survive SIGKILL", d.Name, groupMembers(pgid)))
			}
		}
	}
	<-done
	closed := func() bool {
		for _, p := range d.Ports {
			if c, err := net.DialTimeout("tcp", p, time.Second); err == nil {
				c.Close()
				return false
			}
		}
		return true
	}
	if !pollUntil(closed, stopGrace) {
		errs = append(errs, fmt.Errorf("stop %s: its ports %v still accept connections", d.Name, d.Ports))
	}
	return errors.Join(errs...)
}

// pollUntil checks cond every 20 ms until it holds (true) or limit passes.
func pollUntil(cond func() bool, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func (d *daemon) restart(ctx context.Context) error {
	if err := d.stop(); err != nil {
		return err
	}
	return d.start(ctx)
}

// stopAll stops daemons in reverse order of starting.
func stopAll(ds []*daemon) error {
	var errs []error
	for i := len(ds) - 1; i >= 0; i-- {
		if ds[i] != nil {
			errs = append(errs, ds[i].stop())
		}
	}
	return errors.Join(errs...)
}
