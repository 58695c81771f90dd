// Package web serves everything the relay offers over HTTP, as chatmail's
// nginx did: the site, the MTA-STS policy, autoconfig, the ECH
// configuration, account creation, the reverse proxies to filtermail and
// iroh-relay, the :80 redirect, and on a loopback admin listener the
// detailed status page and the metrics.
package web

import (
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/assets"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Config is the web part of the edge's configuration. Zero values take the
// defaults of chatmail's nginx.
type Config struct {
	Domain    string // the mail domain, e.g. chat.example.org
	HTTPSPort int    // public HTTPS port, for redirects (443 is left out of URLs)
	Version   string // shown on the status page

	// SelfMode is chatmail's self-signed mode (mail_domain starting with
	// "_" or an IP address): GET /new runs the account script instead of
	// redirecting to the app, under a per-address rate limit.
	SelfMode bool
	// SiteDir is the website folder; when it does not exist the embedded
	// default site is served. "" serves the embedded site only.
	SiteDir string
	// NewAccountCGI is chatmail's newemail.py, run as a CGI script for /new;
	// "" uses Deps.NewAccount instead.
	NewAccountCGI string
	// NewAccountTimeout bounds one run of the account script. Default 30s.
	NewAccountTimeout time.Duration

	// MXDeliv and IrohRelay are the fixed upstreams of /mxdeliv and of
	// /relay, /ping, /generate_204, e.g. DefaultMXDeliv and
	// DefaultIrohRelay; "" disables the paths.
	MXDeliv   string
	IrohRelay string
	// MaxMessageSize bounds /mxdeliv bodies (chatmail.ini max_message_size).
	MaxMessageSize int64
	// UpstreamDialTimeout bounds connecting to an upstream, and
	// UpstreamTimeout the wait for its response headers.
	UpstreamDialTimeout time.Duration // default 5s
	UpstreamTimeout     time.Duration // default 60s

	MTASTS     MTASTSConfig
	Autoconfig AutoconfigPorts

	// ProbeInterval is how often service health is checked. Default 30s.
	ProbeInterval time.Duration

	// AccessLog logs every request of the HTTPS and plain-HTTP handlers,
	// one line each in nginx's combined format (accesslog.go).
	AccessLog bool

	// Node, if set, makes this a node's web server (node.go): HTTPS
	// requests go to the relay; the site, CGI and upstreams are not used.
	Node *NodeConfig
}

// Deps are what the web server reads from the rest of the edge. Only Log
// and ECHConfigList are required.
type Deps struct {
	Log *zap.Logger
	// ECHConfigList returns the published ECHConfigList (current key only).
	ECHConfigList func() []byte
	// ECHKey describes the current ECH key for the status page.
	ECHKey func() ECHKeyInfo
	// NewAccount creates a chatmail account (the demo's local delivery),
	// used when Config.NewAccountCGI is ""; nil answers POST /new with 503.
	NewAccount func() (email, password string, err error)
	// Certs reports the certificates for the status page and metrics.
	Certs acme.StatusSource
	// EdgeStats copies the edge's connection counters.
	EdgeStats func() EdgeStats
	// Probes check the mail backends (real IMAP/SMTP dialogues).
	Probes []Probe
	// Recent holds the latest warnings and errors for the admin page.
	Recent *RecentLog
	// Started is when the edge started, for the uptime: a reload builds a
	// new Server but the process keeps running. Zero is now.
	Started time.Time
	// Store is the health of the shared store of several nodes; nil
	// without one.
	Store func() StoreHealth
}

// ECHKeyInfo is what the status page shows of the current ECH key: nothing
// secret.
type ECHKeyInfo struct {
	ConfigID   uint8
	PublicName string
	Created    time.Time
	Keys       int // keys held, the current one included
	// Metadata is the file the config list is published in for chatmail's
	// IMAP METADATA; shown on the admin page only.
	Metadata MetadataFileState
}

// MetadataFileState says whether the METADATA file holds the published ECH
// config list.
type MetadataFileState struct {
	Path           string // "" when no file is configured
	Current        bool
	Error          string    // the last failed write, while not current
	FailedAttempts int       // failed writes since it was last current
	FailingSince   time.Time // the first failed write of this episode
	NextAttempt    time.Time // the next retry, while not current
}

// Server holds the HTTPS handler, the plain-HTTP (:80) handler and the
// admin handler.
type Server struct {
	cfg     Config
	deps    Deps
	log     *zap.Logger
	started time.Time
	now     func() time.Time // the clock; tests replace it

	mux       *http.ServeMux
	site      *site
	newAcct   *newAccounts
	upstreams []*upstream
	relay     *upstream // a node's relay, also in upstreams; nil on the relay
	health    *health
	status    *template.Template
	registry  *prometheus.Registry
}

// The upstreams of a chatmail relay: filtermail's HTTP delivery port
// (filtermail_http_port_incoming) and iroh-relay.
const (
	DefaultMXDeliv   = "http://127.0.0.1:10082"
	DefaultIrohRelay = "http://127.0.0.1:3340"
)

const (
	defaultMaxMessageSize   = 31457280 // chatmaild's max_message_size
	defaultUpstreamDial     = 5 * time.Second
	defaultUpstreamResponse = 60 * time.Second
	defaultProbeInterval    = 30 * time.Second
)

func (c *Config) setDefaults() {
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = defaultMaxMessageSize
	}
	if c.UpstreamDialTimeout <= 0 {
		c.UpstreamDialTimeout = defaultUpstreamDial
	}
	if c.UpstreamTimeout <= 0 {
		c.UpstreamTimeout = defaultUpstreamResponse
	}
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = defaultProbeInterval
	}
	if c.NewAccountTimeout <= 0 {
		c.NewAccountTimeout = defaultCGITimeout
	}
	c.MTASTS.setDefaults()
	c.Domain = strings.ToLower(c.Domain)
}

