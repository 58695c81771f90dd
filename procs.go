package main

import (
	"context"
	"os"
	"runtime"
	"time"

	"go.uber.org/zap"
)

// The processor governor.
//
// Go runs goroutines on GOMAXPROCS processors (Ps), by default one per core.
// When a goroutine makes another runnable while a P is idle, the runtime
// wakes a second thread to run it: on a small VPS an inter-processor
// interrupt and a few context switches for work that the running core would
// have done in microseconds anyway. A relay's edge is mostly such short
// bursts (accept, a handshake, a dial, a few records), and on the 2-core VM
// of docs/BENCHMARKS.md one P cost about a quarter less CPU per new
// connection than two. One P also caps the edge's Go code at one core,
// though. So the edge runs on one P while that is enough, switches to the
// runtime's default (one per core) while handshakes pile up or the process
// keeps a whole core busy, but only if the machine has idle CPU for more
// threads to use, and goes back to one after a quiet spell. With every core
// busy (a reconnect storm on a small machine, where Dovecot and the
// clients' TLS want the other cores too), more Ps only add cross-core
// wake-ups: the edge served such a storm 7 % sooner on one P, with a fifth
// less CPU, once its socket calls stopped handing their P to another thread
// (edge/tcpconn_linux.go).
//
// The scheduler's own latency histogram (/sched/latencies) was tried as a
// signal and dropped: on a VM whose host is busy, goroutines wait because
// the host preempts the edge's one thread, and more Ps do not help that.
const (
	procsInterval = 100 * time.Millisecond
	// saturatedBacklog or more connections waiting for their handshake to
	// finish (Edge.HandshakeBacklog: a storm of reconnecting clients) for
	// backlogWindows in a row switch to all cores.
	saturatedBacklog = 64
	backlogWindows   = 3
	// So does a process that used busyShare of a core or more, averaged
	// over busyWindows: one P is saturated by steady work, bulk copying
	// say. (With one P the process rarely uses more than one core; under
	// the handshake figure's steady load it uses about 0.7.)
	busyShare   = 0.9
	busyWindows = 10
	// Either switch needs spareShare of a core or more idle on the machine,
	// averaged over the last backlogWindows.
	spareShare = 0.25
	// Back to one P after quietWindows in a row without a backlog and with
	// less than quietShare of one core used: load that one P serves.
	quietShare   = 0.5
	quietWindows = 50
)

// procsSample is what the governor sees of one window.
type procsSample struct {
	cpu, elapsed time.Duration // the process's CPU time (user and system) and the window's length
	backlog      int           // handshakes waiting or running at the window's end
	// idle is the machine's idle CPU time in the window, summed over its
	// cores; negative where the system does not tell.
	idle time.Duration
}

func (s procsSample) quiet() bool {
	return s.backlog < saturatedBacklog && s.elapsed > 0 && float64(s.cpu) < quietShare*float64(s.elapsed)
}

// procsGovernor decides, window by window, between one P and all of them.
type procsGovernor struct {
	current, max int // Ps in use, and the runtime's default
	piled, calm  int // windows in a row with a handshake backlog, or quiet
	recent       [busyWindows]procsSample
	slot         int // where the next window goes in recent
}

// next takes one window and returns the number of Ps to use from now on.
func (g *procsGovernor) next(s procsSample) int {
	g.recent[g.slot] = s
	g.slot = (g.slot + 1) % busyWindows
	if g.current < g.max {
		if s.backlog >= saturatedBacklog {
			g.piled++
		} else {
			g.piled = 0
		}
		if (g.piled >= backlogWindows || g.busy()) && g.spare() {
			g.current, g.piled, g.calm = g.max, 0, 0
			g.recent = [busyWindows]procsSample{}
		}
		return g.current
	}
	if s.quiet() {
		g.calm++
	} else {
		g.calm = 0
	}
	if g.calm >= quietWindows {
		g.current, g.piled, g.calm = 1, 0, 0
		g.recent = [busyWindows]procsSample{}
	}
	return g.current
}

