package web

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// How long a client may keep a response in flight. net/http's WriteTimeout
// bounds a whole request, which would cut a slow but steady download; these
// bound a client that stops reading instead, as nginx's send_timeout does,
// plus the whole response, so that a trickle cannot hold a connection
// for ever.
const (
	// responseStallTimeout is the longest wait for the client to take the
	// next writeChunk of a response (nginx's send_timeout).
	responseStallTimeout = 60 * time.Second
	// maxResponseDuration is the longest time from a response's first byte
	// to its last: enough for a 64 MiB file at 19 kB/s.
	maxResponseDuration = time.Hour
	// writeChunk is how much a response write may hand to the connection
	// under one deadline: the buffer of io.Copy, so that http.ServeContent's
	// writes are not split.
	writeChunk = 32 << 10
)

// ServerConfig configures an HTTP server of ours. Zero values take the
// defaults.
type ServerConfig struct {
	// HeaderTimeout bounds reading a request's headers (and net/http's own
	// TLS handshake on the admin listener). Default 10s.
	HeaderTimeout time.Duration
	// SendTimeout is the longest wait for the client to take the next part
	// of a response (nginx's send_timeout). Default 60s.
	SendTimeout time.Duration
	// ConnID, if set, gives the edge's id of a connection it handed over,
	// so that the requests' log lines carry it as the edge's do ("conn").
	ConnID func(net.Conn) (uint64, bool)
}

type connIDKey struct{}

// ConnID is the edge's id of the connection r came on, if it has one.
func ConnID(r *http.Request) (uint64, bool) {
	id, ok := r.Context().Value(connIDKey{}).(uint64)
	return id, ok
}

// requestLog is log with the request's connection id.
func requestLog(log *zap.Logger, r *http.Request) *zap.Logger {
	if id, ok := ConnID(r); ok {
		return log.With(zap.Uint64("conn", id))
	}
	return log
}

// writeLimits are the bounds of a server's responses; tests shorten them.
type writeLimits struct {
	stall time.Duration // the longest wait for the client to take more
	max   time.Duration // the longest response, from its first byte
}

// NewHTTPServer wraps h with the timeouts every listener of ours uses.
// ReadHeaderTimeout also bounds the TLS handshake net/http would otherwise
// run; IdleTimeout follows mox (Chrome drops idle connections after 60s).
// There is no overall read or write timeout, since /mxdeliv bodies, large
// files and /relay WebSockets are long: request bodies have their own idle
// deadline (upstream.go), responses the write limits above.
func NewHTTPServer(h http.Handler, log *zap.Logger, connState func(net.Conn, http.ConnState), sc ServerConfig) *http.Server {
	if sc.SendTimeout <= 0 {
		sc.SendTimeout = responseStallTimeout
	}
	srv := newHTTPServer(h, log, connState, writeLimits{stall: sc.SendTimeout, max: maxResponseDuration}, sc.HeaderTimeout)
	if sc.ConnID != nil {
		srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			if id, ok := sc.ConnID(c); ok {
				return context.WithValue(ctx, connIDKey{}, id)
			}
			return ctx
		}
	}
	return srv
}

func newHTTPServer(h http.Handler, log *zap.Logger, connState func(net.Conn, http.ConnState), limits writeLimits, headerTimeout time.Duration) *http.Server {
	if headerTimeout <= 0 {
		headerTimeout = 10 * time.Second
	}
	return &http.Server{
		Handler:           closeUncheckedFraming(limitWrites(h, limits)),
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       65 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ConnState:         limits.boundServerWrites(connState),
		ErrorLog:          zap.NewStdLog(log.Named("http")),
		// An HTTP/2 connection whose client takes no byte for this long is
		// closed; a stream that stalls is reset by limitWrites.
		HTTP2: &http.HTTP2Config{WriteByteTimeout: limits.stall},
	}
}

// boundServerWrites gives what net/http writes on an HTTP/1 connection
// outside a handler (a 400 or 431 answer, 417, a 100 Continue) the stall
// bound: net/http clears the write deadline after each response, and the
// hook runs once the next request has been read, before anything is written
// for it. A handler's writes then get their own (limitWrites), and HTTP/2
// connections have WriteByteTimeout.
func (l writeLimits) boundServerWrites(next func(net.Conn, http.ConnState)) func(net.Conn, http.ConnState) {
	return func(c net.Conn, state http.ConnState) {
		if state == http.StateActive && !isHTTP2(c) {
			_ = c.SetWriteDeadline(time.Now().Add(l.stall))
		}
		if next != nil {
			next(c, state)
		}
	}
}

func isHTTP2(c net.Conn) bool {
	tc, ok := c.(*tls.Conn)
	return ok && tc.ConnectionState().NegotiatedProtocol == "h2"
}

