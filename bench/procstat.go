package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime/stime in /proc/<pid>/stat (USER_HZ). Linux
// fixes it at 100 for user space on every architecture Debian ships.
const clockTick = 10 * time.Millisecond

// procGroup is a set of server processes whose CPU time and memory count
// together, such as "nginx" (master and workers) or "dovecot" (master,
// imap-login and every helper). Roots is asked again on every sample,
// because restarts change the processes; every descendant of a root counts
// too.
type procGroup struct {
	Label string
	Roots func() ([]int, error)
}

// procUsage is one reading of a group.
type procUsage struct {
	CPU    time.Duration // utime+stime of the processes, plus cutime+cstime of children they reaped
	RSSKiB uint64        // sum of VmRSS
	Procs  int
}

// procInfo is what one /proc/<pid>/stat line says.
type procInfo struct {
	PID, PPID, PGID int
	Comm            string
	State           byte // R, S, Z (zombie) ...
	// Ticks are utime+stime+cutime+cstime. /proc/<pid>/stat sums all
	// threads of the process; the children's part keeps the total steady
	// when a helper exits and its parent reaps it during a measurement.
	Ticks uint64
}

// parseStat reads one /proc/<pid>/stat line. The command name may hold
// spaces and parentheses, so fields are counted from the last ')'.
func parseStat(line string) (procInfo, error) {
	open, end := strings.IndexByte(line, '('), strings.LastIndexByte(line, ')')
	if open < 0 || end < open {
		return procInfo{}, fmt.Errorf("parse stat %q: no command name", line)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line[:open]))
	if err != nil {
		return procInfo{}, fmt.Errorf("parse stat %q: pid: %w", line, err)
	}
	// fields[0] is field 3 of proc(5) (state).
	fields := strings.Fields(line[end+1:])
	if len(fields) < 15 {
		return procInfo{}, fmt.Errorf("parse stat %q: %d fields after the name, want at least 15", line, len(fields))
	}
	info := procInfo{PID: pid, Comm: line[open+1 : end], State: fields[0][0]}
	if info.PPID, err = strconv.Atoi(fields[1]); err != nil {
		return procInfo{}, fmt.Errorf("parse stat %q: ppid: %w", line, err)
	}
	if info.PGID, err = strconv.Atoi(fields[2]); err != nil {
		return procInfo{}, fmt.Errorf("parse stat %q: pgrp: %w", line, err)
	}
	for _, i := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return procInfo{}, fmt.Errorf("parse stat %q: field %d: %w", line, i+3, err)
		}
		if n > 0 {
			info.Ticks += uint64(n)
		}
	}
	return info, nil
}

// parseVmRSS returns VmRSS in KiB from /proc/<pid>/status; a zombie has
// none and counts 0.
func parseVmRSS(status []byte) (uint64, error) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("parse VmRSS %q", line)
		}
		return strconv.ParseUint(f[0], 10, 64)
	}
	return 0, nil
}

// readProcs lists every process of the system.
func readProcs() (map[int]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list /proc: %w", err)
	}
	procs := make(map[int]procInfo, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		info, err := readStat(pid)
		if err != nil {
			continue // gone since ReadDir
		}
		procs[pid] = info
	}
	return procs, nil
}

func readStat(pid int) (procInfo, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procInfo{}, err
	}
	return parseStat(string(b))
}

// descendants returns roots and everything below them in procs.
func descendants(procs map[int]procInfo, roots []int) []int {
	children := make(map[int][]int)
	for _, p := range procs {
		children[p.PPID] = append(children[p.PPID], p.PID)
	}
	seen := make(map[int]bool)
	var out []int
	queue := append([]int(nil), roots...)
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		if _, ok := procs[pid]; ok {
			out = append(out, pid)
		}
		queue = append(queue, children[pid]...)
	}
	return out
}

