package edge

import (
	"sync/atomic"
	"time"
)

// ECHOutcome says what became of a connection's Encrypted Client Hello.
type ECHOutcome uint8

const (
	ECHNone     ECHOutcome = iota // the client sent no ECH extension
	ECHAccepted                   // the inner ClientHello was decrypted
	ECHRejected                   // ECH offered (stale config or GREASE) but not decrypted; retry configs sent
	numECHOutcomes
)

func (o ECHOutcome) String() string {
	switch o {
	case ECHAccepted:
		return "accepted"
	case ECHRejected:
		return "rejected"
	default:
		return "none"
	}
}

// Route is where a connection goes after its handshake.
type Route uint8

const (
	RouteNone Route = iota // closed before routing
	RouteIMAP
	RouteSMTP
	RouteHTTP
	RouteACME // a TLS-ALPN-01 validation handshake; nothing follows it
	numRoutes
)

func (r Route) String() string {
	switch r {
	case RouteIMAP:
		return "imap"
	case RouteSMTP:
		return "smtp"
	case RouteHTTP:
		return "http"
	case RouteACME:
		return "acme-tls"
	default:
		return "none"
	}
}

// FailReason classifies connections that never got routed or were cut short.
type FailReason uint8

const (
	FailHandshake FailReason = iota // TLS handshake error (bad ClientHello, TLS 1.2 only, alert, garbage)
	FailTimeout                     // nothing or too little sent before the handshake deadline
	FailOverload                    // connection or queue limit reached
	FailBackend                     // the backend could not be reached; the client got a refusal
	FailNoRoute                     // ALPN with no configured route
	numFailReasons
)

func (f FailReason) String() string {
	return [...]string{"handshake", "timeout", "overload", "backend", "no-route"}[f]
}

// handshakeBuckets are the upper bounds of the handshake duration histogram.
var handshakeBuckets = [...]time.Duration{
	time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// listenerStats are the counters of one listener, updated with atomics only.
type listenerStats struct {
	accepted  atomic.Uint64
	active    atomic.Int64 // from accept to close, whatever the stage
	ech       [numECHOutcomes]atomic.Uint64
	routes    [numRoutes]atomic.Uint64
	failures  [numFailReasons]atomic.Uint64
	hsBuckets [len(handshakeBuckets) + 1]atomic.Uint64
	hsSumNs   atomic.Uint64
	bytesIn   atomic.Uint64 // client to backend, proxied routes
	bytesOut  atomic.Uint64 // backend to client
}

func (s *listenerStats) observeHandshake(d time.Duration) {
	i := 0
	for i < len(handshakeBuckets) && d > handshakeBuckets[i] {
		i++
	}
	s.hsBuckets[i].Add(1)
	s.hsSumNs.Add(uint64(d))
}

// ListenerSnapshot is a point-in-time copy of one listener's counters.
type ListenerSnapshot struct {
	Name     string
	Address  string
	Accepted uint64
	Active   int64
	ECH      map[string]uint64 // by ECHOutcome.String()
	Routes   map[string]uint64 // by Route.String()
	Failures map[string]uint64 // by FailReason.String()
	// Handshake durations: cumulative counts per upper bound (Prometheus style;
	// the last bucket, +Inf, equals HandshakeCount).
	HandshakeBuckets []time.Duration
	HandshakeCounts  []uint64
	HandshakeCount   uint64
	HandshakeSum     time.Duration
	BytesIn          uint64
	BytesOut         uint64
}

// Snapshot is what the status page and metrics read.
type Snapshot struct {
	Listeners      []ListenerSnapshot
	ActiveSessions int64 // proxied IMAP/SMTP connections
	Pending        int64 // accepted, waiting for or in the handshake
	Parked         bool  // idle connections wait in the poller (no goroutine each)
	BusyPumps      int64 // directions moving data right now; parked ones hold no goroutine
	ECHConfigID    uint8
	ECHKeys        int
}

func (s *listenerStats) snapshot(name, addr string) ListenerSnapshot {
	ls := ListenerSnapshot{
		Name:     name,
		Address:  addr,
		Accepted: s.accepted.Load(),
		Active:   s.active.Load(),
		ECH:      make(map[string]uint64, numECHOutcomes),
		Routes:   make(map[string]uint64, numRoutes),
		Failures: make(map[string]uint64, numFailReasons),
		BytesIn:  s.bytesIn.Load(),
		BytesOut: s.bytesOut.Load(),
	}
	for o := range numECHOutcomes {
		ls.ECH[o.String()] = s.ech[o].Load()
	}
	for r := RouteIMAP; r < numRoutes; r++ {
		ls.Routes[r.String()] = s.routes[r].Load()
	}
	for f := range numFailReasons {
		ls.Failures[f.String()] = s.failures[f].Load()
	}
	var cum uint64
	for i := range s.hsBuckets {
		cum += s.hsBuckets[i].Load()
		if i < len(handshakeBuckets) {
			ls.HandshakeBuckets = append(ls.HandshakeBuckets, handshakeBuckets[i])
			ls.HandshakeCounts = append(ls.HandshakeCounts, cum)
		}
	}
	ls.HandshakeCount = cum
	ls.HandshakeSum = time.Duration(s.hsSumNs.Load())
	return ls
}
