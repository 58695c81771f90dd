package web

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// metricsPrefix starts every metric name of ours.
const metricsPrefix = "chatmail_edge_"

// newRegistry is the server's own Prometheus registry (never the global
// default): Go runtime and process metrics plus the edge's, read from
// the counters at scrape time.
func (s *Server) newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newEdgeCollector(s),
		newStoreCollector(s),
	)
	if s.cfg.Node != nil {
		reg.MustRegister(newNodeCollector(s.cfg.Node))
	}
	return reg
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{
		ErrorLog:            zap.NewStdLog(s.log.Named("metrics")),
		MaxRequestsInFlight: 4,
	})
}

// edgeCollector turns the edge's counters, the certificates and the health
// checks into metrics on every scrape. Documented in docs/METRICS.md.
type edgeCollector struct {
	s *Server

	buildInfo, accepted, active, routed, handshakes, handshakeSeconds *prometheus.Desc
	queueWaitSeconds, waitingForHello, handshakeQueue, sourceRefusals *prometheus.Desc
	failures, backendDialErrors, bytes, sessions, pending             *prometheus.Desc
	echKeys, echCreated, metadataCurrent                              *prometheus.Desc
	certExpiry, acmeError, acmeLastError, acmeNextAttempt             *prometheus.Desc
	serviceUp, probeSeconds, probeFailures, upstreamErrors            *prometheus.Desc
}

func newEdgeCollector(s *Server) *edgeCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(metricsPrefix+name, help, labels, nil)
	}
	return &edgeCollector{
		s:                 s,
		buildInfo:         d("build_info", "Always 1; the version label says which build runs.", "version"),
		accepted:          d("connections_accepted_total", "TCP connections accepted.", "listener"),
		active:            d("connections_active", "Connections open now, in any stage.", "listener"),
		routed:            d("connections_routed_total", "Connections routed after their TLS handshake, by route (imap, smtp, http, acme-tls).", "listener", "route"),
		handshakes:        d("handshakes_total", "Completed TLS handshakes by ECH outcome: accepted, rejected (stale config or GREASE; retry configs sent) or none.", "listener", "ech"),
		handshakeSeconds:  d("handshake_duration_seconds", "Time from getting a handshake slot to the end of the TLS handshake (waits for the client included).", "listener"),
		queueWaitSeconds:  d("handshake_queue_wait_seconds", "Time from the whole ClientHello to a handshake slot: the time in line.", "listener"),
		waitingForHello:   d("connections_waiting_for_hello", "Connections still sending their ClientHello (they hold no handshake slot)."),
		handshakeQueue:    d("handshake_queue", "Connections with their ClientHello in line for a handshake slot."),
		sourceRefusals:    d("source_refusals_total", "Connections refused at accept by a per-address limit (connections, handshakes, new connections per second).", "limit"),
		failures:          d("connection_failures_total", "Connections closed before or while routing, by reason (handshake, timeout, overload, no-route, not-tls, source-limit). Backend dial failures are in backend_dial_errors_total.", "listener", "reason"),
		backendDialErrors: d("backend_dial_errors_total", "IMAP/SMTP connections whose backend (Dovecot, Postfix) could not be reached; the client got BYE or 421.", "listener"),
		bytes:             d("proxied_bytes_total", "Bytes proxied between clients and mail backends.", "listener", "direction"),
		sessions:          d("sessions_active", "Proxied IMAP/SMTP sessions open now."),
		pending:           d("handshakes_pending", "Connections waiting for or in their TLS handshake."),
		echKeys:           d("ech_keys", "ECH keys held (the newest is published, older ones still decrypt)."),
		echCreated:        d("ech_current_key_created_timestamp_seconds", "When the published ECH key was created.", "config_id"),
		metadataCurrent:   d("ech_metadata_file_current", "1 if the IMAP METADATA file holds the published ECH config list; 0 while writing it fails and is retried.", "file"),
		certExpiry:        d("certificate_expiry_timestamp_seconds", "NotAfter of each certificate served.", "cert", "source"),
		acmeError:         d("acme_error", "1 while the last attempt to obtain or renew the certificate failed.", "cert"),
		acmeLastError:     d("acme_last_error_timestamp_seconds", "When obtaining or renewing the certificate last failed (absent if never).", "cert"),
		acmeNextAttempt:   d("acme_next_attempt_timestamp_seconds", "When the next attempt to obtain or renew the certificate is due.", "cert"),
		serviceUp:         d("service_up", "1 if the last health probe of the service (Dovecot, Postfix, filtermail, iroh-relay; on a node the relay's IMAP, SMTP and HTTPS) succeeded.", "service"),
		probeSeconds:      d("service_probe_duration_seconds", "Duration of the last health probe.", "service"),
		probeFailures:     d("service_probe_failures_total", "Failed health probes.", "service"),
		upstreamErrors:    d("upstream_errors_total", "HTTP requests answered 502 because the upstream (filtermail, iroh-relay, or a node's relay) could not be reached or did not answer.", "upstream"),
	}
}

