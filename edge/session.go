package edge

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"chatmail-edge/edge/internal/netpoll"

	"go.uber.org/zap"
)

// session is one proxied IMAP or SMTP connection: the client's TLS connection
// on one side, the backend (plaintext after a PROXY header, or re-encrypted
// TLS) on the other, and one pump per direction.
//
// While no data flows, a session owns no goroutine and no buffer: both pumps
// are parked in the poller. A pump borrows a buffer from the pool only while it
// moves data.
type session struct {
	e       *Edge
	slot    connSlot // what it counts against
	id      uint64
	route   Route
	started time.Time

	client     *tls.Conn
	clientTCP  *tcpConn
	backend    net.Conn // backendTCP itself, or a *tls.Conn over it
	backendTCP *tcpConn

	up    pump         // client to backend
	down  pump         // backend to client
	watch sessionWatch // follows both directions for a clean farewell

	lastActive atomic.Int64 // unix nanoseconds of the last data moved
	halfClosed atomic.Int64 // unix nanoseconds when one direction ended, 0 if none

	mu     sync.Mutex // guards closed and the pumps' poll registrations
	closed bool
}

// pump moves bytes in one direction of a session.
type pump struct {
	s          *session
	src        io.Reader
	srcTCP     *tcpConn
	dst        io.Writer
	dstTCP     *tcpConn
	srcTLS     *tls.Conn // src as TLS, to trim its buffers when parked; nil when src is plain TCP
	dstTLS     *tls.Conn // dst as TLS, for close_notify; nil when dst is plain TCP
	bytes      *atomic.Uint64
	reg        netpoll.Registration
	registered bool        // tok is valid; guarded by s.mu
	ended      atomic.Bool // src reached EOF
	running    bool        // a turn of run is moving data; guarded by s.mu
	observe    func([]byte)
	runFunc    func()
}

func newSession(e *Edge, slot connSlot, id uint64, route Route, client *tls.Conn, clientTCP *tcpConn, backend net.Conn, backendTCP *tcpConn) *session {
	s := &session{
		e: e, slot: slot, id: id, route: route, started: time.Now(),
		client: client, clientTCP: clientTCP, backend: backend, backendTCP: backendTCP,
	}
	backendTLS, _ := backend.(*tls.Conn)
	l := slot.l
	s.up = pump{s: s, src: client, srcTCP: clientTCP, srcTLS: client, dst: backend, dstTCP: backendTCP, dstTLS: backendTLS, bytes: &l.stats.bytesIn}
	s.down = pump{s: s, src: backend, srcTCP: backendTCP, srcTLS: backendTLS, dst: client, dstTCP: clientTCP, dstTLS: client, bytes: &l.stats.bytesOut}
	s.watch = newSessionWatch(route)
	s.up.observe, s.down.observe = s.watch.up, s.watch.down
	s.up.runFunc = s.up.run
	s.down.runFunc = s.down.run
	s.lastActive.Store(s.started.UnixNano())
	return s
}

// start sets both pumps going. A direction with nothing to read is parked
// right away; one whose tls.Conn already holds data from the handshake (the
// client's first command, the backend's greeting) runs at once, because no
// readiness event would ever announce bytes that left the socket already.
func (s *session) start() {
	if s.e.poller == nil {
		go s.up.run()
		go s.down.run()
		return
	}
	s.clientTCP.parked = true
	s.backendTCP.parked = true
	for _, p := range [...]*pump{&s.up, &s.down} {
		if p.srcTLS != nil && (tlsHasBuffered(p.srcTLS) || p.srcTCP.holdsUnread()) {
			s.e.runner.Do(p.runFunc)
		} else {
			p.park()
		}
	}
}

func (p *pump) run() {
	s := p.s
	s.e.busyPumps.Add(1)
	defer s.e.busyPumps.Add(-1)
	// The poller wakes this run through the kernel (epoll), an order Go's
	// memory model does not see. park re-arms the poller holding s.mu, so
	// taking it here orders this run after the previous one of this pump
	// (its use of the read-ahead fields of srcTCP included).
	if !p.setRunning(true) {
		return
	}
	bufs := s.e.bufs.get(p.srcTLS != nil, p.dstTLS != nil)
	if bufs.ahead != nil {
		p.srcTCP.startReadAhead(bufs.ahead)
	}
	release := func() {
		if bufs.ahead != nil {
			p.srcTCP.stopReadAhead()
		}
		s.e.bufs.put(bufs)
	}
	blocking := !p.srcTCP.parked // a goroutine per direction: it waits in read
	for {
		if blocking && !p.setRunning(false) {
			release()
			return
		}
		n, err := p.read(bufs.chunk)
		if blocking && !p.setRunning(true) {
			release()
			return // drained meanwhile: what came is not passed on
		}
		if n > 0 {
			s.lastActive.Store(time.Now().UnixNano())
			p.observe(bufs.chunk[:n])
			if werr := p.write(bufs.chunk[:n], bufs.batch); werr != nil {
				release()
				p.setRunning(false)
				s.close("write failed", werr)
				return
			}
			if s.e.sayingGoodbye.Load() && s.closeIfQuiet(p) {
				release()
				return
			}
		}
		if err == nil {
			continue
		}
		release()
		if isWouldBlock(err) {
			if p.srcTLS != nil && !s.e.cfg.NoTLSBufferTrim {
				trimTLSBuffers(p.srcTLS)
			}
			p.park()
			return
		}
		p.setRunning(false)
		p.end(err)
		return
	}
}

// setRunning marks the pump as moving data (or not), for the drain, which
// says goodbye only while neither pump runs. It reports false when the
// session is closed: a pump must then stop.
func (p *pump) setRunning(running bool) bool {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	p.running = running && !s.closed
	return !s.closed
}

