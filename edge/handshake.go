package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"chatmail-edge/edge/internal/netpoll"
	"chatmail-edge/mail"

	"go.uber.org/zap"
)

// pendingConn is an accepted connection on its way through the handshake.
// Its state is guarded by Edge.mu.
type pendingConn struct {
	l          *listener
	tc         *tcpConn
	src        *source // nil: exempt from the per-source limits
	id         uint64
	accepted   time.Time
	helloAt    time.Time // when the ClientHello was complete
	state      pendingState
	reg        netpoll.Registration
	registered bool

	// hello holds what the client sent first, until the handshake reads it.
	// Only the goroutine working on the connection touches it.
	hello []byte
	turn  handshakeTurn
	info  handshakeInfo
}

type pendingState uint8

const (
	waitingForHello pendingState = iota // parked until the whole ClientHello is here
	queued                              // ClientHello here, in line for a handshake slot
	handshaking
	refusingHTTP // answered plaintext HTTP with a 400; reading what it still sends, then closing
)

// refuseHTTPLinger bounds how long a connection that got the plaintext-HTTP
// 400 is kept open to read what the client still sends: closing a socket
// with unread data resets it, and the client may then lose the answer
// (nginx's lingering_close for the same reason).
const (
	refuseHTTPLinger   = 2 * time.Second
	refuseHTTPMaxBytes = 64 << 10
)

// admit takes a freshly accepted connection. It costs no goroutine and no
// handshake slot until the client's whole ClientHello is here: a connection
// that is silent, or sends its hello a byte at a time, waits in the poller
// and is dropped by the sweeper after HelloTimeout.
func (e *Edge) admit(l *listener, c *net.TCPConn) {
	l.stats.accepted.Add(1)
	id := e.nextID.Add(1)
	lim := e.limits.Load()
	remote := addrPort(c.RemoteAddr())
	if e.activeConns.Add(1) > int64(lim.MaxConnections) {
		e.activeConns.Add(-1)
		l.stats.failures[FailOverload].Add(1)
		refuse(c)
		e.overloadLog.warn(e.log, "connection limit reached, refusing", zap.Uint64("conn", id),
			zap.String("listener", l.cfg.Name), zap.Int("limit", lim.MaxConnections))
		return
	}
	src, refusal := e.sources.admit(remote.Addr(), &lim.Sources, time.Now())
	if refusal != sourceOK {
		e.activeConns.Add(-1)
		l.stats.failures[FailSourceLimit].Add(1)
		e.sourceRefusals[refusal].Add(1)
		refuse(c)
		e.sourceLimitLog.info(e.log, "per-source limit reached, refusing", zap.Uint64("conn", id),
			zap.String("listener", l.cfg.Name), zap.Stringer("remote", remote), zap.Stringer("limit", refusal))
		return
	}
	l.stats.active.Add(1)
	tc, err := newTCPConn(c)
	if err != nil {
		_ = c.Close()
		e.sources.handshakeDone(src)
		e.release(l, src)
		e.log.Warn("accepted connection unusable", zap.Uint64("conn", id), zap.Error(err))
		return
	}
	pc := &pendingConn{l: l, tc: tc, src: src, id: id, accepted: time.Now()}
	pc.turn.slots = e.slots
	e.mu.Lock()
	e.pending[pc] = struct{}{}
	e.mu.Unlock()
	if e.poller == nil {
		// Without a poller (another platform, or NoParking) a goroutine
		// waits for the hello, still without a handshake slot.
		go e.readHelloBlocking(pc)
		return
	}
	// Most clients send their ClientHello right behind the TCP handshake:
	// then it is already here and goes straight to a handshake, without a
	// trip through the poller.
	e.readHello(pc)
}