// members resolves the group to the processes it has now.
func (g procGroup) members(procs map[int]procInfo) ([]int, error) {
	roots, err := g.Roots()
	if err != nil {
		return nil, fmt.Errorf("find processes of %s: %w", g.Label, err)
	}
	return descendants(procs, roots), nil
}

// usageOf reads CPU and RSS of pids. A process that is gone by now is
// skipped: its time went to its parent's cutime when it was reaped.
func usageOf(pids []int) procUsage {
	var u procUsage
	for _, pid := range pids {
		info, err := readStat(pid)
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
		if err != nil {
			continue
		}
		rss, err := parseVmRSS(status)
		if err != nil {
			continue
		}
		u.CPU += time.Duration(info.Ticks) * clockTick
		u.RSSKiB += rss
		u.Procs++
	}
	return u
}

// sampleGroups reads every group once.
func sampleGroups(groups []procGroup) ([]procUsage, error) {
	procs, err := readProcs()
	if err != nil {
		return nil, err
	}
	out := make([]procUsage, len(groups))
	for i, g := range groups {
		pids, err := g.members(procs)
		if err != nil {
			return nil, err
		}
		if len(pids) == 0 {
			return nil, fmt.Errorf("no processes of %s are running", g.Label)
		}
		out[i] = usageOf(pids)
	}
	return out, nil
}

// quietPoll is how often waitCPUQuiet and waitRSSSettled look; tests
// shorten it.
var quietPoll = 100 * time.Millisecond

// waitCPUQuiet waits until the groups' CPU time stops moving (work the
// servers still do after the last client left, such as closing backend
// connections, belongs to the measurement), at most limit.
func waitCPUQuiet(groups []procGroup, limit time.Duration) ([]procUsage, error) {
	deadline := time.Now().Add(limit)
	prev, err := sampleGroups(groups)
	if err != nil {
		return nil, err
	}
	still := 0
	for time.Now().Before(deadline) {
		time.Sleep(quietPoll)
		cur, err := sampleGroups(groups)
		if err != nil {
			return nil, err
		}
		if totalCPU(cur) == totalCPU(prev) {
			still++
			if still >= 2 {
				return cur, nil
			}
		} else {
			still = 0
		}
		prev = cur
	}
	return prev, nil
}

func totalCPU(us []procUsage) time.Duration {
	var t time.Duration
	for _, u := range us {
		t += u.CPU
	}
	return t
}

func totalRSS(us []procUsage) uint64 {
	var t uint64
	for _, u := range us {
		t += u.RSSKiB
	}
	return t
}

// fixedRoots is a group of known PIDs.
func fixedRoots(pids ...int) func() ([]int, error) {
	return func() ([]int, error) { return pids, nil }
}

// rootsByName finds the processes whose command name (/proc/<pid>/comm,
// e.g. nginx, dovecot, chatmail-edge) is one of names.
func rootsByName(names ...string) func() ([]int, error) {
	return func() ([]int, error) {
		procs, err := readProcs()
		if err != nil {
			return nil, err
		}
		var out []int
		for _, p := range procs {
			for _, n := range names {
				if p.Comm == n {
					out = append(out, p.PID)
				}
			}
		}
		return out, nil
	}
}

// rootsByCgroup lists the processes of a cgroup folder (v1 or v2), e.g.
// /sys/fs/cgroup/system.slice/dovecot.service.
func rootsByCgroup(dir string) func() ([]int, error) {
	return func() ([]int, error) {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s is not a cgroup folder (no cgroup.procs)", dir)
		}
		if err != nil {
			return nil, err
		}
		var out []int
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
		return out, nil
	}
}

// groupMembers lists the live (not zombie) processes of process group pgid.
func groupMembers(pgid int) []int {
	procs, err := readProcs()
	if err != nil {
		return nil
	}
	var out []int
	for _, p := range procs {
		if p.PGID == pgid && p.State != 'Z' {
			out = append(out, p.PID)
		}
	}
	return out
}
