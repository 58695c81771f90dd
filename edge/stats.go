package edge

import (
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
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
	FailHandshake   FailReason = iota // TLS handshake error (bad ClientHello, TLS 1.2 only, alert, garbage)
	FailTimeout                       // nothing or too little sent before the handshake deadline
	FailOverload                      // connection or queue limit reached
	FailBackend                       // the backend could not be reached; the client got a refusal
	FailNoRoute                       // ALPN with no configured route
	FailNotTLS                        // the first bytes were no TLS handshake (plaintext HTTP on 443 got a 400)
	FailSourceLimit                   // refused at accept by a per-source limit
	numFailReasons
)

func (f FailReason) String() string {
	return [...]string{"handshake", "timeout", "overload", "backend", "no-route", "not-tls", "source-limit"}[f]
}

// durationBuckets are the upper bounds of the handshake and queue-wait
// histograms.
var durationBuckets = [...]time.Duration{
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
	handshake durationHistogram // from getting a slot to the end of the handshake
	queueWait durationHistogram // from the whole ClientHello to a handshake slot
	bytesIn   atomic.Uint64     // client to backend, proxied routes
	bytesOut  atomic.Uint64     // backend to client
}

func (s *listenerStats) observeHandshake(d time.Duration) { s.handshake.observe(d) }
func (s *listenerStats) observeQueueWait(d time.Duration) { s.queueWait.observe(d) }

// durationHistogram counts durations by durationBuckets, with atomics only.
type durationHistogram struct {
	counts [len(durationBuckets) + 1]atomic.Uint64
	sumNs  atomic.Uint64
}

func (h *durationHistogram) observe(d time.Duration) {
	i := 0
	for i < len(durationBuckets) && d > durationBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(d))
}

// read returns the cumulative counts per upper bound (Prometheus style),
// the total and the sum.
func (h *durationHistogram) read() (bounds []time.Duration, counts []uint64, total uint64, sum time.Duration) {
	for i := range h.counts {
		total += h.counts[i].Load()
		if i < len(durationBuckets) {
			bounds = append(bounds, durationBuckets[i])
			counts = append(counts, total)
		}
	}
	return bounds, counts, total, time.Duration(h.sumNs.Load())
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
	// Time in line for a handshake slot, from the whole ClientHello, in the
	// same buckets.
	QueueWaitBuckets []time.Duration
	QueueWaitCounts  []uint64
	QueueWaitCount   uint64
	QueueWaitSum     time.Duration
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

	WaitingForHello int64             // of Pending: parked until their ClientHello is whole
	HandshakeQueue  int64             // in line for a handshake slot
	Sources         int               // sources (IPv4 addresses, IPv6 /64s) tracked for the per-source limits
	SourceRefusals  map[string]uint64 // connections refused at accept, by the per-source limit that refused them
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
	ls.HandshakeBuckets, ls.HandshakeCounts, ls.HandshakeCount, ls.HandshakeSum = s.handshake.read()
	ls.QueueWaitBuckets, ls.QueueWaitCounts, ls.QueueWaitCount, ls.QueueWaitSum = s.queueWait.read()
	return ls
}

// sampledLog writes a line that can come in floods (refusals under attack)
// at most once per sampleEvery, saying how many it left out meanwhile.
type sampledLog struct {
	mu      sync.Mutex
	next    time.Time
	skipped int
}

const sampleEvery = 10 * time.Second

func (s *sampledLog) info(log *zap.Logger, msg string, fields ...zap.Field) {
	s.write(log.Info, msg, fields)
}

func (s *sampledLog) warn(log *zap.Logger, msg string, fields ...zap.Field) {
	s.write(log.Warn, msg, fields)
}

func (s *sampledLog) write(logf func(string, ...zap.Field), msg string, fields []zap.Field) {
	now := time.Now()
	s.mu.Lock()
	if now.Before(s.next) {
		s.skipped++
		s.mu.Unlock()
		return
	}
	skipped := s.skipped
	s.next, s.skipped = now.Add(sampleEvery), 0
	s.mu.Unlock()
	if skipped > 0 {
		fields = append(fields, zap.Int("similar_lines_left_out", skipped))
	}
	logf(msg, fields...)
}