// refuse closes a connection with a reset: the cheapest way to say no.
func refuse(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// release counts a connection out once it is closed, whatever its stage.
func (e *Edge) release(l *listener, src *source) {
	l.stats.active.Add(-1)
	e.activeConns.Add(-1)
	e.sources.closed(src)
}

// readHello reads what the socket holds of the client's first bytes, without
// waiting, and moves the connection on: to a handshake once the ClientHello
// is whole, back to the poller while it is not, or out if it cannot be TLS.
// It runs on the accept goroutine first, then on each readiness event.
func (e *Edge) readHello(pc *pendingConn) {
	for {
		n, verdict, why, err := pc.fillHello(pc.tc.tryRead)
		switch {
		case verdict == helloComplete:
			e.helloComplete(pc)
		case verdict != helloIncomplete:
			e.refuseHello(pc, verdict, why)
		case n > 0:
			continue // read on: the buffer may have been too small
		case isWouldBlock(err):
			e.waitForHello(pc)
		default:
			e.dropPending(pc, FailHandshake, "the client closed before its ClientHello was complete: "+errString(err))
		}
		return
	}
}

// fillHello reads once more of the client's first bytes into pc.hello with
// read, and judges what is there.
func (pc *pendingConn) fillHello(read func([]byte) (int, error)) (n int, verdict helloVerdict, why, err error) {
	if len(pc.hello) == cap(pc.hello) {
		if pc.hello = growHello(pc.hello); pc.hello == nil {
			return 0, helloBad, errHelloLarge, nil
		}
	}
	n, err = read(pc.hello[len(pc.hello):cap(pc.hello)])
	pc.hello = pc.hello[:len(pc.hello)+n]
	verdict, why = checkHello(pc.hello)
	return n, verdict, why, err
}

// growHello makes room for more of a ClientHello: the record the bytes so
// far announce, but at most twice what arrived, so that what a client
// holds of the edge's memory grows with what it sent, not with what it
// claims. It returns nil once the most a ClientHello may take is reached.
func growHello(b []byte) []byte {
	if cap(b) >= maxHelloBuffer {
		return nil
	}
	size := min(max(2*len(b), helloInitialBuffer), helloWanted(b), maxHelloBuffer)
	size = max(size, len(b)+recordHeaderLen)
	return append(make([]byte, 0, size), b...)
}

func errString(err error) string {
	if err == nil {
		return "EOF"
	}
	return err.Error()
}

// readHelloBlocking is readHello without a poller: it waits for the hello on
// its own goroutine, up to HelloTimeout.
func (e *Edge) readHelloBlocking(pc *pendingConn) {
	_ = pc.tc.SetReadDeadline(pc.accepted.Add(e.limits.Load().HelloTimeout))
	for {
		_, verdict, why, err := pc.fillHello(pc.tc.Read)
		switch {
		case verdict == helloComplete:
			_ = pc.tc.SetReadDeadline(time.Time{})
			e.helloComplete(pc)
		case verdict != helloIncomplete:
			e.refuseHello(pc, verdict, why)
		case err == nil:
			continue
		default:
			reason := FailHandshake
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				reason = FailTimeout
			}
			e.dropPending(pc, reason, "waiting for the ClientHello: "+err.Error())
		}
		return
	}
}

// waitForHello parks a connection until more of its hello arrives. The
// registration stays with the connection: its session's client pump takes
// it over later.
func (e *Edge) waitForHello(pc *pendingConn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.pending[pc]; !ok {
		return
	}
	var err error
	if pc.registered {
		err = e.poller.Rearm(pc.reg)
	} else if pc.reg, err = e.poller.Register(pc.tc.fd, func() { e.helloReadable(pc) }); err == nil {
		pc.registered = true
	}
	if err != nil {
		go e.dropPending(pc, FailOverload, "waiting for the ClientHello: "+err.Error())
	}
}

// helloReadable runs when a parked connection has more bytes (or hung up).
func (e *Edge) helloReadable(pc *pendingConn) {
	e.mu.Lock()
	_, ok := e.pending[pc]
	state := pc.state
	e.mu.Unlock()
	switch {
	case !ok:
	case state == waitingForHello:
		e.readHello(pc)
	case state == refusingHTTP:
		e.drainRefused(pc)
	}
}

// helloComplete puts a connection with its whole ClientHello in line for a
// handshake slot.
func (e *Edge) helloComplete(pc *pendingConn) {
	e.mu.Lock()
	if _, ok := e.pending[pc]; !ok {
		e.mu.Unlock()
		return
	}
	pc.state = queued
	pc.helloAt = time.Now()
	e.mu.Unlock()
	e.inHandshake.Add(1)
	e.slots.enqueue(pc)
}

