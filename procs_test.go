package main

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestProcsGovernor(t *testing.T) {
	const window = procsInterval
	saturated := procsSample{scheduled: 100, waitedLong: 60, cpu: window, elapsed: window}
	busy := procsSample{scheduled: 100, waitedLong: 10, cpu: window * 9 / 10, elapsed: window}
	quiet := procsSample{scheduled: 20, waitedLong: 0, cpu: window / 10, elapsed: window}
	idle := procsSample{elapsed: window}

	t.Run("busy but not waiting stays on one", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 4}
		for range 100 {
			if n := g.next(busy); n != 1 {
				t.Fatalf("switched to %d on a busy but unsaturated P", n)
			}
		}
	})
	t.Run("saturation switches only when it lasts", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 4}
		for range saturatedWindows - 1 {
			if n := g.next(saturated); n != 1 {
				t.Fatalf("switched to %d before %d saturated windows", n, saturatedWindows)
			}
		}
		g.next(busy) // one window that is fine starts the count again
		for range saturatedWindows - 1 {
			g.next(saturated)
		}
		if g.current != 1 {
			t.Fatalf("switched to %d though the saturated windows were not in a row", g.current)
		}
		if n := g.next(saturated); n != 4 {
			t.Fatalf("after %d saturated windows in a row: %d processors, want 4", saturatedWindows, n)
		}
	})
	t.Run("back to one after a quiet spell", func(t *testing.T) {
		g := &procsGovernor{current: 4, max: 4}
		for range quietWindows - 1 {
			g.next(quiet)
		}
		g.next(saturated) // a burst keeps all processors
		for range quietWindows - 1 {
			if n := g.next(idle); n != 4 {
				t.Fatalf("back to %d before a whole quiet spell", n)
			}
		}
		if n := g.next(idle); n != 1 {
			t.Fatalf("after %d quiet windows: %d processors, want 1", quietWindows, n)
		}
	})
	t.Run("a handshake backlog switches, and keeps all processors", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 2}
		storm := procsSample{scheduled: 50, waitedLong: 5, cpu: window / 2, elapsed: window, backlog: saturatedBacklog}
		for range saturatedWindows {
			g.next(storm)
		}
		if g.current != 2 {
			t.Fatalf("a backlog of %d for %d windows left %d processors, want 2", storm.backlog, saturatedWindows, g.current)
		}
		waiting := idle
		waiting.backlog = saturatedBacklog // e.g. clients slow to finish their handshakes
		for range 2 * quietWindows {
			if n := g.next(waiting); n != 2 {
				t.Fatalf("back to %d processors with %d handshakes waiting", n, waiting.backlog)
			}
		}
	})
	t.Run("no goroutines scheduled is not saturation", func(t *testing.T) {
		g := &procsGovernor{current: 1, max: 2}
		for range 10 * saturatedWindows {
			g.next(idle)
		}
		if g.current != 1 {
			t.Fatalf("an idle process switched to %d processors", g.current)
		}
	})
}

// TestProcsSampler reads the real runtime: goroutines that wait behind a
// busy processor are counted, and so is the CPU they burn.
func TestProcsSampler(t *testing.T) {
	s, err := newProcsSampler()
	if err != nil {
		t.Fatal(err)
	}
	// Four goroutines that each spin for 5 ms, started together, behind
	// whatever else runs: on any number of processors some of them have
	// run, and CPU time has passed.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for start := time.Now(); time.Since(start) < 5*time.Millisecond; {
				runtime.Gosched()
			}
		})
	}
	wg.Wait()
	w, err := s.read()
	if err != nil {
		t.Fatal(err)
	}
	if w.scheduled == 0 {
		t.Error("no goroutine was counted as scheduled")
	}
	if w.waitedLong > w.scheduled {
		t.Errorf("%d waited long of %d scheduled", w.waitedLong, w.scheduled)
	}
	if w.cpu <= 0 || w.elapsed <= 0 {
		t.Errorf("window: cpu %v, elapsed %v; want both above zero", w.cpu, w.elapsed)
	}
	if s.longIdx <= 0 || s.longIdx >= len(s.counts) {
		t.Errorf("bucket of %v at %d of %d", saturatedWait, s.longIdx, len(s.counts))
	}
}