// New checks cfg and builds the handlers. Nothing runs until the handlers
// are served and WatchHealth is started.
func New(cfg Config, deps Deps) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.MTASTS.validate(); err != nil {
		return nil, err
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	s := &Server{cfg: cfg, deps: deps, log: deps.Log, started: deps.Started, now: time.Now, mux: http.NewServeMux()}
	if s.started.IsZero() {
		s.started = time.Now()
	}
	s.site = &site{dir: cfg.SiteDir, log: deps.Log}
	s.newAcct = newNewAccounts(cfg, deps)
	for _, u := range []struct{ name, url string }{{"filtermail", cfg.MXDeliv}, {"iroh-relay", cfg.IrohRelay}} {
		if u.url == "" {
			continue
		}
		up, err := newUpstream(u.name, u.url, cfg, deps.Log)
		if err != nil {
			return nil, err
		}
		s.upstreams = append(s.upstreams, up)
	}
	if n := cfg.Node; n != nil {
		if n.Relay == "" || n.Reachable == nil {
			return nil, errors.New("node web server: no relay address or reachability record")
		}
		s.relay = newRelayUpstream(cfg, deps.Log)
		s.upstreams = append(s.upstreams, s.relay)
	}
	s.health = newHealth(s.probes(), deps.Log)
	var err error
	if s.status, err = template.New("status").Parse(assets.StatusTemplate()); err != nil {
		return nil, fmt.Errorf("parse the status page template: %w", err)
	}
	s.registry = s.newRegistry()
	s.routes()
	return s, nil
}