// refuseHello turns away a connection whose first bytes cannot start a TLS
// handshake. Plaintext HTTP on the HTTPS port gets a 400, as from nginx.
func (e *Edge) refuseHello(pc *pendingConn, verdict helloVerdict, why error) {
	if verdict != helloPlainHTTP || pc.l.cfg.Kind != KindMux || e.poller == nil {
		e.dropPending(pc, FailNotTLS, why.Error())
		return
	}
	e.mu.Lock()
	pc.state = refusingHTTP
	pc.helloAt = time.Now()
	e.mu.Unlock()
	pc.hello = nil
	_ = pc.tc.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := pc.tc.writeSocket([]byte(plainHTTPResponse)); err != nil {
		e.dropPending(pc, FailNotTLS, why.Error())
		return
	}
	_ = pc.tc.CloseWrite()
	e.drainRefused(pc)
}

// drainRefused reads and drops what a refused plaintext client still sends,
// until it closes, up to refuseHTTPMaxBytes (the sweeper ends the wait).
func (e *Edge) drainRefused(pc *pendingConn) {
	var buf [4096]byte
	for total := 0; total < refuseHTTPMaxBytes; {
		n, err := pc.tc.tryRead(buf[:])
		total += n
		switch {
		case isWouldBlock(err):
			e.waitForHello(pc)
			return
		case err != nil:
			e.dropPending(pc, FailNotTLS, errPlainHTTP.Error())
			return
		}
	}
	e.dropPending(pc, FailNotTLS, errPlainHTTP.Error())
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
	inLine := pc.state == queued || pc.state == handshaking
	if pc.registered {
		e.poller.Forget(pc.reg)
		pc.registered = false
	}
	e.mu.Unlock()
	if inLine {
		e.inHandshake.Add(-1)
	}
	_ = pc.tc.SetLinger(0)
	_ = pc.tc.Close()
	pc.l.stats.failures[reason].Add(1)
	e.sources.handshakeDone(pc.src)
	e.release(pc.l, pc.src)
	e.log.Info("connection dropped", zap.Uint64("conn", pc.id), zap.String("listener", pc.l.cfg.Name),
		zap.Stringer("remote", pc.tc.remote), zap.String("reason", reason.String()), zap.String("detail", detail))
}

// HandshakeBacklog is the number of connections whose ClientHello has
// arrived and whose handshake has not finished: in line for a slot or in
// a handshake. A burst of reconnecting clients shows here first; it is
// cheap enough to read often.
func (e *Edge) HandshakeBacklog() int {
	return int(e.inHandshake.Load())
}

// startHandshake runs pc's handshake, which has a slot, on the runner.
func (e *Edge) startHandshake(pc *pendingConn) {
	e.runner.Do(func() { e.handshake(pc) })
}

func (e *Edge) handshake(pc *pendingConn) {
	defer pc.turn.release()
	l, tc := pc.l, pc.tc
	e.mu.Lock()
	if _, ok := e.pending[pc]; !ok { // dropped while in line
		e.mu.Unlock()
		return
	}
	pc.state = handshaking
	e.mu.Unlock()
	l.stats.observeQueueWait(time.Since(pc.helloAt))

	deadline := pc.accepted.Add(e.limits.Load().HandshakeTimeout)
	if !time.Now().Before(deadline) {
		e.dropPending(pc, FailTimeout, "in line past the handshake timeout")
		return
	}
	_ = tc.SetDeadline(deadline)
	if keys := e.echFront.Load(); keys != nil && len(keys.keys) > 0 {
		pc.info.front = newECHFront(keys, pc.hello)
		tc.front = pc.info.front
	} else {
		tc.prelude = pc.hello
	}
	pc.hello = nil
	tc.turn = &pc.turn
	conn := tls.Server(tc, l.tlsConfig)
	start := time.Now()
	err := conn.HandshakeContext(context.WithValue(context.Background(), handshakeInfoKey{}, &pc.info))
	elapsed := time.Since(start)
	tc.turn = nil
	front := pc.info.front
	if front != nil && front.drained() {
		tc.front = nil // an idle session must not keep its buffer
	}
	if err != nil {
		reason := FailHandshake
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			reason = FailTimeout
		}
		detail := err.Error()
		if why := pc.info.versionRefusal(); why != "" {
			detail = why + ": " + detail
		}
		e.dropPending(pc, reason, detail)
		return
	}

	e.mu.Lock()
	_, ok := e.pending[pc]
	delete(e.pending, pc)
	e.mu.Unlock()
	if !ok { // dropped while finishing (shutdown)
		return
	}
	e.inHandshake.Add(-1)
	e.sources.handshakeDone(pc.src)
	_ = tc.SetDeadline(time.Time{})
	pc.turn.release() // the rest (a backend dial) needs no slot

	cs := conn.ConnectionState()
	ech := ECHNone
	// crypto/tls reports acceptance only when it opened the hello itself;
	// when the front did, it answered as a split-mode backend.
	if cs.ECHAccepted || front != nil && front.accepted {
		ech = ECHAccepted
	} else if pc.info.echOffered() {
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
		e.connectBackend(pc, conn, route, &cs)
	}
}

