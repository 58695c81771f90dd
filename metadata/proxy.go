package metadata

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Config of the proxy. Zero numbers take the defaults below.
type Config struct {
	// Upstream is chatmail's metadata service (ChatmailSocket).
	Upstream string
	// ECHFile is the edge's published ECH config list (DefaultECHFile).
	ECHFile string

	// MaxConnections from Dovecot at once; more are closed at once, and
	// Dovecot reports the lookup as failed. Dovecot holds a connection
	// only while an IMAP command uses METADATA (its dict client's idle
	// timeout is 0 by default).
	MaxConnections int
	// UpstreamTimeout bounds connecting to chatmail's service and each
	// wait for a reply from it.
	UpstreamTimeout time.Duration
	// IdleTimeout closes a connection from Dovecot that has nothing
	// waiting and sent no complete line for that long.
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to either socket.
	WriteTimeout time.Duration
}

const (
	DefaultMaxConnections = 512
	// DefaultUpstreamTimeout is below Dovecot's 30 s request timeout
	// (dict-client.c, DICT_CLIENT_REQUEST_TIMEOUT_MSECS), so Dovecot
	// hears that chatmail's service failed before it gives up itself.
	DefaultUpstreamTimeout = 20 * time.Second
	DefaultIdleTimeout     = time.Minute
	DefaultWriteTimeout    = 10 * time.Second

	// maxDovecotLine is what Dovecot's own dict server accepts from its
	// clients (DICT_CLIENT_MAX_LINE_LENGTH, dict-connection.c).
	maxDovecotLine = 64 << 10
	// maxUpstreamLine bounds a reply from chatmail's service: a
	// devicetoken lookup joins all of a user's push tokens.
	maxUpstreamLine = 1 << 20
	// maxPending commands may wait for their replies on one connection.
	// Dovecot's client waits for each lookup and commit; it has a few in
	// flight at most.
	maxPending = 64
	// maxBufferedReplies bounds the reply bytes held back to keep Dovecot's
	// replies in order (only an out-of-order upstream makes any).
	maxBufferedReplies = 1 << 20
)

// Proxy serves Dovecot's dict protocol: ECHEntry from the published file,
// everything else passed to chatmail's service. Each connection from
// Dovecot gets its own connection to chatmail's service, opened with the
// first request for it, so transaction ids and all other state of the
// protocol stay per connection, as without the proxy.
type Proxy struct {
	cfg   Config
	log   *zap.Logger
	ech   *ECHFile
	slots chan struct{}

	closing   chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
	connIDs   atomic.Uint64
}

// New checks cfg and returns a proxy; Serve runs it on a listener.
func New(cfg Config, log *zap.Logger) (*Proxy, error) {
	if cfg.Upstream == "" || cfg.ECHFile == "" {
		return nil, errors.New("metadata proxy: the upstream socket and the ECH file must be set")
	}
	if cfg.MaxConnections < 0 || cfg.UpstreamTimeout < 0 || cfg.IdleTimeout < 0 || cfg.WriteTimeout < 0 {
		return nil, errors.New("metadata proxy: negative limit")
	}
	setDefault(&cfg.MaxConnections, DefaultMaxConnections)
	setDefault(&cfg.UpstreamTimeout, DefaultUpstreamTimeout)
	setDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	setDefault(&cfg.WriteTimeout, DefaultWriteTimeout)
	return &Proxy{
		cfg:       cfg,
		log:       log,
		ech:       NewECHFile(cfg.ECHFile, log),
		slots:     make(chan struct{}, cfg.MaxConnections),
		closing:   make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]struct{}),
	}, nil
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// Listen makes the unix socket Dovecot connects to, with mode perm. A
// socket left behind by an earlier run is replaced; any other file at
// path is an error.
func Listen(path string, perm fs.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listen on %s: a file that is not a socket is in the way", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen on %s: remove the old socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, perm); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return ln, nil
}