func (c *edgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.buildInfo, c.accepted, c.active, c.routed, c.handshakes, c.handshakeSeconds,
		c.queueWaitSeconds, c.waitingForHello, c.handshakeQueue, c.sourceRefusals,
		c.failures, c.backendDialErrors, c.bytes, c.sessions, c.pending, c.echKeys, c.echCreated, c.metadataCurrent,
		c.certExpiry, c.acmeError, c.acmeLastError, c.acmeNextAttempt,
		c.serviceUp, c.probeSeconds, c.probeFailures, c.upstreamErrors,
	} {
		ch <- d
	}
}

func (c *edgeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(c.buildInfo, 1, s.cfg.Version)

	st := s.edgeStats()
	gauge(c.sessions, float64(st.ActiveSessions))
	gauge(c.pending, float64(st.Pending))
	gauge(c.waitingForHello, float64(st.WaitingForHello))
	gauge(c.handshakeQueue, float64(st.HandshakeQueue))
	for limit, n := range st.SourceRefusals {
		counter(c.sourceRefusals, n, limit)
	}
	histogram := func(d *prometheus.Desc, bounds []time.Duration, counts []uint64, total uint64, sum time.Duration, labels ...string) {
		buckets := make(map[float64]uint64, len(bounds))
		for i, b := range bounds {
			buckets[b.Seconds()] = counts[i]
		}
		ch <- prometheus.MustNewConstHistogram(d, total, sum.Seconds(), buckets, labels...)
	}
	for _, l := range st.Listeners {
		counter(c.accepted, l.Accepted, l.Name)
		gauge(c.active, float64(l.Active), l.Name)
		for route, n := range l.Routes {
			counter(c.routed, n, l.Name, route)
		}
		for outcome, n := range l.ECH {
			counter(c.handshakes, n, l.Name, outcome)
		}
		for reason, n := range l.Failures {
			if reason == failureBackend {
				counter(c.backendDialErrors, n, l.Name)
			} else {
				counter(c.failures, n, l.Name, reason)
			}
		}
		histogram(c.handshakeSeconds, l.HandshakeBuckets, l.HandshakeCounts, l.HandshakeCount, l.HandshakeSum, l.Name)
		histogram(c.queueWaitSeconds, l.QueueWaitBuckets, l.QueueWaitCounts, l.QueueWaitCount, l.QueueWaitSum, l.Name)
		counter(c.bytes, l.BytesIn, l.Name, "in")
		counter(c.bytes, l.BytesOut, l.Name, "out")
	}

	if s.deps.ECHKey != nil {
		k := s.deps.ECHKey()
		gauge(c.echKeys, float64(k.Keys))
		gauge(c.echCreated, float64(k.Created.Unix()), strconv.Itoa(int(k.ConfigID)))
		if m := k.Metadata; m.Path != "" {
			gauge(c.metadataCurrent, boolGauge(m.Current), m.Path)
		}
	}
	for _, cert := range s.certs() {
		name := strings.Join(cert.Names, ",")
		if !cert.NotAfter.IsZero() {
			gauge(c.certExpiry, float64(cert.NotAfter.Unix()), name, cert.Source)
		}
		gauge(c.acmeError, boolGauge(cert.LastError != ""), name)
		if !cert.LastErrorAt.IsZero() {
			gauge(c.acmeLastError, float64(cert.LastErrorAt.Unix()), name)
		}
		if !cert.NextAttempt.IsZero() {
			gauge(c.acmeNextAttempt, float64(cert.NextAttempt.Unix()), name)
		}
	}
	for _, h := range s.Health() {
		if h.Checked.IsZero() {
			continue
		}
		gauge(c.serviceUp, boolGauge(h.Up), h.Name)
		gauge(c.probeSeconds, h.Latency.Seconds(), h.Name)
		counter(c.probeFailures, h.Failures, h.Name)
	}
	for _, up := range s.upstreams {
		counter(c.upstreamErrors, up.errors.Load(), up.name)
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
