//go:build integration

package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pollInterval is how often the helpers below look at a condition again.
const pollInterval = 20 * time.Millisecond

// requireDaemons stops the test with a clear message when the machine cannot
// run the real daemons: they come from Debian packages and Postfix needs root
// (it starts as root and drops privileges itself, postfix(1)).
func requireDaemons(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the integration suite starts Postfix and Dovecot, which needs root (as in .ci/run)")
	}
	for _, bin := range []string{"postfix", "postconf", "postqueue", "dovecot"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: apt-get install postfix dovecot-imapd dovecot-lmtpd (see .ci/run)", bin)
		}
	}
}

// daemonDir is a fresh folder for one daemon's configuration, state and
// logs. The daemons drop privileges (Postfix to postfix, Dovecot's login
// processes to dovenull, mail access to nobody), so the folder and its
// parent, t.TempDir's 0700 folders, must be traversable by them.
func daemonDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// freePort returns a loopback port that was free a moment ago, for a daemon
// to bind next. The daemons cannot bind port 0 and report back.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitUntil polls cond until it holds, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := pollUntil(t.Context(), timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func pollUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("not after %v", timeout)
		case <-tick.C:
		}
	}
	return nil
}

// logFile is a daemon's log. Offsets let a test look only at what was
// written after a point (a restart, a delivery).
type logFile string

func (l logFile) size() int64 {
	fi, err := os.Stat(string(l))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// linesSince returns the lines written after offset that contain substr.
func (l logFile) linesSince(offset int64, substr string) []string {
	data, err := os.ReadFile(string(l))
	if err != nil || int64(len(data)) < offset {
		return nil
	}
	var out []string
	for line := range strings.Lines(string(data[offset:])) {
		if strings.Contains(line, substr) {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return out
}

func (l logFile) lines(substr string) []string { return l.linesSince(0, substr) }

// waitForLine waits until a line containing substr appears after offset.
func (l logFile) waitForLine(t *testing.T, offset int64, substr string, timeout time.Duration) string {
	t.Helper()
	var found []string
	waitUntil(t, timeout, fmt.Sprintf("%q in %s", substr, l), func() bool {
		found = l.linesSince(offset, substr)
		return len(found) > 0
	})
	return found[0]
}

// dumpOnFailure prints the logs' ends when the test failed, so that a CI
// failure shows what the daemons said.
func dumpOnFailure(t *testing.T, logs ...logFile) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		const tail = 16 << 10
		for _, l := range logs {
			data, err := os.ReadFile(string(l))
			if err != nil {
				t.Logf("%s: %v", l, err)
				continue
			}
			if len(data) > tail {
				data = data[len(data)-tail:]
			}
			t.Logf("---- %s (last %d bytes) ----\n%s", l, len(data), data)
		}
	})
}

// runLogged runs a short command, appending its output to the file out.
func runLogged(out string, name string, args ...string) error {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w (output in %s)", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// groupMembers lists the live processes of the process group pgid by pid,
// each as "pid (command) state". Zombies do not count: they hold no socket
// or file, and reaping the daemons' orphans is up to init.
func groupMembers(pgid int) map[int]string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	members := map[int]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // it just exited
		}
		// proc(5): "pid (comm) state ppid pgrp ..."; comm may hold anything,
		// so the fields are counted from its closing parenthesis.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			members[pid] = string(stat[:i+1]) + " " + f[0]
		}
	}
	return members
}

// stopGroup stops the daemon whose master leads the process group pgid as
// systemd stops a unit: SIGTERM to the master (`doveadm stop`, `postfix
// stop`), then SIGTERM to whatever is left in the group (KillMode=
// control-group), then SIGKILL after grace. The second step matters: a
// Dovecot auth process outlives its master while a client, here Postfix's
// smtpd, stays connected.
func stopGroup(pgid int, grace time.Duration) error {
	if err := syscall.Kill(pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	masterGone := func() bool { _, alive := groupMembers(pgid)[pgid]; return !alive }
	if err := pollUntil(context.Background(), grace, masterGone); err != nil {
		syscall.Kill(-pgid, syscall.SIGKILL)
		return fmt.Errorf("master %d still running %v after SIGTERM, killed", pgid, grace)
	}
	syscall.Kill(-pgid, syscall.SIGTERM)
	allGone := func() bool { return len(groupMembers(pgid)) == 0 }
	if pollUntil(context.Background(), grace, allGone) == nil {
		return nil
	}
	survivors := groupMembers(pgid)
	syscall.Kill(-pgid, syscall.SIGKILL)
	if err := pollUntil(context.Background(), 5*time.Second, allGone); err != nil {
		return fmt.Errorf("process group %d survived SIGKILL: %v", pgid, groupMembers(pgid))
	}
	return fmt.Errorf("process group %d: %v still running %v after SIGTERM, killed", pgid, survivors, grace)
}

func writeFile(t *testing.T, path, data string, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), perm); err != nil {
		t.Fatal(err)
	}
}
