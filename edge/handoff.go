package edge

import (
	"net"
	"net/http"
	"sync"
)

// handoffListener hands the connections routed to HTTP to the web server. The
// conns are *tls.Conn with the handshake done, so net/http sees the
// negotiated ALPN and serves h2 or HTTP/1.1 as usual.
type handoffListener struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

func newHandoffListener() *handoffListener {
	return &handoffListener{conns: make(chan net.Conn, 1024), closed: make(chan struct{})}
}

func (h *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.closed:
		return nil, net.ErrClosed
	}
}

func (h *handoffListener) Close() error {
	h.closeOnce.Do(func() { close(h.closed) })
	return nil
}

func (h *handoffListener) Addr() net.Addr { return handoffAddr{} }

// deliver passes c on, or reports false when the web server is gone or
// hopelessly behind.
func (h *handoffListener) deliver(c net.Conn) bool {
	select {
	case <-h.closed:
		return false
	default:
	}
	select {
	case h.conns <- c:
		return true
	default:
		return false
	}
}

type handoffAddr struct{}

func (handoffAddr) Network() string { return "edge" }
func (handoffAddr) String() string  { return "edge-https" }

// HTTPConnState must be installed as the web server's http.Server.ConnState,
// so that HTTP connections count against the edge's connection limit until
// they close (or leave net/http through a hijack, as WebSockets do).
func (e *Edge) HTTPConnState(c net.Conn, state http.ConnState) {
	if state != http.StateClosed && state != http.StateHijacked {
		return
	}
	e.mu.Lock()
	slot, ok := e.httpConns[c]
	delete(e.httpConns, c)
	e.mu.Unlock()
	if ok {
		e.release(slot.l, slot.src)
	}
}

// HTTPConnID is the edge's id of a connection it handed to the web server
// (the "conn" field of its log lines), for the web server's own.
func (e *Edge) HTTPConnID(c net.Conn) (uint64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	slot, ok := e.httpConns[c]
	return slot.id, ok
}