// Serve accepts connections from Dovecot until Close. It returns nil after
// Close.
func (p *Proxy) Serve(ln net.Listener) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		ln.Close()
		return errors.New("metadata proxy: closed")
	}
	p.listeners[ln] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.listeners, ln)
		p.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			select {
			case <-p.closing:
				return nil
			default:
			}
			if !isTemporary(err) {
				return fmt.Errorf("metadata proxy: accept: %w", err)
			}
			// Out of file descriptors, say: wait a little, as
			// net/http's server does, rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("accept failed, retrying", zap.Duration("in", backoff), zap.Error(err))
			select {
			case <-p.closing:
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case p.slots <- struct{}{}:
		default:
			p.log.Warn("too many connections from Dovecot, closing a new one", zap.Int("max_connections", p.cfg.MaxConnections))
			conn.Close()
			continue
		}
		if !p.startSession(conn) {
			return nil
		}
	}
}

// startSession serves conn on a goroutine of its own, unless Close has
// begun. The WaitGroup is added to under the lock that Close takes first,
// so Close's Wait sees every session.
func (p *Proxy) startSession(conn net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		conn.Close()
		<-p.slots
		return false
	}
	p.conns[conn] = struct{}{}
	p.wg.Go(func() {
		newSession(p, conn).run()
		p.mu.Lock()
		delete(p.conns, conn)
		p.mu.Unlock()
		<-p.slots
	})
	return true
}

// isTemporary is what accept(2) may fail with and then work again.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Close stops the listeners, ends every connection (Dovecot retries a
// lookup once on a new connection) and waits for them.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		close(p.closing)
		for ln := range p.listeners {
			ln.Close()
		}
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	p.wg.Wait()
	return nil
}

// entry is a command waiting for its reply, in the order Dovecot sent it.
type entry struct {
	cmd      command
	upstream bool     // answered by chatmail's service
	asyncID  uint64   // its "*<id>" from chatmail's service, 0 for none
	lines    [][]byte // reply lines not yet written to Dovecot
	done     bool     // the reply is complete
}

type lineRead struct {
	line []byte
	err  error
}

// session is one connection from Dovecot and, once needed, its
// connection to chatmail's service. One goroutine (run) owns all of it;
// two readers feed it lines.
type session struct {
	p    *Proxy
	log  *zap.Logger
	down net.Conn

	downLines chan lineRead
	stopDown  chan struct{}
	hello     []byte // Dovecot's hello, sent first to chatmail's service

	up      net.Conn // nil: not connected (yet, or any more)
	upLines chan lineRead
	stopUp  chan struct{}
	upErr   error // why chatmail's service cannot answer; sticky

	pending   []*entry
	upWaiting int // pending entries of chatmail's service not done
	buffered  int // bytes in pending entries' lines
	lastDown  time.Time
	lastUp    time.Time
	timer     *time.Timer
}

func newSession(p *Proxy, down net.Conn) *session {
	return &session{
		p:         p,
		log:       p.log.With(zap.Uint64("conn", p.connIDs.Add(1))),
		down:      down,
		downLines: make(chan lineRead),
		stopDown:  make(chan struct{}),
		lastDown:  time.Now(),
	}
}

func (s *session) run() {
	s.p.wg.Go(func() { readLines(s.down, maxDovecotLine, s.downLines, s.stopDown) })
	s.timer = time.NewTimer(s.p.cfg.IdleTimeout)
	defer func() {
		s.timer.Stop()
		close(s.stopDown)
		s.down.Close()
		s.closeUpstream()
	}()
	for {
		select {
		case r := <-s.downLines:
			if r.err != nil {
				s.endOfInput(r.err)
				return
			}
			if err := s.fromDovecot(r.line); err != nil {
				s.log.Warn("closing the connection from Dovecot", zap.Error(err))
				return
			}
		case r := <-s.upLines: // nil, and never ready, without upstream
			if r.err != nil {
				s.failUpstream(fmt.Errorf("read: %w", r.err))
			} else {
				s.fromUpstream(r.line)
			}
		case <-s.timer.C:
			if s.timedOut(time.Now()) {
				return
			}
		case <-s.p.closing:
			return
		}
		if s.buffered > maxBufferedReplies {
			s.failUpstream(fmt.Errorf("more than %d bytes of replies held back for order", maxBufferedReplies))
		}
		if err := s.flush(); err != nil {
			s.log.Info("cannot write to Dovecot, closing", zap.Error(err))
			return
		}
		s.armTimer()
	}
}

