package edge

import (
	"errors"
	"time"
)

// Limits are the timeouts and limits a running edge can change (on a
// reload). New connections get the new values; the sweeper applies the
// idle and linger timeouts to every session from its next round, counted
// from the session's last activity, as a restart would.
type Limits struct {
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	LingerTimeout    time.Duration
	BackendTimeout   time.Duration
	MaxConnections   int
	// MaxHandshakes is the number of handshake workers. A worker busy in a
	// handshake when it is lowered ends once that handshake is done.
	MaxHandshakes int
}

func (c *Config) limits() Limits {
	return Limits{
		HandshakeTimeout: c.HandshakeTimeout, IdleTimeout: c.IdleTimeout, LingerTimeout: c.LingerTimeout,
		BackendTimeout: c.BackendTimeout, MaxConnections: c.MaxConnections, MaxHandshakes: c.MaxHandshakes,
	}
}

// Limits returns the limits in force.
func (e *Edge) Limits() Limits { return *e.limits.Load() }

// SetLimits changes the limits for what happens from now on; established
// connections stay. Zero values keep the current ones. The handshake queue
// keeps the size MaxConnections had at New: a larger MaxConnections may
// still refuse handshakes beyond that number when they all queue at once.
func (e *Edge) SetLimits(l Limits) error {
	if l.HandshakeTimeout < 0 || l.IdleTimeout < 0 || l.LingerTimeout < 0 || l.BackendTimeout < 0 || l.MaxConnections < 0 || l.MaxHandshakes < 0 {
		return errors.New("edge limits: negative value")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	cur := *e.limits.Load()
	keep := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	keep(&l.HandshakeTimeout, cur.HandshakeTimeout)
	keep(&l.IdleTimeout, cur.IdleTimeout)
	keep(&l.LingerTimeout, cur.LingerTimeout)
	keep(&l.BackendTimeout, cur.BackendTimeout)
	if l.MaxConnections == 0 {
		l.MaxConnections = cur.MaxConnections
	}
	if l.MaxHandshakes == 0 {
		l.MaxHandshakes = cur.MaxHandshakes
	}
	e.limits.Store(&l)
	e.resizeHandshakeWorkers(l.MaxHandshakes)
	select {
	case e.limitsChanged <- struct{}{}:
	default: // the sweeper has a notice pending already
	}
	return nil
}

// resizeHandshakeWorkers starts workers until n run, or wakes the idle ones
// so that the surplus ends. Called with e.mu held, which orders it before
// Shutdown's wait for the workers: Shutdown closes e.stop before it takes
// e.mu.
func (e *Edge) resizeHandshakeWorkers(n int) {
	select {
	case <-e.stop:
		return
	default:
	}
	e.wantWorkers = n
	if !e.started {
		return // Start starts them
	}
	for ; e.workers < n; e.workers++ {
		e.wg.Go(e.handshakeWorker)
	}
	e.workerSurplus.Store(int32(e.workers - n))
	if e.workers > n {
		wake := make(chan struct{})
		close(*e.retireWorkers.Swap(&wake))
	}
}

// retireWorker reports whether the calling handshake worker is one too
// many, and if so counts it out.
func (e *Edge) retireWorker() bool {
	if e.workerSurplus.Load() <= 0 {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.workers <= e.wantWorkers {
		return false
	}
	e.workers--
	e.workerSurplus.Store(int32(e.workers - e.wantWorkers))
	return true
}
