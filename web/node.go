package web

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// NodeConfig makes the web server a node's: an edge in front of a relay
// elsewhere (docs/NODES.md). It answers the ECH configuration and its own
// status page itself, since those are the node's, and passes every other
// request for the relay's names on to the relay's HTTPS port: the site,
// /new, /mxdeliv, /relay, autoconfig and MTA-STS are the relay's. ACME
// HTTP-01 challenges are answered on :80 from the certificate storage
// (the service's WrapHTTP), TLS-ALPN-01 in the edge's handshake.
type NodeConfig struct {
	Name       string         // this node's, for the status page and metrics
	Relay      string         // host:port of the relay's HTTPS, fixed by the configuration
	RootCAs    *x509.CertPool // to verify the relay's certificate (for Domain); nil: the system's roots
	Reachable  *RelayReach    // how connections to the relay went; shared with the mail sessions
	IMAP, SMTP string         // where the mail sessions go, for the admin page
}

// Relay services, as RelayReach records them.
const (
	RelayIMAP  = "imap"
	RelaySMTP  = "smtp"
	RelayHTTPS = "https"
)

// RelayReach records how a node's connections to the relay went, per
// service: the last success, the last error and the counts. It is safe
// for concurrent use and outlives reloads.
type RelayReach struct {
	now func() time.Time
	mu  sync.Mutex
	by  []RelayServiceState // RelayIMAP, RelaySMTP, RelayHTTPS
}

// RelayServiceState is one service's record.
type RelayServiceState struct {
	Service     string
	LastSuccess time.Time // zero: none yet
	LastError   string
	LastErrorAt time.Time // zero: none yet
	Successes   uint64
	Errors      uint64
	LastWorked  bool // the last attempt's outcome
}

// Up tells whether the last attempt succeeded.
func (s RelayServiceState) Up() bool { return s.LastWorked }

func NewRelayReach() *RelayReach {
	r := &RelayReach{now: time.Now}
	for _, svc := range []string{RelayIMAP, RelaySMTP, RelayHTTPS} {
		r.by = append(r.by, RelayServiceState{Service: svc})
	}
	return r
}

// Record notes one connection to service (a session, a request, a probe):
// nil when it worked, else why not.
func (r *RelayReach) Record(service string, err error) {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.by {
		s := &r.by[i]
		if s.Service != service {
			continue
		}
		s.LastWorked = err == nil
		if err == nil {
			s.LastSuccess = now
			s.Successes++
		} else {
			s.LastError, s.LastErrorAt = err.Error(), now
			s.Errors++
		}
	}
}

// Snapshot is every service's record.
func (r *RelayReach) Snapshot() []RelayServiceState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]RelayServiceState(nil), r.by...)
}

// maxRelayBody bounds request bodies to the relay outside /mxdeliv: the
// relay's own limit for its account script (maxCGIBody), the only other
// path that takes a body.
const maxRelayBody = maxCGIBody

// newRelayUpstream proxies to the relay's HTTPS port over TLS, verifying
// its certificate for the mail domain (as SNI too). The relay's names
// keep their Host, since the relay answers www.<d> and autoconfig.<d>
// differently; the client's address goes in X-Forwarded-For and Forwarded
// (RFC 7239), and what a client sent of those is dropped (ReverseProxy
// with Rewrite removes them before Rewrite runs).
func newRelayUpstream(cfg Config, log *zap.Logger) *upstream {
	node := cfg.Node
	target := &url.URL{Scheme: "https", Host: node.Relay}
	// No maxBody: nodeHandler gives each request the relay's limit for its path.
	u := &upstream{name: "relay", target: target, probePath: "/", log: log.Named("proxy").With(zap.String("upstream", "relay"))}
	transport := &http.Transport{
		Proxy:       nil, // never an HTTP proxy from the environment
		DialContext: (&net.Dialer{Timeout: cfg.UpstreamDialTimeout}).DialContext,
		TLSClientConfig: &tls.Config{
			ServerName: cfg.Domain, RootCAs: node.RootCAs, MinVersion: tls.VersionTLS12,
			NextProtos:         []string{"http/1.1"}, // Upgrades (/relay) need HTTP/1.1
			ClientSessionCache: tls.NewLRUClientSessionCache(64),
		},
		TLSHandshakeTimeout:   cfg.UpstreamDialTimeout,
		ResponseHeaderTimeout: cfg.UpstreamTimeout,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       60 * time.Second,
		DisableCompression:    true,
	}
	reach := node.Reachable
	u.observe = func(err error) { reach.Record(RelayHTTPS, err) }
	u.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = target.Scheme, target.Host
			pr.Out.Host = pr.In.Host // one of the relay's names: nodeHandler checked it
			pr.SetXForwarded()
			pr.Out.Header.Set("Forwarded", forwardedElement(pr.In))
		},
		ModifyResponse: func(*http.Response) error {
			reach.Record(RelayHTTPS, nil)
			return nil
		},
		Transport:     transport,
		FlushInterval: -1,
		ErrorLog:      zap.NewStdLog(u.log),
		ErrorHandler:  u.fail,
	}
	return u
}

