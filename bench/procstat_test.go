package main

import (
	"os"
	"slices"
	"testing"
)

func TestParseStat(t *testing.T) {
	// A command name with spaces and parentheses, as a process may set.
	line := "4242 (imap (login) x) S 17 4242 4242 0 -1 4194560 500 0 0 0 120 35 7 3 20 0 1 0 100 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	got, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	want := procInfo{PID: 4242, PPID: 17, PGID: 4242, Comm: "imap (login) x", State: 'S', Ticks: 120 + 35 + 7 + 3}
	if got != want {
		t.Errorf("parseStat = %+v, want %+v", got, want)
	}
	for _, bad := range []string{"", "12 no-parens S 1", "x (a) S 1 2 3", "1 (a) S 1 2 3"} {
		if _, err := parseStat(bad); err == nil {
			t.Errorf("parseStat(%q) accepted", bad)
		}
	}
}

func TestParseVmRSS(t *testing.T) {
	status := []byte("Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n")
	if got, err := parseVmRSS(status); err != nil || got != 5120 {
		t.Errorf("parseVmRSS = %d, %v; want 5120", got, err)
	}
	// A zombie has no VmRSS line.
	if got, err := parseVmRSS([]byte("Name:\tx\nState:\tZ (zombie)\n")); err != nil || got != 0 {
		t.Errorf("parseVmRSS(zombie) = %d, %v; want 0", got, err)
	}
	if _, err := parseVmRSS([]byte("VmRSS:\t12 MB\n")); err == nil {
		t.Error("parseVmRSS accepted another unit")
	}
}

func TestDescendants(t *testing.T) {
	procs := map[int]procInfo{
		1: {PID: 1}, 10: {PID: 10, PPID: 1}, 11: {PID: 11, PPID: 10}, 12: {PID: 12, PPID: 11},
		20: {PID: 20, PPID: 1}, 13: {PID: 13, PPID: 10},
	}
	got := descendants(procs, []int{10, 99})
	slices.Sort(got)
	if want := []int{10, 11, 12, 13}; !slices.Equal(got, want) {
		t.Errorf("descendants = %v, want %v", got, want)
	}
}

func TestSampleOwnProcess(t *testing.T) {
	us, err := sampleGroups([]procGroup{{Label: "self", Roots: fixedRoots(os.Getpid())}})
	if err != nil {
		t.Fatal(err)
	}
	if us[0].Procs < 1 || us[0].RSSKiB == 0 {
		t.Errorf("own process: %+v", us[0])
	}
	if _, err := sampleGroups([]procGroup{{Label: "none", Roots: fixedRoots()}}); err == nil {
		t.Error("a group without processes was accepted")
	}
}
