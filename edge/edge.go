// Package edge terminates TLS with Encrypted Client Hello on the relay's public
// ports and routes each connection by port and by its inner ALPN: IMAP and
// SMTP to the mail backends, everything else to the in-process web server.
package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"chatmail-edge/edge/internal/netpoll"
	"chatmail-edge/mail"

	"go.uber.org/zap"
)

// Backend is the daemon behind a mail route; *mail.Backend implements it.
// The edge dials it itself, so that it owns the socket of both sides of a
// session (and parks both); the backend only opens the session on it.
type Backend interface {
	// Address is where the daemon listens (host:port).
	Address() string
	// Open starts a session for the client described by info on conn,
	// which the edge dialed to Address (a PROXY header, or a TLS client
	// handshake), and returns what to proxy through: conn, or TLS over it.
	// On an error it has closed conn.
	Open(ctx context.Context, conn net.Conn, info mail.ClientInfo) (net.Conn, error)
}

// BackendObserver is what a Backend may also implement to hear how each
// attempt to reach it for a session ended, the dial included: a node keeps
// the relay's reachability for its status page this way.
type BackendObserver interface {
	// Observe is called once per attempt, before the session starts or the
	// client is refused: nil when the session opened, else the error.
	Observe(err error)
}

// Backends are the mail routes' targets. A nil entry refuses that route.
type Backends struct {
	IMAP Backend
	SMTP Backend
}

// Edge owns the public TLS listeners and every connection they accept.
type Edge struct {
	cfg     Config
	log     *zap.Logger
	getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)

	echKeys     atomic.Pointer[[]tls.EncryptedClientHelloKey]
	echFront    atomic.Pointer[echFrontKeys] // the same keys, parsed for echfront.go
	echConfigID atomic.Uint32                // of the current key, for the status page
	backends    atomic.Pointer[Backends]
	limits      atomic.Pointer[Limits] // cfg's timeouts and limits, changed by SetLimits

	listeners []*listener
	poller    *netpoll.Poller // nil: no parking (platform or Config.NoParking)
	runner    *netpoll.Runner // handshakes, pump turns and backend dials
	bufs      *bufferPools
	slots     *handshakeSlots
	sources   *sourceTable
	http      *handoffListener

	nextID      atomic.Uint64
	activeConns atomic.Int64
	busyPumps   atomic.Int64 // pumps moving data right now (the rest are parked)
	inHandshake atomic.Int64 // connections with their ClientHello here and the handshake not done

	// Refusals at accept by a per-source limit, by sourceRefusal, and the
	// sampled log lines of refusals.
	sourceRefusals [4]atomic.Uint64
	overloadLog    sampledLog
	sourceLimitLog sampledLog

	mu            sync.Mutex
	sessions      map[*session]struct{}
	pending       map[*pendingConn]struct{}
	httpConns     map[net.Conn]connSlot
	limitsChanged chan struct{} // tells the sweeper to pick its interval again

	nextTicketRotation time.Time // touched by Start and the sweeper only

	// While draining: sessions may get their goodbye (sayingGoodbye), and
	// how many more in this round of the drain (goodbyes).
	sayingGoodbye atomic.Bool
	goodbyes      atomic.Int64

	stopAcceptOnce sync.Once
	stopOnce       sync.Once
	closing        sync.WaitGroup // sessions not yet completely closed
	stop           chan struct{}
	wg             sync.WaitGroup
}

// New checks the configuration and prepares an edge; Start opens its ports.
// getCert chooses the certificate for a handshake (by inner SNI when ECH is
// accepted, else by the outer SNI, the ECH public_name).
func New(cfg Config, log *zap.Logger, getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) (*Edge, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("edge config: %w", err)
	}
	if getCert == nil {
		return nil, errors.New("edge config: no certificate source")
	}
	e := &Edge{
		cfg:       cfg,
		log:       log,
		getCert:   getCert,
		sessions:  make(map[*session]struct{}),
		pending:   make(map[*pendingConn]struct{}),
		httpConns: make(map[net.Conn]connSlot),
		stop:      make(chan struct{}),
		runner:    netpoll.NewRunner(),
		sources:   newSourceTable(),
		http:      newHandoffListener(),

		limitsChanged: make(chan struct{}, 1),
	}
	e.slots = newHandshakeSlots(cfg.MaxHandshakes, e.startHandshake)
	limits := cfg.Limits
	e.limits.Store(&limits)
	e.echKeys.Store(&noECHKeys)
	e.backends.Store(&Backends{})
	for _, lc := range cfg.Listeners {
		e.listeners = append(e.listeners, newListener(e, lc))
	}
	return e, nil
}