// forwardedElement is RFC 7239's Forwarded element for r: the client's
// address (§6: an IPv6 one quoted and in brackets), the Host it asked for
// and https.
func forwardedElement(r *http.Request) string {
	forFor := "unknown" // §6.3
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		forFor = ap.Addr().Unmap().String()
		if ap.Addr().Unmap().Is6() {
			forFor = `"[` + forFor + `]"`
		}
	}
	return fmt.Sprintf(`for=%s;host="%s";proto=https`, forFor, r.Host)
}

// nodeHandler serves a node's HTTPS requests for the relay's names: the
// node's own ECH configuration and status page here, everything else at
// the relay. Another Host gets 421 (RFC 9110 §15.5.20): the node passes
// requests only for what the relay serves, to nowhere but the relay.
func (s *Server) nodeHandler() http.Handler {
	local := http.NewServeMux()
	local.HandleFunc("GET /.well-known/origin-svcb", s.originSVCB)
	local.HandleFunc("GET /status", s.publicStatus)
	d := s.cfg.Domain
	names := map[string]bool{d: true, "www." + d: true, "mta-sts." + d: true, "autoconfig." + d: true}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !names[requestHost(r)] {
			requestLog(s.log, r).Info("not a name of the relay, not passed on", zap.String("host", r.Host))
			http.Error(w, "421 misdirected request: this server answers for "+d+" only", http.StatusMisdirectedRequest)
			return
		}
		if h, pattern := local.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		limit := int64(maxRelayBody)
		if r.URL.Path == "/mxdeliv" || strings.HasPrefix(r.URL.Path, "/mxdeliv/") {
			limit = s.cfg.MaxMessageSize
		}
		s.relay.serveWithin(w, r, limit)
	})
}

// nodeView is what the status page shows of a node.
type nodeView struct {
	Name  string
	Relay string // admin page only
	IMAP  string // admin page only
	SMTP  string // admin page only
	Reach []relayReachView
}

type relayReachView struct {
	Service, State, LastSuccess string
	LastError, LastErrorAt      string // admin page only
	Errors                      uint64 // admin page only
}

func (s *Server) nodeViewOf(now time.Time, admin bool) *nodeView {
	n := s.cfg.Node
	if n == nil {
		return nil
	}
	v := &nodeView{Name: n.Name}
	if admin {
		v.Relay, v.IMAP, v.SMTP = n.Relay, n.IMAP, n.SMTP
	}
	for _, st := range n.Reachable.Snapshot() {
		rv := relayReachView{Service: st.Service, State: "unknown", LastSuccess: "never"}
		switch {
		case st.Up():
			rv.State = "up"
		case !st.LastErrorAt.IsZero():
			rv.State = "down"
		}
		if !st.LastSuccess.IsZero() {
			rv.LastSuccess = formatDuration(now.Sub(st.LastSuccess)) + " ago"
		}
		if admin {
			rv.Errors = st.Errors
			if !st.LastErrorAt.IsZero() {
				rv.LastError, rv.LastErrorAt = st.LastError, st.LastErrorAt.UTC().Format(time.RFC3339)
			}
		}
		v.Reach = append(v.Reach, rv)
	}
	return v
}

// nodeCollector adds a node's metrics (docs/METRICS.md).
type nodeCollector struct {
	node                                      *NodeConfig
	info, lastSuccess, lastError, connections *prometheus.Desc
}

func newNodeCollector(n *NodeConfig) *nodeCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(metricsPrefix+name, help, labels, nil)
	}
	return &nodeCollector{
		node:        n,
		info:        d("node_info", "Always 1 on a node (an edge in front of a relay elsewhere); the node label is its name.", "node"),
		lastSuccess: d("relay_last_success_timestamp_seconds", "When a connection to the relay last worked (a session, a request or a probe), by service: imap, smtp, https. Absent if never.", "service"),
		lastError:   d("relay_last_error_timestamp_seconds", "When a connection to the relay last failed, by service. Absent if never.", "service"),
		connections: d("relay_connections_total", "Connections to the relay (sessions, requests, probes) by service and outcome: ok or error.", "service", "outcome"),
	}
}

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.lastSuccess, c.lastError, c.connections} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, c.node.Name)
	for _, st := range c.node.Reachable.Snapshot() {
		if !st.LastSuccess.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.lastSuccess, prometheus.GaugeValue, float64(st.LastSuccess.Unix()), st.Service)
		}
		if !st.LastErrorAt.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.lastError, prometheus.GaugeValue, float64(st.LastErrorAt.Unix()), st.Service)
		}
		ch <- prometheus.MustNewConstMetric(c.connections, prometheus.CounterValue, float64(st.Successes), st.Service, "ok")
		ch <- prometheus.MustNewConstMetric(c.connections, prometheus.CounterValue, float64(st.Errors), st.Service, "error")
	}
}