func (s *session) endOfInput(err error) {
	switch {
	case errors.Is(err, io.EOF) && len(s.pending) == 0:
		s.log.Debug("Dovecot closed the connection")
	case errors.Is(err, errLineTooLong):
		s.log.Warn("closing the connection from Dovecot", zap.Error(err))
	default:
		s.log.Info("connection from Dovecot ended", zap.Int("unanswered", len(s.pending)), zap.Error(err))
	}
}

// fromDovecot handles one command. An error ends the connection, as
// Dovecot's own dict server ends it on input it cannot parse.
func (s *session) fromDovecot(line []byte) error {
	s.lastDown = time.Now()
	cmd, err := parseCommand(line)
	if err != nil {
		return fmt.Errorf("bad input from Dovecot: %w", err)
	}
	switch {
	case (s.hello == nil) != (cmd.op == cmdHello):
		return fmt.Errorf("bad input from Dovecot: want the hello first and only once, got %q", clip(line))
	case cmd.op == cmdHello:
		s.hello = line
		return nil
	case cmd.reply != noReply && len(s.pending) >= maxPending:
		return fmt.Errorf("more than %d commands waiting for their replies", maxPending)
	case cmd.op == cmdLookup && isECHKey(cmd.key):
		e := &entry{cmd: cmd, done: true}
		s.pending = append(s.pending, e)
		s.hold(e, s.echReply())
		return nil
	}

	e := &entry{cmd: cmd, upstream: true}
	if cmd.reply != noReply {
		s.pending = append(s.pending, e)
		s.upWaiting++
		if s.upWaiting == 1 {
			s.lastUp = time.Now()
		}
	}
	if s.up == nil && s.upErr == nil {
		s.connectUpstream()
	}
	if s.upErr != nil {
		s.failPending() // a transaction step without a reply is dropped
		return nil
	}
	if err := s.writeUpstream(line); err != nil {
		s.failUpstream(fmt.Errorf("write: %w", err))
	}
	return nil
}

func (s *session) echReply() []byte {
	value, ok := s.p.ech.Value()
	if !ok {
		return []byte{replyNotFound}
	}
	return []byte(string(replyOK) + tabEscape(value))
}

// connectUpstream opens the connection to chatmail's service and sends it
// Dovecot's hello.
func (s *session) connectUpstream() {
	up, err := net.DialTimeout("unix", s.p.cfg.Upstream, s.p.cfg.UpstreamTimeout)
	if err != nil {
		s.failUpstream(fmt.Errorf("connect: %w", err))
		return
	}
	s.up = up
	s.upLines = make(chan lineRead)
	s.stopUp = make(chan struct{})
	lines, stop := s.upLines, s.stopUp
	s.p.wg.Go(func() { readLines(up, maxUpstreamLine, lines, stop) })
	if err := s.writeUpstream(s.hello); err != nil {
		s.failUpstream(fmt.Errorf("write the hello: %w", err))
	}
}

func (s *session) writeUpstream(line []byte) error {
	s.up.SetWriteDeadline(time.Now().Add(s.p.cfg.WriteTimeout))
	_, err := s.up.Write(append(line[:len(line):len(line)], '\n'))
	return err
}

// fromUpstream files one reply line from chatmail's service under the
// command it answers, as Dovecot's dict client would (dict-client.c,
// dict_conn_input_line): "*<id>" names the oldest waiting command without
// an id, "+<id>\t<reply>" answers the command with that id, any other
// line answers the oldest waiting command.
func (s *session) fromUpstream(line []byte) {
	s.lastUp = time.Now()
	ul, err := parseUpstreamLine(line)
	if err != nil {
		s.failUpstream(err)
		return
	}
	var target *entry
	for _, e := range s.pending {
		if !e.upstream || e.done {
			continue
		}
		if ul.assigns != 0 && e.asyncID == ul.assigns {
			s.failUpstream(fmt.Errorf("async id %d given twice", ul.assigns))
			return
		}
		if target == nil && (ul.asyncID == 0 && ul.assigns == 0 ||
			ul.asyncID != 0 && e.asyncID == ul.asyncID ||
			ul.assigns != 0 && e.asyncID == 0) {
			target = e
		}
	}
	if target == nil {
		s.failUpstream(fmt.Errorf("a reply for no waiting command: %q", clip(line)))
		return
	}
	if ul.assigns != 0 {
		target.asyncID = ul.assigns
		return
	}
	s.hold(target, ul.body)
	if target.cmd.reply == oneLine || endsIteration(ul.body) {
		target.done = true
		s.upWaiting--
	}
}

