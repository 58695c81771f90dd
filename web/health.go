package web

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

const (
	// probeTimeout bounds one health check: Run's context ends then.
	probeTimeout = 10 * time.Second
	// probeGrace is how long after probeTimeout a round waits for a Run
	// that ignores its context. Then the probe counts as down and the round
	// goes on; no second Run of the probe starts while the stuck one has not
	// returned. A stuck check holds one goroutine, never a round or
	// shutdown.
	probeGrace = 2 * time.Second
)

// Probe checks one service the relay depends on.
type Probe struct {
	Name   string // e.g. "IMAP (Dovecot)"
	Target string // address, for the admin page
	// Run does a real check, e.g. mail.Backend.Probe: greeting and
	// CAPABILITY or EHLO. It must give up when ctx is done.
	Run func(ctx context.Context) error
}

// ProbeResult is the last outcome of a Probe.
type ProbeResult struct {
	Name, Target string
	Checked      time.Time // zero: not checked yet
	Up           bool
	Latency      time.Duration
	Error        string
	Failures     uint64 // failed checks since the start
}

// health runs the probes periodically and keeps their latest results.
type health struct {
	probes         []Probe
	log            *zap.Logger
	timeout, grace time.Duration // probeTimeout, probeGrace
	mu             sync.Mutex
	last           []ProbeResult // index as probes
	flights        []*flight     // the Run of each probe under way, or nil
}

// flight is one Run of a probe under way. Rounds that start while it runs
// wait for it instead of starting another.
type flight struct {
	started time.Time
	done    chan struct{} // closed once Run has returned and its result is recorded
	stuck   bool          // counted as down for not returning in time; under health.mu
}

func newHealth(probes []Probe, log *zap.Logger) *health {
	h := &health{probes: probes, log: log.Named("health"), timeout: probeTimeout, grace: probeGrace,
		last: make([]ProbeResult, len(probes)), flights: make([]*flight, len(probes))}
	for i, p := range probes {
		h.last[i] = ProbeResult{Name: p.Name, Target: p.Target}
	}
	return h
}

// probes are the mail backends' probes plus an HTTP request to each
// upstream: iroh-relay's /ping, and for filtermail (which has no health
// path) a HEAD of /mxdeliv, where any answer shows that it serves HTTP.
func (s *Server) probes() []Probe {
	probes := append([]Probe(nil), s.deps.Probes...)
	for _, up := range s.upstreams {
		probes = append(probes, Probe{Name: up.name, Target: up.target.Host, Run: up.probe})
	}
	return probes
}

// CheckHealth runs every probe now, at once, and returns when all are done,
// when ctx is, or when the bound of a round has passed (probeTimeout plus
// probeGrace; a probe whose Run has not returned by then counts as down).
func (s *Server) CheckHealth(ctx context.Context) { s.health.runAll(ctx) }

// Health returns the latest probe results.
func (s *Server) Health() []ProbeResult { return s.health.results() }

// WatchHealth checks health now and then every ProbeInterval until stop is
// closed. It returns as soon as stop is closed, without waiting for the
// probes under way: their context ends, and what they find is dropped.
func (s *Server) WatchHealth(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
	}()
	t := time.NewTicker(s.cfg.ProbeInterval)
	defer t.Stop()
	for {
		s.health.runAll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// runAll runs one round: it starts every probe that is not under way, each
// in a goroutine of its own, and waits for all until ctx is done or until
// probeTimeout plus probeGrace after each one's start, never longer.
func (h *health) runAll(ctx context.Context) {
	flights := make([]*flight, len(h.probes))
	for i := range h.probes {
		flights[i] = h.launch(ctx, i)
	}
	for i, f := range flights {
		bound := time.NewTimer(time.Until(f.started.Add(h.timeout + h.grace)))
		select {
		case <-f.done:
		case <-bound.C:
			h.markStuck(ctx, i, f)
		case <-ctx.Done():
		}
		bound.Stop()
		if ctx.Err() != nil {
			return
		}
	}
}

// launch starts a Run of probe i under ctx, or returns the one under way.
func (h *health) launch(ctx context.Context, i int) *flight {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.flights[i]; f != nil {
		return f
	}
	f := &flight{started: time.Now(), done: make(chan struct{})}
	h.flights[i] = f
	go func() {
		defer close(f.done)
		pctx, cancel := context.WithTimeout(ctx, h.timeout)
		defer cancel()
		err := h.probes[i].Run(pctx)
		latency := time.Since(f.started)
		h.mu.Lock()
		defer h.mu.Unlock()
		h.flights[i] = nil
		// Shutting down is not the service's fault; a result too late was
		// counted already.
		if ctx.Err() == nil && !f.stuck {
			h.recordLocked(i, f.started, latency, err)
		}
	}()
	return f
}

// markStuck counts probe i as down when f, its Run, has not returned.
func (h *health) markStuck(ctx context.Context, i int, f *flight) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.flights[i] != f || ctx.Err() != nil {
		return // it returned just now, or shutting down
	}
	err := fmt.Errorf("no result within %v: the check did not return", h.timeout+h.grace)
	if f.stuck {
		err = fmt.Errorf("the check started %s has not returned yet", f.started.UTC().Format(time.RFC3339))
	}
	f.stuck = true
	h.recordLocked(i, time.Now(), time.Since(f.started), err)
}

// recordLocked keeps the outcome of a check of probe i; h.mu is held.
func (h *health) recordLocked(i int, at time.Time, latency time.Duration, err error) {
	r := &h.last[i]
	wasUp, checked := r.Up, !r.Checked.IsZero()
	r.Checked, r.Latency, r.Up, r.Error = at, latency, err == nil, ""
	if err != nil {
		r.Error = err.Error()
		r.Failures++
	}
	// Log changes only, not every failed check of a service that stays down.
	switch {
	case err != nil && (wasUp || !checked):
		h.log.Warn("service down", zap.String("service", r.Name), zap.String("target", r.Target), zap.Error(err))
	case err == nil && !wasUp && checked:
		h.log.Info("service up again", zap.String("service", r.Name), zap.String("target", r.Target))
	}
}

func (h *health) results() []ProbeResult {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]ProbeResult(nil), h.last...)
}