// noECHKeys is what GetEncryptedClientHelloKeys returns while ECH is off; the
// API wants a non-nil slice.
var noECHKeys = []tls.EncryptedClientHelloKey{}

// SetECHKeys replaces the ECH keys on every listener at once, for new
// handshakes. keys are newest first; the current one has SendAsRetry set.
func (e *Edge) SetECHKeys(keys []tls.EncryptedClientHelloKey, currentConfigID uint8) {
	if keys == nil {
		keys = noECHKeys
	}
	e.echFront.Store(newECHFrontKeys(keys))
	e.echKeys.Store(&keys)
	e.echConfigID.Store(uint32(currentConfigID))
}

// SetBackends replaces the mail backends for new connections.
func (e *Edge) SetBackends(b Backends) { e.backends.Store(&b) }

// SetSessionTicketKeys sets the TLS session ticket keys of every listener
// (the first encrypts, all decrypt). Keys that outlive a restart let clients
// resume after it, which is what makes a reconnect storm cheap.
func (e *Edge) SetSessionTicketKeys(keys [][32]byte) {
	for _, l := range e.listeners {
		l.tlsConfig.SetSessionTicketKeys(keys)
	}
}

// HTTPListener yields the TLS connections routed to HTTP, for the web server.
func (e *Edge) HTTPListener() net.Listener { return e.http }

// Start opens every listener and starts serving. On error nothing is left open.
func (e *Edge) Start() error {
	if e.cfg.TicketKeyFile != "" {
		if err := e.rotateTicketKeys(time.Now()); err != nil {
			return err
		}
	}
	if !e.cfg.NoParking {
		p, err := netpoll.New(e.runner.Do)
		switch {
		case err == nil:
			e.poller = p
		case !errors.Is(err, netpoll.ErrUnsupported):
			return err
		}
	}
	e.bufs = newBufferPools(e.poller != nil)
	for i, l := range e.listeners {
		if err := l.listen(); err != nil {
			for _, opened := range e.listeners[:i] {
				opened.ln.Close()
			}
			if e.poller != nil {
				e.poller.Close()
			}
			return err
		}
	}
	e.wg.Go(e.sweep)
	for _, l := range e.listeners {
		e.wg.Go(l.acceptLoop)
	}
	e.log.Info("edge started", zap.Strings("listeners", e.addrStrings()), zap.Bool("parking", e.poller != nil))
	return nil
}

// Addr is the bound address of the named listener (useful with port 0).
func (e *Edge) Addr(name string) net.Addr {
	for _, l := range e.listeners {
		if l.cfg.Name == name && l.ln != nil {
			return l.ln.Addr()
		}
	}
	return nil
}

func (e *Edge) addrStrings() []string {
	var out []string
	for _, l := range e.listeners {
		out = append(out, l.cfg.Name+"="+l.ln.Addr().String())
	}
	return out
}

// Shutdown stops accepting, then closes every connection the edge still owns
// (IMAP and SMTP clients reconnect; HTTP connections belong to the web server).
func (e *Edge) Shutdown() {
	e.stopOnce.Do(func() {
		close(e.stop)
		e.stopAccepting()
		e.http.Close()
		e.mu.Lock()
		pending := make([]*pendingConn, 0, len(e.pending))
		for pc := range e.pending {
			pending = append(pending, pc)
		}
		sessions := make([]*session, 0, len(e.sessions))
		for s := range e.sessions {
			sessions = append(sessions, s)
		}
		e.mu.Unlock()
		e.slots.close()
		for _, pc := range pending {
			e.dropPending(pc, FailTimeout, "shutting down")
		}
		for _, s := range sessions {
			s.close("shutting down", nil)
		}
		e.closing.Wait() // some may have been closing on their own
		e.wg.Wait()
		if e.poller != nil {
			e.poller.Close()
		}
		e.runner.Close()
		e.log.Info("edge stopped")
	})
}

