package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"time"

	"chatmail-edge/config"

	"go.uber.org/zap"
)

// bodyIdleTimeout is the longest pause while a client sends a request body,
// nginx's client_body_timeout.
const bodyIdleTimeout = 60 * time.Second

// upstream is one fixed reverse-proxy target: the client never chooses
// where a request goes, so the edge cannot become an open proxy.
type upstream struct {
	name      string
	target    *url.URL
	proxy     *httputil.ReverseProxy
	maxBody   int64  // 0: no body limit beyond the idle timeout
	probePath string // what the health check asks for
	errors    atomic.Uint64
	log       *zap.Logger
	// observe, if set, hears of each health check (nil or its error) and
	// each request the upstream failed (not those the client failed: a
	// body too large, a client gone).
	observe func(error)
}

// newUpstream proxies to rawURL (http://host:port). filtermail gets
// /mxdeliv with bodies up to the relay's max_message_size; iroh-relay gets
// /relay (with HTTP/1.1 Upgrade passthrough for WebSocket and "iroh derp
// http", RFC 9110 §7.8), /ping and /generate_204.
func newUpstream(name, rawURL string, cfg Config, log *zap.Logger) (*upstream, error) {
	target, err := config.ParseUpstream(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%s upstream: %w", name, err)
	}
	u := &upstream{name: name, target: target, probePath: "/ping", log: log.Named("proxy").With(zap.String("upstream", name))}
	if name == "filtermail" {
		u.maxBody, u.probePath = cfg.MaxMessageSize, "/mxdeliv"
	}
	transport := &http.Transport{
		Proxy:                 nil, // never an HTTP proxy from the environment
		DialContext:           (&net.Dialer{Timeout: cfg.UpstreamDialTimeout}).DialContext,
		ResponseHeaderTimeout: cfg.UpstreamTimeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       60 * time.Second,
		DisableCompression:    true, // pass the upstream's bytes through as they are
	}
	u.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// nginx's proxy_pass without a URI: the path is passed as it
			// is, and Host is the upstream's.
			pr.SetURL(target)
			pr.SetXForwarded()
		},
		Transport:     transport,
		FlushInterval: -1, // relay traffic and probe answers are not buffered
		ErrorLog:      zap.NewStdLog(u.log),
		ErrorHandler:  u.fail,
	}
	return u, nil
}

// probe checks that the upstream answers HTTP: a status below 500 on its
// probe path (iroh-relay's /ping answers 200).
func (u *upstream) probe(ctx context.Context) error {
	err := u.check(ctx)
	if u.observe != nil {
		u.observe(err)
	}
	return err
}

func (u *upstream) check(ctx context.Context) error {
	path := u.probePath
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u.target.String()+path, nil)
	if err != nil {
		return err
	}
	resp, err := u.proxy.Transport.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("HEAD %s: %s", path, resp.Status)
	}
	return nil
}

// paths are the nginx locations of this upstream; the relay of a node
// has none (nodeHandler passes it what it does not answer itself).
func (u *upstream) paths() []string {
	switch u.name {
	case "filtermail":
		return []string{"/mxdeliv"}
	case "iroh-relay":
		return []string{"/relay", "/ping", "/generate_204"}
	}
	return nil
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) { u.serveWithin(w, r, u.maxBody) }

// serveWithin proxies r with a body of at most maxBody bytes (0: no limit
// beyond the idle timeout).
func (u *upstream) serveWithin(w http.ResponseWriter, r *http.Request, maxBody int64) {
	if maxBody > 0 && r.ContentLength > maxBody {
		http.Error(w, "message too large", http.StatusRequestEntityTooLarge)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		body := io.ReadCloser(r.Body)
		if maxBody > 0 {
			body = http.MaxBytesReader(w, body, maxBody)
		}
		if r.Header.Get("Upgrade") == "" {
			// Not for upgrades: the deadline would stay on the hijacked conn.
			body = &idleDeadlineBody{ReadCloser: body, rc: http.NewResponseController(w)}
		}
		r.Body = body
	}
	u.proxy.ServeHTTP(w, r)
}

// fail answers 502 with a short body at once when the upstream cannot be
// reached or does not answer in time, and 413 when the body was too large.
func (u *upstream) fail(w http.ResponseWriter, r *http.Request, err error) {
	if tooLarge := new(http.MaxBytesError); errors.As(err, &tooLarge) {
		http.Error(w, "message too large", http.StatusRequestEntityTooLarge)
		return
	}
	if r.Context().Err() != nil {
		return // the client left; nobody reads the answer
	}
	u.errors.Add(1)
	if u.observe != nil {
		u.observe(err)
	}
	requestLog(u.log, r).Warn("upstream unavailable", zap.String("target", u.target.Host), zap.String("path", r.URL.Path), zap.Error(err))
	http.Error(w, "502 bad gateway: "+u.name+" is not available", http.StatusBadGateway)
}

// idleDeadlineBody extends the connection's read deadline before each read,
// so a client that stops sending mid-body is dropped after bodyIdleTimeout
// while a slow but steady 30 MB upload goes through.
type idleDeadlineBody struct {
	io.ReadCloser
	rc *http.ResponseController
}

func (b *idleDeadlineBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(bodyIdleTimeout))
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		// The body is done: waiting for the upstream's answer must not
		// trip the deadline (net/http would cancel the request).
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}