// forgetRegistration gives up the poller registration a connection got
// while it waited for its ClientHello, when no session takes it over. The
// registration is disarmed, so nothing fires until the socket is closed.
// pc has left e.pending: nothing else looks at it any more.
func (e *Edge) forgetRegistration(pc *pendingConn) {
	if pc.registered {
		e.poller.Forget(pc.reg)
		pc.registered = false
	}
}

func (e *Edge) toHTTP(pc *pendingConn, conn *tls.Conn) {
	e.mu.Lock()
	e.httpConns[conn] = connSlot{pc.l, pc.src, pc.id}
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

// connSlot is what a routed connection counts against until it closes.
type connSlot struct {
	l   *listener
	src *source
	id  uint64
}

func (e *Edge) closeRouted(pc *pendingConn, conn *tls.Conn) {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = conn.Close()
	e.release(pc.l, pc.src)
}

var errNoBackend = errors.New("no backend configured for this route")

// connectBackend dials the route's backend and starts the session. If the
// backend cannot be reached within BackendTimeout, the client gets its
// protocol's refusal (IMAP BYE, SMTP 421) rather than a silent close.
func (e *Edge) connectBackend(pc *pendingConn, conn *tls.Conn, route Route, cs *tls.ConnectionState) {
	l, tc := pc.l, pc.tc
	b, proto := e.backendFor(route)
	var bconn net.Conn
	var btc *tcpConn
	err := errNoBackend
	if b != nil {
		ctx, cancel := context.WithTimeout(context.Background(), e.limits.Load().BackendTimeout)
		if btc, err = e.dialBackend(ctx, b.Address()); err == nil {
			bconn, err = b.Open(ctx, btc, mail.ClientInfo{
				Source: tc.remote, Destination: tc.local,
				TLSVersion: cs.Version, CipherSuite: cs.CipherSuite,
				ServerName: cs.ServerName, ALPN: cs.NegotiatedProtocol,
			})
		}
		cancel()
		if o, ok := b.(BackendObserver); ok {
			o.Observe(err)
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
	s := newSession(e, connSlot{l, pc.src, pc.id}, pc.id, route, conn, tc, bconn, btc)
	if pc.registered {
		// The client's socket keeps the registration it waited for its
		// ClientHello with: re-arming it costs one epoll_ctl, removing and
		// adding it again two. The session is not tracked yet, so nothing
		// else sees its pumps.
		e.poller.Retarget(pc.reg, s.up.runFunc)
		s.up.reg, s.up.registered = pc.reg, true
		pc.registered = false
	}
	if !e.trackSession(s) {
		bconn.Close()
		if s.up.registered {
			e.poller.Forget(s.up.reg)
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

// dialBackend connects to a mail daemon for a session, as a tcpConn that
// the session can park too.
func (e *Edge) dialBackend(ctx context.Context, address string) (*tcpConn, error) {
	d := net.Dialer{KeepAlive: noKeepAlive, Control: netpoll.ConnectEarly} // loopback: nothing to probe
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	tc, err := newTCPConn(c.(*net.TCPConn))
	if err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}
