package service

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"chatmail-edge/mail"

	"go.uber.org/zap"
)

// The demo's stand-ins for the two HTTP services of a relay that the edge
// proxies to: filtermail's /mxdeliv, where other relays deliver mail over
// HTTPS, and iroh-relay's /relay, /ping and /generate_204. They listen on
// loopback ports of their own, which the web side's fixed upstreams point
// at as on a relay, so the demo's paths answer and its status page shows
// every service up.
type demoStandIns struct {
	servers []*http.Server
	// MXDeliv and IrohRelay are the upstream URLs, http://127.0.0.1:port.
	MXDeliv, IrohRelay string

	// The upgraded /relay connections, which the servers no longer know.
	mu       sync.Mutex
	upgraded map[net.Conn]struct{}
	closed   bool
	conns    sync.WaitGroup
}

// Bounds of the stand-ins (the edge in front has its own).
const (
	standInHeaderTimeout = 10 * time.Second
	// standInRelayIdle closes an upgraded /relay connection that has been
	// quiet this long.
	standInRelayIdle = 5 * time.Minute
)

// startDemoStandIns starts both on 127.0.0.1; filtermail's delivers into
// the demo's mailboxes, with bodies up to maxMessageSize.
func startDemoStandIns(delivery *mail.LocalDelivery, maxMessageSize int64, log *zap.Logger) (*demoStandIns, error) {
	s := &demoStandIns{upgraded: map[net.Conn]struct{}{}}
	mx := http.NewServeMux()
	mx.Handle("/mxdeliv", filtermailStandIn(delivery, maxMessageSize))
	iroh := http.NewServeMux()
	iroh.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pong\n") })
	iroh.HandleFunc("/generate_204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	iroh.HandleFunc("/relay", s.irohRelay)
	iroh.HandleFunc("/relay/", s.irohRelay)
	for _, svc := range []struct {
		name string
		h    http.Handler
		url  *string
	}{{"filtermail", mx, &s.MXDeliv}, {"iroh-relay", iroh, &s.IrohRelay}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("demo stand-in for %s: %w", svc.name, err)
		}
		srv := &http.Server{Handler: svc.h, ReadHeaderTimeout: standInHeaderTimeout, ErrorLog: zap.NewStdLog(log.Named(svc.name))}
		s.servers = append(s.servers, srv)
		*svc.url = "http://" + ln.Addr().String()
		go srv.Serve(ln)
	}
	return s, nil
}

// Close stops both and closes the upgraded connections.
func (s *demoStandIns) Close() {
	for _, srv := range s.servers {
		srv.Close()
	}
	s.mu.Lock()
	s.closed = true
	for c := range s.upgraded {
		c.Close()
	}
	s.mu.Unlock()
	s.conns.Wait()
}

// track adds an upgraded connection for Close; false once closed.
func (s *demoStandIns) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.upgraded[c] = struct{}{}
	s.conns.Add(1)
	return true
}

func (s *demoStandIns) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.upgraded, c)
	s.mu.Unlock()
	c.Close()
	s.conns.Done()
}

// filtermailStandIn takes mail as filtermail's HTTP delivery does (chatmail
// relay PR #916, the madmail protocol): POST /mxdeliv with the envelope in
// X-Mail-From and one X-Mail-To per recipient, the message as the body. It
// answers 200 once delivered, 404 when no recipient has an account here.
// Anything else gets 405, which the status page's probe (HEAD) counts as up.
func filtermailStandIn(delivery *mail.LocalDelivery, maxMessageSize int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "POST a message with X-Mail-From and X-Mail-To", http.StatusMethodNotAllowed)
			return
		}
		rcpts := r.Header.Values("X-Mail-To")
		if len(rcpts) == 0 {
			http.Error(w, "missing X-Mail-To", http.StatusBadRequest)
			return
		}
		msg, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxMessageSize))
		if err != nil {
			if errors.As(err, new(*http.MaxBytesError)) {
				http.Error(w, "message too large", http.StatusRequestEntityTooLarge)
				return
			}
			http.Error(w, "read the message: "+err.Error(), http.StatusBadRequest)
			return
		}
		_, err = delivery.DeliverInbound(r.Header.Get("X-Mail-From"), rcpts, msg)
		switch {
		case errors.Is(err, mail.ErrNoLocalRecipient):
			http.Error(w, "no such recipient", http.StatusNotFound)
		case err != nil:
			http.Error(w, "delivery failed", http.StatusInternalServerError)
		default:
			io.WriteString(w, "OK")
		}
	})
}

// irohRelay stands in for iroh-relay's relay endpoint: an Upgrade (iroh's
// own protocol or WebSocket) is accepted and what the client sends comes
// back, so the edge's Upgrade passthrough can be seen working; a request
// without one gets 426, as from iroh-relay.
func (s *demoStandIns) irohRelay(w http.ResponseWriter, r *http.Request) {
	protocol := r.Header.Get("Upgrade")
	if protocol == "" {
		w.Header().Set("Upgrade", "iroh derp http")
		http.Error(w, "chatmail-edge demo: iroh-relay stand-in at "+r.URL.Path+"; send an Upgrade (its bytes are echoed)", http.StatusUpgradeRequired)
		return
	}
	c, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "cannot upgrade", http.StatusInternalServerError)
		return
	}
	if !s.track(c) {
		c.Close()
		return
	}
	defer s.untrack(c)
	protocol = strings.Map(func(r rune) rune { // a header value, not a line break
		if r < ' ' || r > '~' {
			return -1
		}
		return r
	}, protocol)
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + protocol + "\r\nConnection: Upgrade\r\n\r\n")
	if rw.Flush() != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for {
		_ = c.SetDeadline(time.Now().Add(standInRelayIdle))
		n, err := rw.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
