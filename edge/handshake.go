package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"

	"chatmail-edge/mail"

	"go.uber.org/zap"
)

// pendingConn is an accepted connection on its way through the handshake.
// Its state is guarded by Edge.mu.
type pendingConn struct {
	l          *listener
	tc         *tcpConn
	id         uint64
	accepted   time.Time
	state      pendingState
	tok        pollToken
	registered bool
}

type pendingState uint8

const (
	waitingForHello pendingState = iota // parked until the first bytes arrive
	queued                              // bytes arrived, waiting for a handshake slot
	handshaking
)

// admit takes a freshly accepted connection. It costs no goroutine until the
// client has sent something: a client that connects and stays silent waits
// in the poller and is dropped by the sweeper after HandshakeTimeout.
func (e *Edge) admit(l *listener, c *net.TCPConn) {
	l.stats.accepted.Add(1)
	id := e.nextID.Add(1)
	maxConns := e.limits.Load().MaxConnections
	if e.activeConns.Add(1) > int64(maxConns) {
		e.activeConns.Add(-1)
		l.stats.failures[FailOverload].Add(1)
		_ = c.SetLinger(0)
		_ = c.Close()
		e.log.Warn("connection limit reached, refusing", zap.Uint64("conn", id), zap.String("listener", l.cfg.Name), zap.Int("limit", maxConns))
		return
	}
	l.stats.active.Add(1)
	tc, err := newTCPConn(c)
	if err != nil {
		_ = c.Close()
		l.stats.active.Add(-1)
		e.activeConns.Add(-1)
		e.log.Warn("accepted connection unusable", zap.Uint64("conn", id), zap.Error(err))
		return
	}
	pc := &pendingConn{l: l, tc: tc, id: id, accepted: time.Now()}

	e.mu.Lock()
	e.pending[pc] = struct{}{}
	// Most clients send their ClientHello right behind the TCP handshake:
	// then it is already here and the connection goes straight to a
	// handshake worker, without a trip through the poller.
	if e.poller == nil || tc.hasData() {
		pc.state = queued
		e.mu.Unlock()
		e.enqueue(pc)
		return
	}
	// The callback may fire before add returns; it takes e.mu first, so it
	// sees tok set.
	tok, err := e.poller.add(tc.fd, func() { e.helloArrived(pc) })
	if err == nil {
		pc.tok, pc.registered = tok, true
	}
	e.mu.Unlock()
	if err != nil {
		e.dropPending(pc, FailOverload, err.Error())
	}
}

func (e *Edge) helloArrived(pc *pendingConn) {
	e.mu.Lock()
	if pc.state != waitingForHello {
		e.mu.Unlock()
		return
	}
	pc.state = queued
	// The registration stays, disarmed (it is one-shot): the session's
	// client pump takes it over, or dropPending gives it up.
	e.mu.Unlock()
	e.enqueue(pc)
}

func (e *Edge) enqueue(pc *pendingConn) {
	select {
	case e.queue <- pc:
	default:
		e.dropPending(pc, FailOverload, "handshake queue full")
	}
}

// dropPending closes a connection that did not make it through the
// handshake. Only the first call for a connection counts and logs.
func (e *Edge) dropPending(pc *pendingConn, reason FailReason, detail string) {
	e.mu.Lock()
	if _, ok := e.pending[pc]; !ok {
		e.mu.Unlock()
		return
	}
	delete(e.pending, pc)
	if pc.registered {
		e.poller.forget(pc.tok)
		pc.registered = false
	}
	e.mu.Unlock()
	_ = pc.tc.SetLinger(0)
	_ = pc.tc.Close()
	pc.l.stats.failures[reason].Add(1)
	pc.l.stats.active.Add(-1)
	e.activeConns.Add(-1)
	e.log.Info("connection dropped", zap.Uint64("conn", pc.id), zap.String("listener", pc.l.cfg.Name),
		zap.Stringer("remote", pc.tc.remote), zap.String("reason", reason.String()), zap.String("detail", detail))
}

