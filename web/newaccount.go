package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

const (
	defaultCGITimeout = 30 * time.Second
	// maxCGIBody bounds what is fed to the script: the app posts an empty
	// body (nginx's client_max_body_size would allow 1 MiB).
	maxCGIBody = 64 << 10
	// maxCGIOutput bounds what the script may answer; it prints a short JSON.
	maxCGIOutput = 64 << 10
	// maxCGIRunning bounds concurrent runs of the script.
	maxCGIRunning = 16
	// chatmail's nginx in self mode: limit_req zone=newaccount rate=2r/s burst=5.
	newAccountRate  = 2
	newAccountBurst = 5
)

// newAccounts is chatmail's account creation: the CGI script newemail.py,
// or in the demo the local delivery.
type newAccounts struct {
	cgi     *cgi.Handler // nil: create
	create  func() (string, string, error)
	timeout time.Duration
	running chan struct{} // semaphore of CGI runs
	limit   *rateLimiter  // self mode only
	log     *zap.Logger
}

func newNewAccounts(cfg Config, deps Deps) *newAccounts {
	n := &newAccounts{create: deps.NewAccount, timeout: cfg.NewAccountTimeout, running: make(chan struct{}, maxCGIRunning), log: deps.Log}
	if cfg.NewAccountCGI != "" {
		n.cgi = &cgi.Handler{
			Path:   cfg.NewAccountCGI,
			Logger: zap.NewStdLog(deps.Log.Named("cgi")),
			Stderr: &zapWriter{log: deps.Log.Named("cgi"), msg: "account script stderr"},
		}
	}
	if cfg.SelfMode {
		n.limit = newRateLimiter(newAccountRate, newAccountBurst)
	}
	return n
}

