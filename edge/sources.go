package edge

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Per-source limits. One host must not be able to lock others out: by
// holding every connection slot, by keeping the handshake line full, or by
// opening connections faster than the edge can turn them away. Each source
// (an IPv4 address or an IPv6 /64) has its own counts; a connection over a
// limit is refused at accept, with a reset, before it costs anything.

// sourceKey is the source a remote address counts against: the IPv4
// address, or the IPv6 address's /64.
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is4() {
		return a
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.Addr()
}

// source is one source's counts. A nil *source is an exempt one.
type source struct {
	key        netip.Addr
	conns      int     // connections in any stage
	handshakes int     // connections not yet through their handshake
	allowance  float64 // new connections it may open now (a token bucket)
	refilled   int64   // unix nanoseconds of the last refill
}

// sourceTable holds the sources that have connections, or opened some
// recently enough that their allowance is not full again.
type sourceTable struct {
	mu sync.Mutex
	m  map[netip.Addr]*source
}

func newSourceTable() *sourceTable {
	return &sourceTable{m: make(map[netip.Addr]*source)}
}

// sourceRefusal says which per-source limit refused a connection.
type sourceRefusal uint8

const (
	sourceOK sourceRefusal = iota
	sourceTooFast
	sourceTooManyConns
	sourceTooManyHandshakes
)

func (r sourceRefusal) String() string {
	return [...]string{"ok", "new connections per second", "connections", "handshakes"}[r]
}

// burstSeconds is how many seconds of NewPerSecond a quiet source may open
// at once: a NAT's clients reconnecting together after a network change.
const burstSeconds = 5

// admit counts a new connection from remote, or says which limit refuses
// it. It returns nil for a source the limits do not apply to.
func (t *sourceTable) admit(remote netip.Addr, lim *SourceLimits, now time.Time) (*source, sourceRefusal) {
	remote = remote.Unmap()
	if exempt(lim.Exempt, remote) {
		return nil, sourceOK
	}
	key := sourceKey(remote)
	nowNs := now.UnixNano()
	burst := float64(lim.NewPerSecond * burstSeconds)
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.m[key]
	if s == nil {
		s = &source{key: key, allowance: burst, refilled: nowNs}
		t.m[key] = s
	}
	s.refill(nowNs, lim, burst)
	switch {
	case s.allowance < 1:
		return nil, sourceTooFast
	case s.conns >= lim.MaxConnections:
		return nil, sourceTooManyConns
	case s.handshakes >= lim.MaxHandshakes:
		return nil, sourceTooManyHandshakes
	}
	s.allowance--
	s.conns++
	s.handshakes++
	return s, sourceOK
}

func (s *source) refill(nowNs int64, lim *SourceLimits, burst float64) {
	if elapsed := nowNs - s.refilled; elapsed > 0 {
		s.allowance = min(burst, s.allowance+float64(elapsed)*float64(lim.NewPerSecond)/1e9)
		s.refilled = nowNs
	}
}

func exempt(nets []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(nets, func(p netip.Prefix) bool { return p.Contains(a) })
}

// handshakeDone counts s's connection as through (or out of) its handshake.
func (t *sourceTable) handshakeDone(s *source) {
	if s == nil {
		return
	}
	t.mu.Lock()
	s.handshakes--
	t.mu.Unlock()
}

// closed counts s's connection out. The entry stays until its allowance is
// full again (sweep), so that closing connections does not reset the rate.
func (t *sourceTable) closed(s *source) {
	if s == nil {
		return
	}
	t.mu.Lock()
	s.conns--
	t.mu.Unlock()
}

// sweep forgets the sources without connections whose allowance is full.
func (t *sourceTable) sweep(lim *SourceLimits, now time.Time) {
	nowNs := now.UnixNano()
	burst := float64(lim.NewPerSecond * burstSeconds)
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, s := range t.m {
		if s.conns > 0 {
			continue
		}
		s.refill(nowNs, lim, burst)
		if s.allowance >= burst {
			delete(t.m, k)
		}
	}
}

// size is the number of sources tracked.
func (t *sourceTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
