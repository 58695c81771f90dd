package mail

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Mode is how the edge reaches a mail daemon.
type Mode string

const (
	// ModeTLS dials the daemon's implicit-TLS port (993, 465) and encrypts
	// again. It needs no change to Dovecot or Postfix, so it is the default,
	// but the daemon sees every client as the edge's loopback address.
	ModeTLS Mode = "tls"
	// ModeProxy dials a plaintext loopback port of the daemon and sends a
	// PROXY v2 header first (Dovecot `haproxy = yes`, Postfix
	// `smtpd_upstream_proxy_protocol = haproxy`), so the daemon sees the
	// real client address and, for Dovecot, that the client used TLS.
	ModeProxy Mode = "proxy"
	// ModeProxyTLS sends a PROXY v2 header with the client's addresses and
	// then makes the TLS handshake, for daemons on another host (a node in
	// front of a relay, docs/NODES.md): Dovecot and Postfix read the header
	// before their TLS (a Dovecot listener with `haproxy = yes` and
	// `ssl = yes`, a Postfix service with smtpd_upstream_proxy_protocol and
	// smtpd_tls_wrappermode). The header crosses the network in the clear, so
	// it carries the addresses only: the inner SNI and ALPN that ECH hid stay
	// hidden, and the TLS TLV would say nothing the daemon's own TLS does not.
	ModeProxyTLS Mode = "proxy-tls"
)

// encrypts tells whether the mode makes a TLS handshake with the daemon.
func (m Mode) encrypts() bool { return m == ModeTLS || m == ModeProxyTLS }

// sendsHeader tells whether the mode opens with a PROXY v2 header.
func (m Mode) sendsHeader() bool { return m == ModeProxy || m == ModeProxyTLS }

const (
	DefaultDialTimeout  = 5 * time.Second
	DefaultProbeTimeout = 15 * time.Second // a whole probe, when the caller's context has no deadline

	// probeHeloHost is the name a probe gives in EHLO; it only talks to the
	// relay's own Postfix over loopback.
	probeHeloHost = "localhost"
	// sessionCacheSize bounds the TLS sessions kept for resumption; one
	// backend address needs only a few.
	sessionCacheSize = 32
)

// BackendConfig says how to reach one mail daemon.
type BackendConfig struct {
	Protocol      Protocol
	Mode          Mode           // "" means ModeTLS
	Address       string         // host:port
	DialTimeout   time.Duration  // connect, plus PROXY header or TLS handshake; default DefaultDialTimeout
	TLSServerName string         // tls modes: name to send as SNI and to verify; default the host of Address
	TLSVerify     bool           // tls modes: verify the daemon's certificate (default false: loopback daemon, self-signed relays)
	RootCAs       *x509.CertPool // tls modes with TLSVerify: the CAs to trust; nil is the system's
}

// Backend dials one mail daemon. It is safe for concurrent use.
type Backend struct {
	cfg       BackendConfig
	tlsConfig *tls.Config // tls modes; holds the shared session cache
}

// ProbeResult is the outcome of Backend.Probe.
type ProbeResult struct {
	Protocol    Protocol
	Mode        Mode
	Address     string
	DialLatency time.Duration // connect, plus the TLS handshake in tls mode
	CheckResult
}