// newAccount serves /new and /cgi-bin/newemail.py (the URL of old printed
// QR codes, served the same because Delta Chat does not follow redirects).
// A browser's GET goes on to the app with a dcaccount: link and the app
// POSTs; in self mode the site's own JavaScript GETs it, so GET runs the
// script too, under chatmail's rate limit.
func (s *Server) newAccount(w http.ResponseWriter, r *http.Request) {
	n := s.newAcct
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if !s.cfg.SelfMode {
			http.Redirect(w, r, "dcaccount:"+s.origin()+"/new", http.StatusMovedPermanently)
			return
		}
	case http.MethodPost:
	default:
		methodNotAllowed(w, "GET, HEAD, POST")
		return
	}
	if n.limit != nil && !n.limit.allow(clientIP(r), s.now()) {
		// nginx's limit_req answers 503 by default.
		http.Error(w, "too many requests, try again in a moment", http.StatusServiceUnavailable)
		return
	}
	if n.cgi != nil {
		n.runCGI(w, r)
		return
	}
	if n.create == nil {
		http.Error(w, "account creation is not available", http.StatusServiceUnavailable)
		return
	}
	email, password, err := n.create()
	if err != nil {
		requestLog(n.log, r).Error("account creation failed", zap.Error(err))
		http.Error(w, "account creation failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}{email, password})
}

// runCGI runs the script as RFC 3875 describes, with net/http/cgi (so no
// fcgiwrap is needed). net/http/cgi has no timeout, so the script answers
// into a buffer in its own goroutine: after the timeout the client gets 504
// while a hung script finishes on its own, counted against maxCGIRunning.
func (n *newAccounts) runCGI(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > maxCGIBody {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	select {
	case n.running <- struct{}{}:
	default:
		http.Error(w, "busy, try again in a moment", http.StatusServiceUnavailable)
		return
	}
	body, err := n.readBody(w, r, maxCGIBody)
	if err != nil {
		<-n.running
		http.Error(w, "request body too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	req := r.Clone(context.WithoutCancel(r.Context()))
	// The body is read already; the script gets it with a length, since
	// net/http/cgi refuses chunked bodies (RFC 3875 §4.2 wants CONTENT_LENGTH).
	req.Body, req.ContentLength, req.TransferEncoding = io.NopCloser(bytes.NewReader(body)), int64(len(body)), nil
	rec := &cappedRecorder{ResponseRecorder: httptest.NewRecorder(), limit: maxCGIOutput}
	done := make(chan struct{})
	go func() {
		defer func() { <-n.running }()
		defer close(done)
		n.cgi.ServeHTTP(rec, req)
	}()
	timer := time.NewTimer(n.timeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		requestLog(n.log, r).Error("account script did not answer in time", zap.String("script", n.cgi.Path), zap.Duration("timeout", n.timeout))
		http.Error(w, "account creation timed out", http.StatusGatewayTimeout)
		return
	case <-r.Context().Done():
		return
	}
	if rec.overflow {
		requestLog(n.log, r).Error("account script answered too much", zap.String("script", n.cgi.Path))
		http.Error(w, "account creation failed", http.StatusInternalServerError)
		return
	}
	if rec.badStatus != 0 || !rec.answered {
		// nginx answers an upstream's invalid status line so.
		// net/http/cgi gives up without a word on a "Status:" line that
		// does not start with three digits.
		requestLog(n.log, r).Error("account script answered an invalid status", zap.String("script", n.cgi.Path), zap.Int("status", rec.badStatus))
		http.Error(w, "account creation failed", http.StatusBadGateway)
		return
	}
	if err := copyScriptHeader(w.Header(), rec.Header()); err != nil {
		// nginx answers an upstream's invalid header so.
		requestLog(n.log, r).Error("account script answered an invalid header", zap.String("script", n.cgi.Path), zap.Error(err))
		http.Error(w, "account creation failed", http.StatusBadGateway)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

// cappedRecorder records at most limit body bytes, and a status that is no
// final one (200-599), which net/http/cgi passes on from the script's
// "Status:" line as it is, instead of panicking on it.
type cappedRecorder struct {
	*httptest.ResponseRecorder
	limit     int
	overflow  bool
	badStatus int
	answered  bool // a status was set: net/http/cgi answers every run but one with a bad "Status:" line
}

func (c *cappedRecorder) WriteHeader(code int) {
	c.answered = true
	if code < 200 || code > 599 {
		c.badStatus = code
		code = http.StatusBadGateway
	}
	c.ResponseRecorder.WriteHeader(code)
}

// scriptFramingFields are the header fields of a CGI answer that are not
// passed on: hop-by-hop ones (RFC 9110 §7.6.1) and the response's framing,
// which net/http sets for the body it sends (RFC 3875 §6.3.4 leaves
// Content-Length to the server).
var scriptFramingFields = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Upgrade": true, "Content-Length": true,
}

// copyScriptHeader copies the script's header fields to dst, without the
// framing ones; a field value that is not valid (RFC 9110 §5.5) fails the
// answer, and then nothing is copied.
func copyScriptHeader(dst, src http.Header) error {
	for name, values := range src {
		for _, v := range values {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("%s: invalid value %q", name, v)
			}
		}
	}
	for name, values := range src {
		if !scriptFramingFields[name] {
			dst[name] = values
		}
	}
	return nil
}

func (c *cappedRecorder) Write(p []byte) (int, error) {
	c.answered = true
	if c.Body.Len()+len(p) > c.limit {
		c.overflow = true
		return 0, fmt.Errorf("CGI output over %d bytes", c.limit)
	}
	return c.ResponseRecorder.Write(p)
}

// clientIP is the peer's address: the edge hands over the client's own
// connection, so there is no proxy header to trust or distrust.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// zapWriter logs each write (a CGI script's stderr) as one warning.
type zapWriter struct {
	log *zap.Logger
	msg string
}

func (z *zapWriter) Write(p []byte) (int, error) {
	z.log.Warn(z.msg, zap.ByteString("text", bytes.TrimSpace(p)))
	return len(p), nil
}

// readBody reads the request body, at most limit bytes, within the
// script's timeout.
func (n *newAccounts) readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(n.timeout))
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("request body over %d bytes", limit)
	}
	return b, err
}
