package web

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
)

// probeTimeout bounds one health check.
const probeTimeout = 10 * time.Second

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
	probes []Probe
	log    *zap.Logger
	mu     sync.Mutex
	last   []ProbeResult // index as probes
}

func newHealth(probes []Probe, log *zap.Logger) *health {
	h := &health{probes: probes, log: log.Named("health"), last: make([]ProbeResult, len(probes))}
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

// CheckHealth runs every probe now, at once, and returns when all are done.
func (s *Server) CheckHealth(ctx context.Context) { s.health.runAll(ctx) }

// Health returns the latest probe results.
func (s *Server) Health() []ProbeResult { return s.health.results() }

// WatchHealth checks health now and then every ProbeInterval until stop is
// closed.
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

func (h *health) runAll(ctx context.Context) {
	var wg sync.WaitGroup
	for i, p := range h.probes {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			start := time.Now()
			err := p.Run(pctx)
			if ctx.Err() != nil {
				return // shutting down: not the service's fault
			}
			h.record(i, start, time.Since(start), err)
		})
	}
	wg.Wait()
}

func (h *health) record(i int, at time.Time, latency time.Duration, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
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