// routes mirrors the locations of chatmail's nginx site (nginx.conf.j2).
func (s *Server) routes() {
	s.mux.HandleFunc("GET /.well-known/origin-svcb", s.originSVCB)
	s.mux.HandleFunc("GET /.well-known/mta-sts.txt", s.mtaSTSPolicy)
	s.mux.HandleFunc("GET "+autoconfigWellKnown, s.autoconfig)
	s.mux.HandleFunc("GET /status", s.publicStatus)
	handlePrefix(s.mux, "/new", http.HandlerFunc(s.newAccount))
	handlePrefix(s.mux, "/cgi-bin/newemail.py", http.HandlerFunc(s.newAccount))
	for _, up := range s.upstreams {
		for _, p := range up.paths() {
			handlePrefix(s.mux, p, up)
		}
	}
	s.mux.Handle("/", s.site)
}

// handlePrefix serves h for path and everything below it, as an nginx
// prefix location does (without matching /newer for /new).
func handlePrefix(mux *http.ServeMux, path string, h http.Handler) {
	mux.Handle(path, h)
	mux.Handle(path+"/", h)
}

// Handler serves HTTPS requests: www.<d> is redirected to <d>, the
// autoconfig.<d> host serves its one document, and every other name
// (mta-sts.<d>, <d>, an unknown or missing one) gets the relay's site, like
// nginx's default_server.
//
// A node's requests go to the relay instead (nodeHandler).
func (s *Server) Handler() http.Handler {
	if s.cfg.Node != nil {
		return s.accessLogged(s.nodeHandler())
	}
	return s.accessLogged(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch requestHost(r) {
		case "www." + s.cfg.Domain:
			// nginx: return 301 $scheme://<d>$request_uri
			http.Redirect(w, r, s.origin()+r.URL.RequestURI(), http.StatusMovedPermanently)
			return
		case "autoconfig." + s.cfg.Domain:
			if r.URL.Path == autoconfigHostPath {
				if r.Method != http.MethodGet && r.Method != http.MethodHead {
					methodNotAllowed(w, "GET, HEAD")
					return
				}
				s.autoconfig(w, r)
				return
			}
		}
		s.mux.ServeHTTP(w, r)
	}))
}

// accessLogged adds the access log to h when it is on.
func (s *Server) accessLogged(h http.Handler) http.Handler {
	if !s.cfg.AccessLog {
		return h
	}
	return withAccessLog(h, s.log.Named("access"))
}

// AdminHandler serves the loopback admin listener: the detailed status
// page at /, the public one at /status and the metrics at /metrics.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.adminStatus)
	mux.HandleFunc("GET /status", s.publicStatus)
	mux.Handle("GET /metrics", s.metricsHandler())
	return mux
}

// origin is https://<domain> with the port when it is not 443.
func (s *Server) origin() string {
	if s.cfg.HTTPSPort == 0 || s.cfg.HTTPSPort == 443 {
		return "https://" + hostForURL(s.cfg.Domain)
	}
	return "https://" + net.JoinHostPort(s.cfg.Domain, strconv.Itoa(s.cfg.HTTPSPort))
}

// hostForURL brackets an IPv6 literal, in any of its forms (an IPv4-mapped
// one too: "::ffff:192.0.2.1").
func hostForURL(host string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

// requestHost is the host of the request's authority (RFC 9110 §7.2,
// RFC 3986 §3.2.2-3.2.3), lower case, without the port, the IPv6 brackets
// or a final dot. It is "" for what is no host with an optional port of
// digits: brackets around anything but an IPv6 address, a bare IPv6
// address, a port with other characters.
func requestHost(r *http.Request) string {
	host, port := r.Host, ""
	if rest, ok := strings.CutPrefix(host, "["); ok {
		literal, after, ok := strings.Cut(rest, "]")
		if !ok || !isIPv6(literal) {
			return ""
		}
		host = literal
		if after != "" {
			if port, ok = strings.CutPrefix(after, ":"); !ok {
				return ""
			}
		}
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host, port = host[:i], host[i+1:]
		if strings.Contains(host, ":") {
			return ""
		}
	}
	if strings.Trim(port, "0123456789") != "" {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}

// isIPv6 accepts an IPv6 address without a zone, as an IP-literal holds.
func isIPv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6() && a.Zone() == ""
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}