// handshakeWorker is one of MaxHandshakes goroutines that run handshakes; a
// storm of connections waits in e.queue, in order, instead of thrashing.
func (e *Edge) handshakeWorker() {
	for {
		// Load the wake-up channel before looking for a surplus, so that a
		// SetLimits in between closes the channel this worker waits on.
		wake := e.retireWorkers.Load()
		if e.retireWorker() {
			return
		}
		select {
		case <-e.stop:
			return
		case <-*wake: // SetLimits lowered MaxHandshakes
		case pc := <-e.queue:
			e.inHandshake.Add(1)
			e.handshake(pc)
			e.inHandshake.Add(-1)
		}
	}
}

// HandshakeBacklog is the number of connections whose ClientHello has
// arrived and whose handshake has not finished: waiting for a worker or in
// one. A burst of reconnecting clients shows here first; it is cheap enough
// to read often.
func (e *Edge) HandshakeBacklog() int {
	return len(e.queue) + int(e.inHandshake.Load())
}

func (e *Edge) handshake(pc *pendingConn) {
	e.mu.Lock()
	if _, ok := e.pending[pc]; !ok {
		e.mu.Unlock()
		return
	}
	pc.state = handshaking
	e.mu.Unlock()

	l, tc := pc.l, pc.tc
	deadline := pc.accepted.Add(e.limits.Load().HandshakeTimeout)
	if !time.Now().Before(deadline) {
		e.dropPending(pc, FailTimeout, "queued past the handshake timeout")
		return
	}
	_ = tc.SetDeadline(deadline)
	var front *echFront
	if keys := e.echFront.Load(); keys != nil && len(keys.keys) > 0 {
		front = newECHFront(keys)
		tc.front = front
	}
	conn := tls.Server(tc, l.tlsConfig)
	start := time.Now()
	err := conn.Handshake()
	elapsed := time.Since(start)
	if front != nil && front.drained() {
		tc.front = nil // an idle session must not keep its buffer
	}
	if err != nil {
		reason := FailHandshake
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			reason = FailTimeout
		}
		e.dropPending(pc, reason, err.Error())
		return
	}

	e.mu.Lock()
	_, ok := e.pending[pc]
	delete(e.pending, pc)
	e.mu.Unlock()
	if !ok { // dropped while finishing (shutdown)
		return
	}
	_ = tc.SetDeadline(time.Time{})

	cs := conn.ConnectionState()
	ech := ECHNone
	// crypto/tls reports acceptance only when it opened the hello itself;
	// when the front did, it answered as a split-mode backend.
	if cs.ECHAccepted || front != nil && front.accepted {
		ech = ECHAccepted
	} else if tc.echOffered {
		ech = ECHRejected
	}
	route := l.route(cs.NegotiatedProtocol)
	l.stats.ech[ech].Add(1)
	l.stats.routes[route].Add(1)
	l.stats.observeHandshake(elapsed)
	e.log.Info("connection", zap.Uint64("conn", pc.id), zap.String("listener", l.cfg.Name),
		zap.Stringer("remote", tc.remote), zap.String("ech", ech.String()), zap.String("sni", cs.ServerName),
		zap.String("alpn", cs.NegotiatedProtocol), zap.String("route", route.String()),
		zap.Bool("resumed", cs.DidResume), zap.Duration("handshake", elapsed))

	switch route {
	case RouteHTTP:
		e.forgetRegistration(pc)
		e.toHTTP(pc, conn)
	case RouteACME:
		// The validation is complete once the handshake is; RFC 8737 §3.
		e.forgetRegistration(pc)
		e.closeRouted(pc, conn)
	default:
		e.runner.do(func() { e.connectBackend(pc, conn, route, &cs) })
	}
}

// forgetRegistration gives up the poller registration a connection got
// while it waited for its ClientHello, when no session takes it over. The
// registration is disarmed, so nothing fires until the socket is closed.
// pc has left e.pending: nothing else looks at it any more.
func (e *Edge) forgetRegistration(pc *pendingConn) {
	if pc.registered {
		e.poller.forget(pc.tok)
		pc.registered = false
	}
}

