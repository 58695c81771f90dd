package main

import (
	"runtime"
	"testing"
	"time"
)

func TestProcsGovernor(t *testing.T) {
	const window = procsInterval
	// A machine with a core idle, as when the clients are elsewhere.
	steady := procsSample{cpu: window * 7 / 10, elapsed: window, idle: window} // the handshake figure's load on one P
	busy := procsSample{cpu: window, elapsed: window, idle: window}
	quiet := procsSample{cpu: window / 10, elapsed: window, idle: window}
	storm := procsSample{cpu: window / 2, elapsed: window, backlog: saturatedBacklog, idle: window}

	t.Run("steady load that one P serves stays on one", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 4}
		for range 100 {
			if n := g.next(steady); n != 1 {
				t.Fatalf("switched to %d under a load one P serves", n)
			}
		}
	})
	t.Run("a busy P switches once it has been busy a while", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 4}
		for range busyWindows - 1 {
			if n := g.next(busy); n != 1 {
				t.Fatalf("switched to %d before %d busy windows", n, busyWindows)
			}
		}
		if n := g.next(busy); n != 4 {
			t.Fatalf("after %d busy windows: %d processors, want 4", busyWindows, n)
		}
	})
	t.Run("short bursts average out", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 2}
		for i := range 10 * busyWindows {
			s := quiet
			if i%3 == 0 {
				s = busy
			}
			if n := g.next(s); n != 1 {
				t.Fatalf("window %d: switched to %d on bursts averaging under %.1f of a core", i, n, busyShare)
			}
		}
	})
	t.Run("a handshake backlog switches only when it lasts, and keeps all processors", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 2}
		for range backlogWindows - 1 {
			g.next(storm)
		}
		g.next(quiet) // the backlog cleared: the count starts again
		for range backlogWindows - 1 {
			g.next(storm)
		}
		if g.current != 1 {
			t.Fatalf("switched to %d though the backlog windows were not in a row", g.current)
		}
		if n := g.next(storm); n != 2 {
			t.Fatalf("a backlog for %d windows left %d processors, want 2", backlogWindows, n)
		}
		waiting := quiet
		waiting.backlog = saturatedBacklog // e.g. clients slow to finish their handshakes
		for range 2 * quietWindows {
			if n := g.next(waiting); n != 2 {
				t.Fatalf("back to %d processors with %d handshakes waiting", n, waiting.backlog)
			}
		}
	})
	t.Run("no switch while every core is busy", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 2}
		// A storm with the P busy: both reasons to switch, but Dovecot and
		// the clients keep the other core busy.
		crowded := procsSample{cpu: window, elapsed: window, backlog: saturatedBacklog, idle: window / 10}
		for i := range 10 * busyWindows {
			if n := g.next(crowded); n != 1 {
				t.Fatalf("window %d: switched to %d with no idle core to run more threads", i, n)
			}
		}
		// A core turns idle while the backlog lasts: switch within the
		// windows the idle time is averaged over.
		for i := range backlogWindows {
			if n := g.next(storm); n == 2 {
				return
			} else if i == backlogWindows-1 {
				t.Fatalf("still %d processors after %d windows with a backlog and an idle core", n, backlogWindows)
			}
		}
	})
	t.Run("a system that does not tell its idle time switches as before", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 2}
		unknown := storm
		unknown.idle = -1
		for range backlogWindows {
			g.next(unknown)
		}
		if g.current != 2 {
			t.Fatalf("%d processors after a backlog on a system without idle times, want 2", g.current)
		}
	})
	t.Run("back to one after a quiet spell", func(t *testing.T) {
		g := &procsGovernor{current: 4, max: 4}
		for range quietWindows - 1 {
			g.next(quiet)
		}
		g.next(busy) // a burst keeps all processors
		for range quietWindows - 1 {
			if n := g.next(quiet); n != 4 {
				t.Fatalf("back to %d before a whole quiet spell", n)
			}
		}
		if n := g.next(quiet); n != 1 {
			t.Fatalf("after %d quiet windows: %d processors, want 1", quietWindows, n)
		}
		// Back on one P, the windows from before do not count as busy.
		if n := g.next(steady); n != 1 {
			t.Fatalf("switched to %d right after coming back", n)
		}
	})
}

// TestProcsSampler reads the process's real CPU time.
func TestProcsSampler(t *testing.T) {
	s, err := newProcsSampler()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	for start := time.Now(); time.Since(start) < 20*time.Millisecond; { // some CPU to account for
	}
	w, err := s.read()
	if err != nil {
		t.Fatal(err)
	}
	if w.cpu <= 0 || w.elapsed <= 0 {
		t.Errorf("window: cpu %v, elapsed %v; want both above zero", w.cpu, w.elapsed)
	}
	if w.cpu > 2*w.elapsed*time.Duration(runtime.NumCPU()) {
		t.Errorf("cpu %v in a window of %v: not a plausible reading", w.cpu, w.elapsed)
	}
	// Idle time comes in ticks of 10 ms, so a short window may show none;
	// it can never exceed the window times the number of CPUs (plus a tick
	// per CPU of rounding).
	if runtime.GOOS == "linux" {
		if w.idle < 0 {
			t.Fatal("no idle time on Linux")
		}
		if limit := (w.elapsed + 10*time.Millisecond) * time.Duration(runtime.NumCPU()); w.idle > limit {
			t.Errorf("idle %v in a window of %v on %d CPUs: not a plausible reading", w.idle, w.elapsed, runtime.NumCPU())
		}
	}
}
