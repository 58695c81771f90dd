package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"go.uber.org/zap"
)

// listener is one public TCP port with its TLS configuration and counters.
type listener struct {
	e   *Edge
	cfg ListenerConfig
	ln  *net.TCPListener
	// tlsConfig starts every handshake; its GetConfigForClient picks
	// tls12 or tls13 (tlsconfig.go).
	tlsConfig    *tls.Config
	tls12, tls13 *tls.Config
	stats        listenerStats
}

func newListener(e *Edge, lc ListenerConfig) *listener {
	l := &listener{e: e, cfg: lc}
	l.newTLSConfigs()
	return l
}

// noKeepAlive turns off Go's default TCP keepalive (four setsockopt calls per
// socket, and a probe every 15 s on every idle connection). Dead clients are
// found by the idle timeout and by Dovecot's IDLE keepalives, as with
// chatmail's nginx, which sets no keepalive either.
const noKeepAlive = -1

func (l *listener) listen() error {
	if l.cfg.Listener != nil {
		l.ln = l.cfg.Listener
		return nil
	}
	lc := net.ListenConfig{KeepAlive: noKeepAlive}
	ln, err := lc.Listen(context.Background(), "tcp", l.cfg.Address)
	if err != nil {
		return fmt.Errorf("listen %s on %s: %w", l.cfg.Name, l.cfg.Address, err)
	}
	l.ln = ln.(*net.TCPListener)
	return nil
}

func (l *listener) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http
			// does instead of spinning, and keep the listener.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.e.log.Warn("accept failed", zap.String("listener", l.cfg.Name), zap.Duration("retry_in", backoff), zap.Error(err))
			select {
			case <-time.After(backoff):
			case <-l.e.stop:
				return
			}
			continue
		}
		backoff = 0
		if l.cfg.Listener != nil {
			// A given listener may come from net.FileListener (inherited),
			// which turns Go's default keepalive on for what it accepts; off
			// again, as listen has it (one setsockopt).
			_ = c.SetKeepAlive(false)
		}
		l.e.admit(l, c)
	}
}

// route picks the destination for a connection that completed its handshake.
func (l *listener) route(alpn string) Route {
	switch l.cfg.Kind {
	case KindIMAP:
		return RouteIMAP
	case KindSMTP:
		return RouteSMTP
	}
	// As chatmail's nginx stream map: imap and smtp by ALPN, everything
	// else (h2, http/1.1, no ALPN) is the web site.
	switch alpn {
	case "imap":
		return RouteIMAP
	case "smtp":
		return RouteSMTP
	case acmeTLSALPN:
		return RouteACME
	default:
		return RouteHTTP
	}
}