// NewBackend checks cfg and fills in its defaults.
func NewBackend(cfg BackendConfig) (*Backend, error) {
	if cfg.Protocol != IMAP && cfg.Protocol != SMTP {
		return nil, fmt.Errorf("mail backend: unknown protocol %v", cfg.Protocol)
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeTLS
	}
	if !cfg.Mode.encrypts() && !cfg.Mode.sendsHeader() {
		return nil, fmt.Errorf("%v backend: unknown mode %q (want %q, %q or %q)", cfg.Protocol, cfg.Mode, ModeTLS, ModeProxy, ModeProxyTLS)
	}
	host, port, err := net.SplitHostPort(cfg.Address)
	if err == nil && (host == "" || port == "") {
		err = errors.New("host and port are both needed")
	}
	if err != nil {
		return nil, fmt.Errorf("%v backend: address %q: %w", cfg.Protocol, cfg.Address, err)
	}
	if cfg.DialTimeout < 0 {
		return nil, fmt.Errorf("%v backend: negative dial timeout %v", cfg.Protocol, cfg.DialTimeout)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.TLSServerName == "" {
		cfg.TLSServerName = host
	}

	b := &Backend{cfg: cfg}
	if cfg.Mode.encrypts() {
		b.tlsConfig = &tls.Config{
			MinVersion:         tls.VersionTLS13,
			ServerName:         cfg.TLSServerName,
			InsecureSkipVerify: !cfg.TLSVerify,
			RootCAs:            cfg.RootCAs,
			// Shared by every connection, so that re-encryption resumes
			// (RFC 8446 §2.2) instead of paying a full handshake each time.
			ClientSessionCache: tls.NewLRUClientSessionCache(sessionCacheSize),
		}
	}
	return b, nil
}

// Config returns the configuration with its defaults filled in.
func (b *Backend) Config() BackendConfig { return b.cfg }

func (b *Backend) String() string {
	return fmt.Sprintf("%v backend %s (%s)", b.cfg.Protocol, b.cfg.Address, b.cfg.Mode)
}

// Address is where the daemon listens, for the edge to dial.
func (b *Backend) Address() string { return b.cfg.Address }

// Open starts a session for the client described by info on conn, which the
// caller dialed to Address: in proxy mode it sends the PROXY v2 header, in
// tls mode it returns a *tls.Conn over conn after a completed handshake, in
// proxy-tls mode both, the header first. It gives up after DialTimeout at
// the latest; on an error conn is closed.
func (b *Backend) Open(ctx context.Context, conn net.Conn, info ClientInfo) (net.Conn, error) {
	header := b.header(info)
	ctx, cancel := context.WithTimeout(ctx, b.cfg.DialTimeout)
	defer cancel()
	conn, err := b.open(ctx, conn, header)
	if err != nil {
		return nil, fmt.Errorf("open %v: %w", b, err)
	}
	return conn, nil
}

// Dial connects to the daemon and opens a session on the connection, as
// the edge does with its own dialer; tests use it.
func (b *Backend) Dial(ctx context.Context, info ClientInfo) (net.Conn, error) {
	conn, err := b.connect(ctx, b.header(info))
	if err != nil {
		return nil, fmt.Errorf("dial %v: %w", b, err)
	}
	return conn, nil
}

// header is the PROXY v2 header that opens a session for info, nil in tls
// mode.
func (b *Backend) header(info ClientInfo) []byte {
	switch b.cfg.Mode {
	case ModeProxy:
		return AppendProxyV2(make([]byte, 0, maxProxyV2Len), info)
	case ModeProxyTLS:
		return AppendProxyV2(make([]byte, 0, maxProxyV2Len), ClientInfo{Source: info.Source, Destination: info.Destination})
	}
	return nil
}

// Probe checks that the daemon answers: it connects (in the proxy modes with
// a LOCAL header, which both daemons accept for health checks), then runs
// CheckIMAP or CheckSMTP without credentials. When ctx has no deadline the
// probe is bounded by DefaultProbeTimeout.
func (b *Backend) Probe(ctx context.Context) (ProbeResult, error) {
	res := ProbeResult{Protocol: b.cfg.Protocol, Mode: b.cfg.Mode, Address: b.cfg.Address}
	ctx, cancel := checkContext(ctx)
	defer cancel()

	var header []byte
	if b.cfg.Mode.sendsHeader() {
		header = AppendProxyV2Local(nil)
	}
	start := time.Now()
	conn, err := b.connect(ctx, header)
	if err != nil {
		return res, fmt.Errorf("probe %v: dial: %w", b, err)
	}
	res.DialLatency = time.Since(start)

	switch b.cfg.Protocol {
	case IMAP:
		res.CheckResult, err = CheckIMAP(ctx, conn, nil)
	case SMTP:
		res.CheckResult, err = CheckSMTP(ctx, conn, probeHeloHost, nil)
	}
	if err != nil {
		return res, fmt.Errorf("probe %v: %w", b, err)
	}
	return res, nil
}

// connect dials, then sends header (proxy modes) and completes the TLS
// handshake (tls modes), all within DialTimeout.
func (b *Backend) connect(ctx context.Context, header []byte) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.DialTimeout)
	defer cancel()

	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", b.cfg.Address)
	if err != nil {
		return nil, WithContextErr(ctx, err)
	}
	return b.open(ctx, conn, header)
}

// open sends header (proxy modes) and then makes the TLS handshake (tls
// modes) on conn within ctx; on an error it closes conn.
func (b *Backend) open(ctx context.Context, conn net.Conn, header []byte) (net.Conn, error) {
	// The deadline bounds the header write and the handshake even where a
	// wrapped conn would not notice ctx.
	deadline, _ := ctx.Deadline()
	err := conn.SetDeadline(deadline)
	if err == nil && header != nil {
		// One write: the header must be sent at once
		// (proxy-protocol.txt §2.2).
		_, err = conn.Write(header)
	}
	if err == nil && b.tlsConfig != nil {
		tlsConn := tls.Client(conn, b.tlsConfig)
		err = tlsConn.HandshakeContext(ctx)
		if err != nil {
			err = fmt.Errorf("TLS handshake with %s: %w", b.cfg.TLSServerName, err)
		}
		conn = tlsConn
	}
	if err == nil {
		err = conn.SetDeadline(time.Time{})
	}
	if err != nil {
		conn.Close()
		return nil, WithContextErr(ctx, err)
	}
	return conn, nil
}

// WithContextErr adds ctx's error to err when ctx is done, so that a timeout
// reads as "context deadline exceeded" rather than only as the I/O error it
// caused ("i/o timeout", which errors.Is already takes for it), and
// errors.Is finds both. A conn deadline set to ctx's deadline may fire a
// moment before ctx itself reports it, so an error once the deadline has
// passed counts as ctx's.
func WithContextErr(ctx context.Context, err error) error {
	ctxErr := ctx.Err()
	if d, ok := ctx.Deadline(); ok && ctxErr == nil && !time.Now().Before(d) {
		ctxErr = context.DeadlineExceeded
	}
	if ctxErr == nil || errors.Is(err, ctxErr) && strings.Contains(err.Error(), ctxErr.Error()) {
		return err
	}
	return fmt.Errorf("%w: %w", ctxErr, err)
}
