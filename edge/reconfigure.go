package edge

import (
	"errors"
	"time"
)

// Limits returns the limits in force.
func (e *Edge) Limits() Limits { return *e.limits.Load() }

// SetLimits changes the limits for what happens from now on; established
// connections stay. Zero values keep the current ones.
func (e *Edge) SetLimits(l Limits) error {
	if l.HelloTimeout < 0 || l.HandshakeTimeout < 0 || l.IdleTimeout < 0 || l.LingerTimeout < 0 || l.BackendTimeout < 0 ||
		l.MaxConnections < 0 || l.MaxHandshakes < 0 ||
		l.Sources.MaxConnections < 0 || l.Sources.MaxHandshakes < 0 || l.Sources.NewPerSecond < 0 {
		return errors.New("edge limits: negative value")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	l = l.withDefaults(*e.limits.Load())
	if err := l.validate(); err != nil {
		return err
	}
	e.limits.Store(&l)
	e.slots.resize(l.MaxHandshakes)
	select {
	case e.limitsChanged <- struct{}{}:
	default: // the sweeper has a notice pending already
	}
	return nil
}

// sweepInterval is how often the sweeper looks for expired connections:
// a fraction of the shortest timeout, so that none is overrun by much.
func (e *Edge) sweepInterval() time.Duration {
	l := e.limits.Load()
	interval := min(l.HelloTimeout, l.HandshakeTimeout, l.IdleTimeout, l.LingerTimeout) / 4
	return max(10*time.Millisecond, min(interval, 5*time.Second))
}
