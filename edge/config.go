package edge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
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

	// HandshakeTimeout bounds the time from accept to the end of the TLS
	// handshake, queueing included. Default 15s.
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
	// MaxHandshakes bounds concurrent TLS handshakes. Connections beyond it
	// queue (in arrival order) instead of all competing for CPU. Default 256.
	MaxHandshakes int
	// MinTLSVersion defaults to TLS 1.3: ECH needs it (RFC 9849 §4), and
	// chatmail's Dovecot and Postfix require it on 993 and 465 anyway.
	MinTLSVersion uint16
	// Hostname is the name given in IMAP BYE and SMTP 421 refusals.
	Hostname string
	// TicketKeyFile stores the TLS session ticket keys so that clients can
	// resume across restarts ("" = random keys per process, Go's default).
	TicketKeyFile string
	// NoParking keeps one goroutine per direction per connection instead of
	// parking idle connections in the poller (for comparison only).
	NoParking bool
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.HandshakeTimeout, 15*time.Second)
	def(&c.IdleTimeout, 30*time.Minute)
	def(&c.LingerTimeout, 30*time.Second)
	def(&c.BackendTimeout, 5*time.Second)
	if c.MaxConnections <= 0 {
		c.MaxConnections = 20000
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = 256
	}
	if c.MinTLSVersion == 0 {
		c.MinTLSVersion = tls.VersionTLS13
	}
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
	if c.MinTLSVersion < tls.VersionTLS12 {
		return errors.New("minimum TLS version below 1.2 is not supported")
	}
	return nil
}
