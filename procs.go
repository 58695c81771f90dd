package main

import (
	"context"
	"errors"
	"os"
	"runtime"
	"runtime/metrics"
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
// though, and a reconnect storm was served faster with two: there the one
// thread also gets only its fair share of a core that the other processes
// of the relay want too. So the edge runs on one P while that is enough,
// switches to the runtime's default (one per core) while handshakes pile up
// or goroutines keep waiting to run, and goes back to one after a quiet
// spell.
const (
	procsInterval = 100 * time.Millisecond
	// A window is saturated when saturatedBacklog connections or more wait
	// for their handshake to finish (Edge.HandshakeBacklog: a storm of
	// reconnecting clients), or when at least saturatedShare of the
	// goroutines that started running in it had waited saturatedWait or
	// longer (the runtime's /sched/latencies: one P busy with something
	// else). saturatedWindows in a row switch to all cores. Under a steady
	// load that one P serves, a few per cent of goroutines wait that long:
	// those behind a handshake's cryptography (some hundred microseconds).
	saturatedBacklog = 64
	saturatedWait    = 4 * time.Millisecond
	saturatedShare   = 0.5
	saturatedWindows = 3
	// Back to one P after quietWindows in a row without a backlog and with
	// less than quietShare of one core used: load that one P serves.
	quietShare   = 0.5
	quietWindows = 50
)

// procsSample is what the governor sees of one window.
type procsSample struct {
	scheduled, waitedLong uint64        // goroutines that started running, and those of them that had waited saturatedWait or longer
	cpu, elapsed          time.Duration // the process's CPU time (user and system) and the window's length
	backlog               int           // handshakes waiting or running at the window's end
}

func (s procsSample) saturated() bool {
	return s.backlog >= saturatedBacklog ||
		s.scheduled > 0 && float64(s.waitedLong) >= saturatedShare*float64(s.scheduled)
}

func (s procsSample) quiet() bool {
	return s.backlog < saturatedBacklog && s.elapsed > 0 && float64(s.cpu) < quietShare*float64(s.elapsed)
}

// procsGovernor decides, window by window, between one P and all of them.
type procsGovernor struct {
	current, max int // Ps in use, and the runtime's default
	hot, calm    int // windows in a row that were saturated, or quiet
}

// next takes one window and returns the number of Ps to use from now on.
func (g *procsGovernor) next(s procsSample) int {
	if g.current < g.max {
		if s.saturated() {
			g.hot++
		} else {
			g.hot = 0
		}
		if g.hot >= saturatedWindows {
			g.current, g.hot, g.calm = g.max, 0, 0
		}
		return g.current
	}
	if s.quiet() {
		g.calm++
	} else {
		g.calm = 0
	}
	if g.calm >= quietWindows {
		g.current, g.hot, g.calm = 1, 0, 0
	}
	return g.current
}

// procsSampler reads the runtime's scheduling latencies and the process's
// CPU time, and turns two readings into the window between them.
type procsSampler struct {
	metric  []metrics.Sample
	counts  []uint64 // the histogram's counts at the last reading
	longIdx int      // first bucket whose lower bound is at least saturatedWait
	cpu     time.Duration
	at      time.Time
}

const schedLatencies = "/sched/latencies:seconds"

var errNoSchedLatencies = errors.New("the runtime does not report " + schedLatencies)

func newProcsSampler() (*procsSampler, error) {
	s := &procsSampler{metric: []metrics.Sample{{Name: schedLatencies}}}
	if _, err := s.read(); err != nil {
		return nil, err
	}
	return s, nil
}

// read takes a reading and returns the window since the previous one.
func (s *procsSampler) read() (procsSample, error) {
	cpu, err := processCPUTime()
	if err != nil {
		return procsSample{}, err
	}
	now := time.Now()
	metrics.Read(s.metric)
	v := s.metric[0].Value
	if v.Kind() != metrics.KindFloat64Histogram {
		return procsSample{}, errNoSchedLatencies
	}
	h := v.Float64Histogram()
	var w procsSample
	if s.counts != nil && len(s.counts) == len(h.Counts) {
		for i, c := range h.Counts {
			d := c - s.counts[i]
			w.scheduled += d
			if i >= s.longIdx {
				w.waitedLong += d
			}
		}
		w.cpu, w.elapsed = cpu-s.cpu, now.Sub(s.at)
	} else {
		// Buckets[i] is the lower bound of Counts[i].
		s.longIdx = len(h.Counts)
		for i := range h.Counts {
			if h.Buckets[i] >= saturatedWait.Seconds() {
				s.longIdx = i
				break
			}
		}
	}
	s.counts = append(s.counts[:0], h.Counts...)
	s.cpu, s.at = cpu, now
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
		g.current, g.max = runtime.GOMAXPROCS(0), runtime.GOMAXPROCS(0)
		log.Info("handshakes or goroutines are waiting: running on all processors", zap.Int("processors", g.current), zap.Int("handshake_backlog", w.backlog))
	}
}
