package edge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Kind says how a listener routes its connections.
type Kind uint8

const (
	// KindMux is port 443: route by the negotiated (inner, when ECH is
	// accepted) ALPN: imap, smtp, or HTTP for h2, http/1.1 and none.
	KindMux  Kind = iota
	KindIMAP      // implicit-TLS IMAP (993, RFC 8314 §3.3)
	KindSMTP      // implicit-TLS submission (465, RFC 8314 §3.3)
)

func (k Kind) String() string { return [...]string{"mux", "imap", "smtp"}[k] }

// ListenerConfig is one TCP listener.
type ListenerConfig struct {
	Name    string // "https", "imaps", "smtps": used in logs and metrics
	Address string // host:port; port 0 picks a free port
	Kind    Kind
	// Listener, if set, is an open socket to serve instead of listening on
	// Address (which then only names it): one inherited from the process
	// this one replaces, or kept by systemd across a restart. Drain and
	// Shutdown close it; after a failed Start the caller does (closing
	// twice is harmless).
	Listener *net.TCPListener
}

// Config holds the edge's own settings. Zero values take the defaults below.
type Config struct {
	Listeners []ListenerConfig

	// Limits are the timeouts and limits; a running edge can change them
	// (SetLimits).
	Limits

	// Hostname is the name given in IMAP BYE and SMTP 421 refusals.
	Hostname string
	// TicketKeyFile stores the TLS session ticket keys so that clients can
	// resume across restarts ("" = random keys per process, Go's default).
	TicketKeyFile string
	// NoParking keeps one goroutine per direction per connection instead of
	// parking idle connections in the poller (for comparison only).
	NoParking bool
	// NoTLSBufferTrim keeps crypto/tls's input buffers of parked
	// connections (tlsbuffers.go; for comparison only).
	NoTLSBufferTrim bool
}

// Limits are the timeouts and limits of an edge. New connections get the
// values in force when they arrive; the sweeper applies the idle and linger
// timeouts to every session from its next round, counted from the session's
// last activity, as a restart would. Zero values take the defaults.
type Limits struct {
	// HelloTimeout bounds the time from accept until the client's whole
	// ClientHello has arrived. Until then a connection waits in the poller
	// and holds no handshake slot. Default 5s.
	HelloTimeout time.Duration
	// HandshakeTimeout bounds the time from accept to the end of the TLS
	// handshake, waiting for a slot included. Default 15s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a proxied connection after no data moved either way
	// for this long, and bounds a blocked write. Default 30m: Dovecot sends
	// an IDLE keepalive every 2 minutes, nginx's stream default is 10m.
	IdleTimeout time.Duration
	// LingerTimeout closes a connection this long after one side ended its
	// stream while the other did not. Default 30s.
	LingerTimeout time.Duration
	// BackendTimeout bounds dialing a backend (and its TLS handshake in tls
	// mode); the client then gets a refusal (IMAP BYE, SMTP 421). Default 5s.
	BackendTimeout time.Duration
	// MaxConnections bounds all connections together, in any stage. Default 20000.
	MaxConnections int
	// MaxHandshakes bounds the handshakes computing at once. A handshake
	// gives its slot back while it waits for the client, so a slow client
	// never holds one; beyond the limit, handshakes queue, fairly between
	// sources (see Sources). Default 256.
	MaxHandshakes int

	// Sources are the limits per client address.
	Sources SourceLimits

	// MinTLS are the lowest TLS versions each route accepts.
	MinTLS MinTLS
}

// MinTLS are the lowest TLS versions a client may use, per route: the
// version is agreed before the application protocol (RFC 8446 §4.1.1,
// RFC 7301 §3.2), so the edge picks the route's minimum from the
// ClientHello's ALPN list (tlsconfig.go). Each is tls.VersionTLS12 or
// tls.VersionTLS13; ECH needs TLS 1.3 (RFC 9849 §4), so a TLS 1.2 client
// never has it.
type MinTLS struct {
	// HTTP defaults to TLS 1.2, as chatmail's nginx (ssl_protocols TLSv1.2
	// TLSv1.3): older browsers and MTA-STS policy fetchers use it.
	HTTP uint16
	// IMAP and SMTP default to TLS 1.3, which chatmail's Dovecot and
	// Postfix require on 993 and 465.
	IMAP, SMTP uint16
}

// forRoute is the minimum for a route; ACME's TLS-ALPN-01 validation (RFC
// 8737 §3: TLS 1.2 or later) goes with the web's.
func (m MinTLS) forRoute(r Route) uint16 {
	switch r {
	case RouteIMAP:
		return m.IMAP
	case RouteSMTP:
		return m.SMTP
	}
	return m.HTTP
}

