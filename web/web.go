// Package web serves everything the relay offers over HTTP: the site, the
// ECH configuration, account creation and the :80 redirect.
package web

import (
	"net"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// Config is the web part of the edge's configuration.
type Config struct {
	Domain    string // the mail domain, e.g. chat.example.org
	HTTPSPort int    // public HTTPS port, for redirects (443 is left out of URLs)
}

// Deps are what the web server reads from the rest of the edge.
type Deps struct {
	Log *zap.Logger
	// ECHConfigList returns the published ECHConfigList (current key only).
	ECHConfigList func() []byte
	// NewAccount creates a chatmail account (the demo's local delivery);
	// nil answers POST /new with 503.
	NewAccount func() (email, password string, err error)
}

// Server holds the HTTPS handler and the plain-HTTP (:80) handler.
type Server struct {
	cfg  Config
	deps Deps
	mux  *http.ServeMux
}

func New(cfg Config, deps Deps) *Server {
	s := &Server{cfg: cfg, deps: deps, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /.well-known/origin-svcb", s.originSVCB)
	s.mux.HandleFunc("/new", s.newAccount)
	return s
}

// Handler serves HTTPS requests.
func (s *Server) Handler() http.Handler { return s.mux }

// NewHTTPServer wraps h with the timeouts every listener of ours uses.
// ReadHeaderTimeout also bounds the TLS handshake net/http would otherwise
// run; IdleTimeout follows mox (Chrome drops idle connections after 60s).
func NewHTTPServer(h http.Handler, log *zap.Logger, connState func(net.Conn, http.ConnState)) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       65 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ConnState:         connState,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
}

// origin is https://<domain> with the port when it is not 443.
func (s *Server) origin() string {
	if s.cfg.HTTPSPort == 0 || s.cfg.HTTPSPort == 443 {
		return "https://" + s.cfg.Domain
	}
	return "https://" + net.JoinHostPort(s.cfg.Domain, strconv.Itoa(s.cfg.HTTPSPort))
}