func (e *Edge) toHTTP(pc *pendingConn, conn *tls.Conn) {
	e.mu.Lock()
	e.httpConns[conn] = pc.l
	e.mu.Unlock()
	if !e.http.deliver(conn) {
		e.mu.Lock()
		delete(e.httpConns, conn)
		e.mu.Unlock()
		pc.l.stats.failures[FailOverload].Add(1)
		e.log.Warn("web server not accepting, closing", zap.Uint64("conn", pc.id))
		e.closeRouted(pc, conn)
	}
}

func (e *Edge) closeRouted(pc *pendingConn, conn *tls.Conn) {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = conn.Close()
	pc.l.stats.active.Add(-1)
	e.activeConns.Add(-1)
}

var errNoBackend = errors.New("no backend configured for this route")

// connectBackend dials the route's backend and starts the session. If the
// backend cannot be reached within BackendTimeout, the client gets its
// protocol's refusal (IMAP BYE, SMTP 421) rather than a silent close.
func (e *Edge) connectBackend(pc *pendingConn, conn *tls.Conn, route Route, cs *tls.ConnectionState) {
	l, tc := pc.l, pc.tc
	b, proto := e.backendFor(route)
	var bconn net.Conn
	err := errNoBackend
	if b != nil {
		ctx, cancel := context.WithTimeout(context.Background(), e.limits.Load().BackendTimeout)
		bconn, err = b.Dial(ctx, mail.ClientInfo{
			Source: tc.remote, Destination: tc.local,
			TLSVersion: cs.Version, CipherSuite: cs.CipherSuite,
			ServerName: cs.ServerName, ALPN: cs.NegotiatedProtocol,
		})
		cancel()
	}
	var btc *tcpConn
	if err == nil {
		if btc = underlyingTCP(bconn); btc == nil {
			bconn.Close()
			err = errors.New("backend connection was not made by Edge.DialBackend")
		}
	}
	if err != nil {
		l.stats.failures[FailBackend].Add(1)
		e.log.Warn("backend unreachable, refusing client", zap.Uint64("conn", pc.id), zap.String("route", route.String()), zap.Error(err))
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write(proto.Refusal(e.cfg.Hostname, "service temporarily unavailable, try again later"))
		e.forgetRegistration(pc)
		e.closeRouted(pc, conn)
		return
	}
	s := newSession(e, l, pc.id, route, conn, tc, bconn, btc)
	if pc.registered {
		// The client's socket keeps the registration it waited for its
		// ClientHello with: re-arming it costs one epoll_ctl, removing and
		// adding it again two. The session is not tracked yet, so nothing
		// else sees its pumps.
		e.poller.retarget(pc.tok, s.up.runFunc)
		s.up.tok, s.up.registered = pc.tok, true
		pc.registered = false
	}
	if !e.trackSession(s) {
		bconn.Close()
		if s.up.registered {
			e.poller.forget(s.up.tok)
		}
		e.closeRouted(pc, conn)
		return
	}
	s.start()
}

func (e *Edge) backendFor(route Route) (Backend, mail.Protocol) {
	b := e.backends.Load()
	if route == RouteSMTP {
		return b.SMTP, mail.SMTP
	}
	return b.IMAP, mail.IMAP
}

// DialBackend is the dialer the mail backends must use, so that the edge can
// park the backend side of a session as well.
func (e *Edge) DialBackend(ctx context.Context, network, address string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: noKeepAlive, Control: connectEarly} // loopback: nothing to probe
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	tc, err := newTCPConn(c.(*net.TCPConn))
	if err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

func underlyingTCP(c net.Conn) *tcpConn {
	if tlsConn, ok := c.(*tls.Conn); ok {
		c = tlsConn.NetConn()
	}
	tc, _ := c.(*tcpConn)
	return tc
}