// limitWrites cuts a response whose client stops reading: every chunk
// written must be taken by the client within limits.stall, and the whole
// response within limits.max of its first byte. A cut HTTP/1 connection is
// closed; an HTTP/2 stream is reset. A hijacked connection (a /relay
// WebSocket) leaves the response's bounds behind: it may idle as long as
// the protocol on it likes, but each write to it must still make progress
// within limits.stall.
func limitWrites(h http.Handler, limits writeLimits) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bw := &boundedWriter{ResponseWriter: w, rc: http.NewResponseController(w), limits: limits}
		h.ServeHTTP(bw, r)
		if !bw.hijacked {
			// net/http flushes what is buffered after the handler returns.
			bw.extendDeadline()
		}
	})
}

// boundedWriter sets the connection's (or stream's) write deadline before
// each chunk it passes on. It implements what http.ResponseController looks
// for (Flush, Hijack, Unwrap), so handlers below it keep every feature.
type boundedWriter struct {
	http.ResponseWriter
	rc       *http.ResponseController
	limits   writeLimits
	first    time.Time // when the response's first byte was written; zero before
	hijacked bool
}

func (b *boundedWriter) extendDeadline() {
	now := time.Now()
	if b.first.IsZero() {
		b.first = now
	}
	deadline := now.Add(b.limits.stall)
	if end := b.first.Add(b.limits.max); end.Before(deadline) {
		deadline = end
	}
	// ErrNotSupported (a test's recorder) leaves the response unbounded.
	_ = b.rc.SetWriteDeadline(deadline)
}

func (b *boundedWriter) WriteHeader(code int) {
	b.extendDeadline() // 1xx answers are written at once
	b.ResponseWriter.WriteHeader(code)
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return b.ResponseWriter.Write(p) // may still commit the header
	}
	return writeChunks(p, b.extendDeadline, b.ResponseWriter.Write)
}

func (b *boundedWriter) FlushError() error {
	b.extendDeadline()
	return b.rc.Flush()
}

func (b *boundedWriter) Flush() { _ = b.FlushError() }

func (b *boundedWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := b.rc.Hijack()
	if err != nil {
		return nil, nil, err
	}
	b.hijacked = true
	// net/http clears the deadlines on hijack. The one set here covers what
	// the caller writes through rw (ReverseProxy's 101 answer); writes to
	// the returned conn set their own.
	_ = c.SetWriteDeadline(time.Now().Add(b.limits.stall))
	return &stallBoundConn{Conn: c, stall: b.limits.stall}, rw, nil
}

func (b *boundedWriter) Unwrap() http.ResponseWriter { return b.ResponseWriter }

// stallBoundConn is a hijacked connection whose writes must make progress
// within stall; reads are left to the protocol on it.
type stallBoundConn struct {
	net.Conn
	stall time.Duration
}

func (c *stallBoundConn) Write(p []byte) (int, error) {
	return writeChunks(p, func() { _ = c.Conn.SetWriteDeadline(time.Now().Add(c.stall)) }, c.Conn.Write)
}

// writeChunks writes p in pieces of writeChunk, calling extend before each:
// a client that takes the pieces one by one makes progress.
func writeChunks(p []byte, extend func(), write func([]byte) (int, error)) (int, error) {
	written := 0
	for len(p) > 0 {
		extend()
		n, err := write(p[:min(len(p), writeChunk)])
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// closeUncheckedFraming closes the connection after answering a request
// whose framing net/http does not let a handler check. RFC 9112 §6.1: a
// request with both Transfer-Encoding and Content-Length may be a smuggling
// attempt (§11.2), and the server must close the connection after
// responding to it; §6.3 (3) likewise. Go 1.26's net/http reads such a
// request by its chunked coding and deletes both header fields
// (transfer.go: parseTransferEncoding, fixLength), so a handler sees only
// r.TransferEncoding: every chunked HTTP/1.1 request therefore ends its
// connection (clients rarely send one: browsers and the apps send
// Content-Length). For HTTP/1.0 net/http ignores and deletes
// Transfer-Encoding and keeps a "keep-alive" connection open, while
// §6.1 wants a 1.0 message with Transfer-Encoding treated as faulty framing
// and the connection closed, so no HTTP/1.0 connection is kept open.
// HTTP/2 frames its messages itself (RFC 9113 §8.2.2).
func closeUncheckedFraming(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 1 && (len(r.TransferEncoding) > 0 || r.ProtoMinor == 0) {
			// net/http closes after answering when a handler sets this.
			w.Header().Set("Connection", "close")
			// A connection about to close switches to no other protocol
			// (RFC 9110 §7.8): the request is answered as a plain one.
			r.Header.Del("Upgrade")
		}
		h.ServeHTTP(w, r)
	})
}
