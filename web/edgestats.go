package web

import "time"

// EdgeStats are the edge's counters as the status page and the metrics
// read them. main copies them from edge.Snapshot: web does not import edge.
type EdgeStats struct {
	Listeners       []ListenerStats
	ActiveSessions  int64             // proxied IMAP/SMTP connections
	Pending         int64             // accepted, waiting for or in the handshake
	WaitingForHello int64             // of Pending: still sending their ClientHello
	HandshakeQueue  int64             // in line for a handshake slot
	SourceRefusals  map[string]uint64 // refused at accept, by per-address limit
}

// ListenerStats are one listener's counters since the start.
type ListenerStats struct {
	Name, Address string
	Accepted      uint64
	Active        int64
	ECH           map[string]uint64 // by outcome: accepted, rejected, none
	Routes        map[string]uint64 // by route: imap, smtp, http, acme-tls
	Failures      map[string]uint64 // by reason: handshake, timeout, overload, backend, no-route, not-tls, source-limit
	// Handshake durations as a cumulative histogram: HandshakeCounts[i]
	// handshakes took at most HandshakeBuckets[i].
	HandshakeBuckets []time.Duration
	HandshakeCounts  []uint64
	HandshakeCount   uint64
	HandshakeSum     time.Duration
	// Time in line for a handshake slot after the ClientHello, in the same
	// buckets.
	QueueWaitBuckets []time.Duration
	QueueWaitCounts  []uint64
	QueueWaitCount   uint64
	QueueWaitSum     time.Duration
	BytesIn          uint64 // client to backend
	BytesOut         uint64 // backend to client
}

// failureBackend is the failure reason of a backend that could not be dialed.
const failureBackend = "backend"

func (s *Server) edgeStats() EdgeStats {
	if s.deps.EdgeStats == nil {
		return EdgeStats{}
	}
	return s.deps.EdgeStats()
}

// quantile is the upper bound of the bucket that holds the q-quantile of a
// cumulative histogram, or 0 when it is empty; above the last bound it is
// -1 (more than the largest).
func quantile(bounds []time.Duration, counts []uint64, total uint64, q float64) time.Duration {
	if total == 0 {
		return 0
	}
	rank := uint64(q * float64(total))
	if rank == 0 {
		rank = 1
	}
	for i, c := range counts {
		if c >= rank {
			return bounds[i]
		}
	}
	return -1
}

// formatBound shows a quantile from quantile for the admin page.
func formatBound(d time.Duration, last time.Duration) string {
	switch {
	case d == 0:
		return "–"
	case d < 0:
		return "> " + last.String()
	}
	return "≤ " + d.String()
}

func lastBound(bounds []time.Duration) time.Duration {
	if len(bounds) == 0 {
		return 0
	}
	return bounds[len(bounds)-1]
}