// failUpstream gives up on chatmail's service for the rest of this
// connection: its transactions are gone with its connection. Every
// command waiting for it gets a failure reply, as do those that follow.
func (s *session) failUpstream(err error) {
	if s.upErr != nil {
		return
	}
	s.upErr = fmt.Errorf("chatmail's metadata service %s: %w", s.p.cfg.Upstream, err)
	s.log.Warn("chatmail's metadata service failed; its entries fail on this connection, the ECH entry still answers", zap.Error(s.upErr))
	s.closeUpstream()
	s.failPending()
}

func (s *session) failPending() {
	reason := "chatmail-edge metadata proxy: " + s.upErr.Error()
	for _, e := range s.pending {
		if e.upstream && !e.done {
			s.hold(e, failureReply(e.cmd, reason))
			e.done = true
		}
	}
	s.upWaiting = 0
}

// hold keeps a reply line of e until flush writes it in order.
func (s *session) hold(e *entry, line []byte) {
	e.lines = append(e.lines, line)
	s.buffered += len(line)
}

func (s *session) closeUpstream() {
	if s.up == nil {
		return
	}
	close(s.stopUp)
	s.up.Close()
	s.up, s.upLines, s.stopUp = nil, nil, nil
}

// flush writes the replies that are next in Dovecot's order, in one write.
func (s *session) flush() error {
	var out []byte
	for len(s.pending) > 0 {
		e := s.pending[0]
		for _, l := range e.lines {
			out = append(append(out, l...), '\n')
			s.buffered -= len(l)
		}
		e.lines = nil
		if !e.done {
			break
		}
		s.pending[0] = nil
		s.pending = s.pending[1:]
	}
	if len(out) == 0 {
		return nil
	}
	s.down.SetWriteDeadline(time.Now().Add(s.p.cfg.WriteTimeout))
	_, err := s.down.Write(out)
	return err
}

// armTimer sets the timer to the next deadline: chatmail's reply while one
// is awaited, else Dovecot's next line while nothing is pending.
func (s *session) armTimer() {
	var next time.Time
	if s.upWaiting > 0 {
		next = s.lastUp.Add(s.p.cfg.UpstreamTimeout)
	}
	if len(s.pending) == 0 {
		next = s.lastDown.Add(s.p.cfg.IdleTimeout)
	}
	if !next.IsZero() {
		s.timer.Reset(time.Until(next))
	}
}

// timedOut acts on the deadlines that have passed; true ends the session.
func (s *session) timedOut(now time.Time) bool {
	if s.upWaiting > 0 && !now.Before(s.lastUp.Add(s.p.cfg.UpstreamTimeout)) {
		s.failUpstream(fmt.Errorf("no reply within %v", s.p.cfg.UpstreamTimeout))
	}
	if len(s.pending) == 0 && !now.Before(s.lastDown.Add(s.p.cfg.IdleTimeout)) {
		s.log.Debug("closing an idle connection from Dovecot", zap.Duration("idle_timeout", s.p.cfg.IdleTimeout))
		return true
	}
	return false
}

var errLineTooLong = errors.New("line too long")

// readLines sends each line read from conn, without its "\n", until an
// error, which it sends too; or until stop.
func readLines(conn net.Conn, maxLine int, out chan<- lineRead, stop <-chan struct{}) {
	r := bufio.NewReaderSize(conn, 4096)
	for {
		line, err := readLine(r, maxLine)
		select {
		case out <- lineRead{line, err}:
		case <-stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// readLine reads up to "\n", at most maxLine bytes before it.
func readLine(r *bufio.Reader, maxLine int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > maxLine+1 {
			return nil, fmt.Errorf("%w: more than %d bytes", errLineTooLong, maxLine)
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, fmt.Errorf("%w in the middle of a line", io.ErrUnexpectedEOF)
		default:
			return nil, err
		}
	}
}
