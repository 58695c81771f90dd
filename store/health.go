package store

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Health is whether the store answers, for the status page and metrics.
type Health struct {
	Endpoints []string
	Up        bool
	// Since is when Up took its value: since when the store answers, or
	// since when it does not.
	Since       time.Time
	LastSuccess time.Time // the last request it answered
	LastError   string    // the last failed request's error, while down
	LastErrorAt time.Time
}

// health follows the outcome of every request and of the probe.
type health struct {
	log *zap.Logger
	mu  sync.Mutex
	h   Health
}

func newHealth(endpoints []string, log *zap.Logger) *health {
	return &health{log: log, h: Health{Endpoints: endpoints, Up: true, Since: time.Now()}}
}

// record takes one request's outcome and logs when the store stops or
// starts answering again (once each, not every failed request).
func (h *health) record(err error) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		if !h.h.Up {
			h.log.Info("the shared store answers again", zap.Strings("endpoints", h.h.Endpoints), zap.Duration("unreachable_for", now.Sub(h.h.Since).Round(time.Millisecond)))
			h.h.Up, h.h.Since, h.h.LastError = true, now, ""
		}
		h.h.LastSuccess = now
		return
	}
	h.h.LastError, h.h.LastErrorAt = err.Error(), now
	if h.h.Up {
		h.log.Warn("the shared store is unreachable; serving the certificates and ECH keys at hand", zap.Strings("endpoints", h.h.Endpoints), zap.Error(err))
		h.h.Up, h.h.Since = false, now
	}
}

func (h *health) get() Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.h
}

// Health is whether the store answered the last request or probe, and
// since when.
func (s *Store) Health() Health { return s.health.get() }

// probe asks the store for a key count: a linearizable read, which only a
// cluster with a leader answers.
func (s *Store) probe(ctx context.Context) error {
	return s.call(ctx, "probe", func(ctx context.Context) error {
		_, err := s.client.Get(ctx, s.prefix, clientv3.WithCountOnly())
		return err
	})
}

// probeLoop probes every ProbeInterval until Close, so that the health is
// current also while nothing else asks the store.
func (s *Store) probeLoop() {
	t := time.NewTicker(s.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-s.run.Done():
			return
		case <-t.C:
			s.probe(s.run)
		}
	}
}