// Snapshot copies the counters for the status page and metrics.
func (e *Edge) Snapshot() Snapshot {
	s := Snapshot{
		Parked: e.poller != nil, BusyPumps: e.busyPumps.Load(),
		ECHKeys: len(*e.echKeys.Load()), ECHConfigID: uint8(e.echConfigID.Load()),
	}
	for _, l := range e.listeners {
		addr := l.cfg.Address
		if l.ln != nil {
			addr = l.ln.Addr().String()
		}
		s.Listeners = append(s.Listeners, l.stats.snapshot(l.cfg.Name, addr))
	}
	e.mu.Lock()
	s.ActiveSessions = int64(len(e.sessions))
	s.Pending = int64(len(e.pending))
	for pc := range e.pending {
		if pc.state == waitingForHello {
			s.WaitingForHello++
		}
	}
	e.mu.Unlock()
	s.HandshakeQueue = int64(e.slots.queued())
	s.Sources = e.sources.size()
	s.SourceRefusals = make(map[string]uint64, len(e.sourceRefusals)-1)
	for r := sourceTooFast; int(r) < len(e.sourceRefusals); r++ {
		s.SourceRefusals[r.String()] = e.sourceRefusals[r].Load()
	}
	return s
}

func (e *Edge) trackSession(s *session) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-e.stop:
		return false
	default:
	}
	e.sessions[s] = struct{}{}
	e.closing.Add(1) // done when its close is complete (finishClose)
	return true
}

func (e *Edge) forgetSession(s *session) {
	e.mu.Lock()
	delete(e.sessions, s)
	e.mu.Unlock()
}

// sweep closes sessions that sat idle or half-closed too long, and
// connections that never sent a ClientHello.
func (e *Edge) sweep() {
	t := time.NewTicker(e.sweepInterval())
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-e.limitsChanged:
			t.Reset(e.sweepInterval())
		case now := <-t.C:
			e.sweepOnce(now)
			if e.cfg.TicketKeyFile != "" && now.After(e.nextTicketRotation) {
				if err := e.rotateTicketKeys(now); err != nil {
					e.log.Error("session ticket key rotation failed; keeping the current keys", zap.Error(err))
					e.nextTicketRotation = now.Add(time.Hour)
				}
			}
		}
	}
}

func (e *Edge) sweepOnce(now time.Time) {
	type expiredSession struct {
		s      *session
		reason string
	}
	type expiredConn struct {
		pc     *pendingConn
		reason FailReason
		detail string
	}
	var sessions []expiredSession
	var conns []expiredConn
	nowNs := now.UnixNano()
	lim := e.limits.Load()
	e.mu.Lock()
	for s := range e.sessions {
		if ok, reason := s.expired(nowNs); ok {
			sessions = append(sessions, expiredSession{s, reason})
		}
	}
	for pc := range e.pending {
		switch age := now.Sub(pc.accepted); {
		case pc.state == waitingForHello && age > lim.HelloTimeout:
			conns = append(conns, expiredConn{pc, FailTimeout, "no whole ClientHello before the hello timeout"})
		case pc.state == queued && age > lim.HandshakeTimeout:
			conns = append(conns, expiredConn{pc, FailTimeout, "in line for a handshake slot past the handshake timeout"})
		case pc.state == refusingHTTP && now.Sub(pc.helloAt) > refuseHTTPLinger:
			conns = append(conns, expiredConn{pc, FailNotTLS, errPlainHTTP.Error()})
		}
	}
	e.mu.Unlock()
	for _, x := range sessions {
		go x.s.close(x.reason, nil)
	}
	for _, x := range conns {
		e.dropPending(x.pc, x.reason, x.detail)
	}
	e.sources.sweep(&lim.Sources, now)
}