// SourceLimits bound what one source can take. A source is one IPv4 address
// or one IPv6 /64 (the smallest block an end site gets, RFC 6177), so that a
// host cannot multiply itself by picking addresses from its own prefix.
type SourceLimits struct {
	// MaxConnections is the number of connections one source may hold, in
	// any stage. Default 1000: about a tenth of the IMAP connections
	// chatmail lets Dovecot serve, and room for a large NAT.
	MaxConnections int
	// MaxHandshakes is the number of connections one source may have before
	// their handshakes are done (waiting for the ClientHello, in line for a
	// slot, or in the handshake). Default 100.
	MaxHandshakes int
	// NewPerSecond is the rate of new connections one source may open, with
	// a burst of five seconds' worth. Default 20.
	NewPerSecond int
	// Exempt are networks to which none of these limits apply (the edge's
	// own host, monitoring). nil means the default, loopback; an empty
	// non-nil slice exempts nothing.
	Exempt []netip.Prefix
}

// DefaultLimits are the limits a zero Limits stands for.
func DefaultLimits() Limits {
	return Limits{
		HelloTimeout:     5 * time.Second,
		HandshakeTimeout: 15 * time.Second,
		IdleTimeout:      30 * time.Minute,
		LingerTimeout:    30 * time.Second,
		BackendTimeout:   5 * time.Second,
		MaxConnections:   20000,
		MaxHandshakes:    256,
		Sources: SourceLimits{
			MaxConnections: 1000,
			MaxHandshakes:  100,
			NewPerSecond:   20,
			Exempt:         []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		},
		MinTLS: MinTLS{HTTP: tls.VersionTLS12, IMAP: tls.VersionTLS13, SMTP: tls.VersionTLS13},
	}
}

// withDefaults fills the zero fields of l from def.
func (l Limits) withDefaults(def Limits) Limits {
	d := func(v *time.Duration, dv time.Duration) {
		if *v <= 0 {
			*v = dv
		}
	}
	n := func(v *int, dv int) {
		if *v <= 0 {
			*v = dv
		}
	}
	d(&l.HandshakeTimeout, def.HandshakeTimeout)
	d(&l.HelloTimeout, min(def.HelloTimeout, l.HandshakeTimeout)) // a default never exceeds an explicit handshake timeout
	d(&l.IdleTimeout, def.IdleTimeout)
	d(&l.LingerTimeout, def.LingerTimeout)
	d(&l.BackendTimeout, def.BackendTimeout)
	n(&l.MaxConnections, def.MaxConnections)
	n(&l.MaxHandshakes, def.MaxHandshakes)
	n(&l.Sources.MaxConnections, def.Sources.MaxConnections)
	n(&l.Sources.MaxHandshakes, def.Sources.MaxHandshakes)
	n(&l.Sources.NewPerSecond, def.Sources.NewPerSecond)
	if l.Sources.Exempt == nil {
		l.Sources.Exempt = def.Sources.Exempt
	}
	v := func(v *uint16, dv uint16) {
		if *v == 0 {
			*v = dv
		}
	}
	v(&l.MinTLS.HTTP, def.MinTLS.HTTP)
	v(&l.MinTLS.IMAP, def.MinTLS.IMAP)
	v(&l.MinTLS.SMTP, def.MinTLS.SMTP)
	return l
}

func (l Limits) validate() error {
	if l.HelloTimeout > l.HandshakeTimeout {
		return fmt.Errorf("hello timeout %v is longer than the handshake timeout %v", l.HelloTimeout, l.HandshakeTimeout)
	}
	for _, p := range l.Sources.Exempt {
		if !p.IsValid() {
			return errors.New("invalid exempt network")
		}
	}
	for _, v := range []uint16{l.MinTLS.HTTP, l.MinTLS.IMAP, l.MinTLS.SMTP} {
		if v != tls.VersionTLS12 && v != tls.VersionTLS13 {
			return fmt.Errorf("minimum TLS version %#04x: want TLS 1.2 or 1.3", v)
		}
	}
	return nil
}

func (c *Config) setDefaults() {
	c.Limits = c.Limits.withDefaults(DefaultLimits())
}

func (c *Config) validate() error {
	if len(c.Listeners) == 0 {
		return errors.New("no listeners configured")
	}
	seen := map[string]bool{}
	for _, l := range c.Listeners {
		if l.Name == "" || l.Address == "" {
			return fmt.Errorf("listener %q: name and address are required", l.Name)
		}
		if seen[l.Name] {
			return fmt.Errorf("listener %q configured twice", l.Name)
		}
		seen[l.Name] = true
		if l.Kind > KindSMTP {
			return fmt.Errorf("listener %q: unknown kind %d", l.Name, l.Kind)
		}
	}
	return c.Limits.validate()
}
