package web

import "time"

// EdgeStats are the edge's counters as the status page and the metrics
// read them. main copies them from edge.Snapshot: web does not import edge.
type EdgeStats struct {
	Listeners      []ListenerStats
	ActiveSessions int64 // proxied IMAP/SMTP connections
	Pending        int64 // accepted, waiting for or in the handshake
}

// ListenerStats are one listener's counters since the start.
type ListenerStats struct {
	Name, Address string
	Accepted      uint64
	Active        int64
	ECH           map[string]uint64 // by outcome: accepted, rejected, none
	Routes        map[string]uint64 // by route: imap, smtp, http, acme-tls
	Failures      map[string]uint64 // by reason: handshake, timeout, overload, backend, no-route
	// Handshake durations as a cumulative histogram: HandshakeCounts[i]
	// handshakes took at most HandshakeBuckets[i].
	HandshakeBuckets []time.Duration
	HandshakeCounts  []uint64
	HandshakeCount   uint64
	HandshakeSum     time.Duration
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