// read fills buf from the source. crypto/tls hands out one record per Read,
// so from a parked (non-blocking) TLS source it keeps reading the records
// that have already arrived, up to a full chunk; the first read that would
// block ends it with errWouldBlock and what was gathered.
func (p *pump) read(buf []byte) (int, error) {
	n, err := p.src.Read(buf)
	for err == nil && p.srcTLS != nil && p.srcTCP.parked && len(buf)-n >= maxRecordPlaintext {
		var m int
		m, err = p.src.Read(buf[n:])
		n += m
	}
	return n, err
}

// write sends b to the destination. Through TLS, the records crypto/tls
// makes of b are collected in batch and leave in one write.
func (p *pump) write(b []byte, batch []byte) error {
	p.dstTCP.SetWriteDeadline(time.Now().Add(p.s.e.limits.Load().IdleTimeout))
	if batch != nil {
		p.dstTCP.collectWrites(batch)
	}
	n, err := p.dst.Write(b)
	if batch != nil {
		if ferr := p.dstTCP.sendCollected(); err == nil {
			err = ferr
		}
	}
	p.bytes.Add(uint64(n))
	return err
}

// park waits for the source socket to become readable again.
func (p *pump) park() {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	p.running = false
	if s.closed {
		return
	}
	var err error
	if p.registered {
		err = s.e.poller.Rearm(p.reg)
	} else if p.reg, err = s.e.poller.Register(p.srcTCP.fd, p.runFunc); err == nil {
		p.registered = true
	}
	if err != nil {
		go s.close("park failed", err)
	}
}

// end handles the source's end of stream or a read error.
func (p *pump) end(err error) {
	s := p.s
	if p == &s.down {
		s.backendGone()
	}
	if !errors.Is(err, io.EOF) {
		s.close("read failed", err)
		return
	}
	// Pass the half-close on (RFC 8446 §6.1 close_notify, then TCP FIN) and
	// let the other direction drain; IMAP and SMTP servers close right after.
	// Once the other direction has ended too, closing says the same: Close
	// sends the close_notify, and a socket read to its end closes with a FIN.
	p.ended.Store(true)
	if p.other().ended.Load() {
		s.close("closed", nil)
		return
	}
	if p.dstTLS != nil {
		p.dstTLS.SetWriteDeadline(time.Now().Add(time.Second))
		_ = p.dstTLS.CloseWrite()
	}
	_ = p.dstTCP.CloseWrite()
	if s.up.ended.Load() && s.down.ended.Load() {
		s.close("closed", nil)
		return
	}
	s.halfClosed.CompareAndSwap(0, time.Now().UnixNano())
}

// other is the pump of the opposite direction.
func (p *pump) other() *pump {
	if p == &p.s.up {
		return &p.s.down
	}
	return &p.s.up
}

// close ends the session once; later calls do nothing.
func (s *session) close(reason string, err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.markClosed()
	s.mu.Unlock()
	s.finishClose(reason, err)
}

// closeIfQuiet closes the session with its protocol's farewell if that cuts
// nothing now: neither pump is moving data, and the watch sees both sides
// between commands and responses with no mail transaction open.
//
// by is the pump that asks, right after it moved data (nil: the drain,
// for sessions where nothing moves): it may be running, the other may not.
// A session that goes from one mail transaction to the next without a
// pause is caught this way, right after the reply that ended one.
func (s *session) closeIfQuiet(by *pump) bool {
	s.mu.Lock()
	busy := s.up.running || s.down.running
	if by != nil {
		busy = by.other().running
	}
	if s.closed || busy || !s.watch.quiet() || !s.e.takeGoodbye() {
		s.mu.Unlock()
		return false
	}
	s.markClosed()
	if by != nil {
		by.running = false
	}
	s.mu.Unlock()
	s.client.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = s.client.Write(s.watch.farewell(s.e.cfg.Hostname))
	s.finishClose("drained", nil)
	return true
}

// markClosed stops the pumps from running again; s.mu is held.
func (s *session) markClosed() {
	s.closed = true
	// Both sockets are closed by finishClose, which takes them out of the
	// epoll set.
	for _, p := range [...]*pump{&s.up, &s.down} {
		if p.registered {
			s.e.poller.Forget(p.reg)
			p.registered = false
		}
	}
}

// finishClose closes both connections and counts the session out.
func (s *session) finishClose(reason string, err error) {
	// The slot is free before the session leaves the table, so whoever sees
	// it gone (a test, the status page) can count on the slot too.
	s.e.release(s.slot.l, s.slot.src)
	s.e.forgetSession(s)
	// Bound the close_notify write: a client that stopped reading must not
	// hold this goroutine.
	s.client.SetWriteDeadline(time.Now().Add(time.Second))
	_ = s.client.Close()
	_ = s.backend.Close()

	fields := []zap.Field{
		zap.Uint64("conn", s.id), zap.String("route", s.route.String()),
		zap.String("reason", reason), zap.Duration("duration", time.Since(s.started)),
	}
	if err != nil && !isClosedConnError(err) {
		fields = append(fields, zap.Error(err))
	}
	s.e.log.Debug("session closed", fields...)
	s.e.closing.Done()
}

// expired reports whether the sweeper should close the session.
func (s *session) expired(now int64) (bool, string) {
	l := s.e.limits.Load()
	if hc := s.halfClosed.Load(); hc != 0 && now-hc > int64(l.LingerTimeout) {
		return true, "half-closed too long"
	}
	if now-s.lastActive.Load() > int64(l.IdleTimeout) {
		return true, "idle timeout"
	}
	return false, ""
}

func isClosedConnError(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF)
}