// busy reports whether the last busyWindows windows used busyShare of a
// core or more.
func (g *procsGovernor) busy() bool {
	var cpu, elapsed time.Duration
	for _, w := range g.recent {
		if w.elapsed == 0 {
			return false // not enough windows yet
		}
		cpu += w.cpu
		elapsed += w.elapsed
	}
	return float64(cpu) >= busyShare*float64(elapsed)
}

// spare reports whether the machine had spareShare of a core or more idle
// over the last backlogWindows windows (or does not say).
func (g *procsGovernor) spare() bool {
	var idle, elapsed time.Duration
	for i := 1; i <= backlogWindows; i++ {
		w := g.recent[(g.slot-i+busyWindows)%busyWindows]
		if w.idle < 0 {
			return true
		}
		idle += w.idle
		elapsed += w.elapsed
	}
	return float64(idle) >= spareShare*float64(elapsed)
}

// procsSampler turns two readings of the process's CPU time into the window
// between them.
type procsSampler struct {
	cpu, idle time.Duration // idle is negative without an idle clock
	at        time.Time
	clock     *idleClock // nil where the machine's idle time cannot be read
}

func newProcsSampler() (*procsSampler, error) {
	cpu, err := processCPUTime()
	if err != nil {
		return nil, err
	}
	s := &procsSampler{cpu: cpu, idle: -1, at: time.Now()}
	if clock, err := openIdleClock(); err == nil {
		if s.idle, err = clock.read(); err == nil {
			s.clock = clock
		} else {
			clock.close()
			s.idle = -1
		}
	}
	return s, nil
}

func (s *procsSampler) close() {
	if s.clock != nil {
		s.clock.close()
		s.clock = nil
	}
}

// read takes a reading and returns the window since the previous one.
func (s *procsSampler) read() (procsSample, error) {
	cpu, err := processCPUTime()
	if err != nil {
		return procsSample{}, err
	}
	now := time.Now()
	w := procsSample{cpu: cpu - s.cpu, elapsed: now.Sub(s.at), idle: -1}
	s.cpu, s.at = cpu, now
	if s.clock != nil {
		// A failed reading ends idle accounting for good, rather than
		// folding two windows into the next one.
		idle, err := s.clock.read()
		if err != nil {
			s.close()
			idle = -1
		} else {
			w.idle = idle - s.idle
		}
		s.idle = idle
	}
	return w, nil
}

// keepProcs runs the governor until ctx ends, then leaves the runtime's
// default; backlog is Edge.HandshakeBacklog. An operator's own GOMAXPROCS in
// the environment wins: then it does nothing; so does a machine (or a CPU
// quota) of one core.
func keepProcs(ctx context.Context, log *zap.Logger, backlog func() int) {
	if os.Getenv("GOMAXPROCS") != "" {
		log.Info("GOMAXPROCS set; leaving the number of processors as configured")
		return
	}
	g := &procsGovernor{current: 1, max: runtime.GOMAXPROCS(0)}
	if g.max <= 1 {
		return
	}
	sampler, err := newProcsSampler()
	if err != nil {
		log.Warn("not adapting the number of processors", zap.Error(err))
		return
	}
	defer sampler.close()
	runtime.GOMAXPROCS(1)
	defer runtime.SetDefaultGOMAXPROCS()
	t := time.NewTicker(procsInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w, err := sampler.read()
		if err != nil {
			log.Warn("not adapting the number of processors", zap.Error(err))
			return
		}
		w.backlog = backlog()
		was := g.current
		if g.next(w) == was {
			continue
		}
		if g.current == 1 {
			runtime.GOMAXPROCS(1)
			log.Info("load is light again: running on one processor")
			continue
		}
		// The runtime's default follows the CPU quota, which may have
		// changed since the start.
		runtime.SetDefaultGOMAXPROCS()
		g.max = runtime.GOMAXPROCS(0)
		g.current = g.max
		log.Info("handshakes pile up or one processor is busy, and the machine has idle CPU: running on all processors", zap.Int("processors", g.current), zap.Int("handshake_backlog", w.backlog))
	}
}
