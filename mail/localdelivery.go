package mail

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-smtp"
	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const (
	// proxyHeaderTimeout bounds the wait for a PROXY header, as Postfix's
	// smtpd_upstream_proxy_timeout (5s) does.
	proxyHeaderTimeout = 5 * time.Second
	// maxMessageBytes is chatmail's Postfix message_size_limit (30 MiB).
	maxMessageBytes = 31457280
	// maxRecipients is Postfix's default smtpd_recipient_limit.
	maxRecipients = 1000
	// smtpReadTimeout is the server's timeout for the next command
	// (RFC 5321 §4.5.3.2.7); smtpWriteTimeout bounds each reply.
	smtpReadTimeout  = 5 * time.Minute
	smtpWriteTimeout = time.Minute
)

// LocalDelivery stands in for Dovecot and Postfix in the `demo` mode: an
// IMAP server (go-imap's imapmemserver) and an SMTP submission server
// (go-smtp) that delivers into it, both on loopback behind a mandatory
// PROXY v2 header, as the daemons are configured in proxy mode.
type LocalDelivery struct {
	domain string
	log    *zap.Logger
	logs   logGate
	store  *imapmemserver.Server
	listen func() (net.Listener, error) // listenProxied; tests serve on other listeners
	connID atomic.Uint64                // numbers connections for the logs

	accountsMu sync.Mutex
	accounts   map[string]*account // by address

	mu       sync.Mutex
	metadata ServerMetadata // GETMETADATA "" answers; nil: none
	state    deliveryState
	imap     *imapserver.Server
	smtp     *smtp.Server
	imapAddr string
	smtpAddr string
	// The listeners are closed by us too: a server Closed before its Serve
	// has begun does not know them yet.
	listeners []net.Listener
	serving   sync.WaitGroup
}

type deliveryState int

const (
	deliveryNew deliveryState = iota
	deliveryStarted
	deliveryClosed
)

// NewLocalDelivery returns a local delivery for addresses @domain. A nil log
// discards the logs.
func NewLocalDelivery(domain string, log *zap.Logger) *LocalDelivery {
	if log == nil {
		log = zap.NewNop()
	}
	d := &LocalDelivery{
		domain:   strings.ToLower(domain),
		store:    imapmemserver.New(),
		listen:   listenProxied,
		accounts: make(map[string]*account),
	}
	d.log = log.WithOptions(zap.WrapCore(func(core zapcore.Core) zapcore.Core {
		return gatedCore{Core: core, gate: &d.logs}
	}))
	return d
}

// Start listens for IMAP and SMTP on 127.0.0.1, each on a port of its own.
// Every connection must come from loopback and open with a PROXY v2 header
// (proxy-protocol.txt §2.2); a LOCAL header, as health checks send, is
// accepted.
func (d *LocalDelivery) Start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != deliveryNew {
		return errors.New("local delivery: started twice or after Close")
	}

	imapLn, err := d.listen()
	if err != nil {
		return fmt.Errorf("local delivery: imap: %w", err)
	}
	smtpLn, err := d.listen()
	if err != nil {
		imapLn.Close()
		return fmt.Errorf("local delivery: smtp: %w", err)
	}
	d.imap, err = d.newIMAPServer()
	if err == nil {
		d.smtp, err = d.newSMTPServer()
	}
	if err != nil {
		imapLn.Close()
		smtpLn.Close()
		return fmt.Errorf("local delivery: %w", err)
	}
	d.imapAddr, d.smtpAddr = imapLn.Addr().String(), smtpLn.Addr().String()
	d.listeners = []net.Listener{imapLn, smtpLn}
	d.state = deliveryStarted

	var imapServed net.Listener = imapLn
	if d.metadata != nil {
		imapServed = &metadataListener{Listener: imapLn, lookup: d.metadata}
	}
	d.serve("imap", d.imap.Serve, imapServed)
	d.serve("smtp", d.smtp.Serve, smtpLn)
	d.log.Info("local delivery listening",
		zap.String("domain", d.domain), zap.String("imap", d.imapAddr), zap.String("smtp", d.smtpAddr))
	return nil
}

// IMAPAddr is the IMAP listener's host:port, "" before Start.
func (d *LocalDelivery) IMAPAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.imapAddr
}

// SMTPAddr is the SMTP listener's host:port, "" before Start.
func (d *LocalDelivery) SMTPAddr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.smtpAddr
}

// Close stops both servers and closes their connections; the mailboxes are
// gone with the LocalDelivery. Once it returns, nothing more is logged.
func (d *LocalDelivery) Close() error {
	d.mu.Lock()
	state := d.state
	d.state = deliveryClosed
	d.mu.Unlock()
	defer d.logs.close()
	if state != deliveryStarted {
		return nil
	}
	err := errors.Join(d.imap.Close(), d.smtp.Close())
	for _, ln := range d.listeners {
		if lnErr := ln.Close(); !errors.Is(lnErr, net.ErrClosed) {
			err = errors.Join(err, lnErr)
		}
	}
	d.serving.Wait()
	if err != nil {
		return fmt.Errorf("local delivery: close: %w", err)
	}
	return nil
}

// serve runs a server's accept loop until Close.
func (d *LocalDelivery) serve(name string, serve func(net.Listener) error, ln net.Listener) {
	d.serving.Go(func() {
		err := serve(ln)
		d.mu.Lock()
		closed := d.state == deliveryClosed
		d.mu.Unlock()
		if err != nil && !closed {
			d.log.Error("local delivery: listener stopped", zap.String("protocol", name), zap.Error(err))
		}
	})
}

// listenProxied listens on loopback for connections that must open with a
// PROXY header. Only loopback peers may connect at all, like Dovecot's
// haproxy_trusted_networks (Postfix has no such list and must bind to
// loopback).
func listenProxied() (net.Listener, error) {
	policy, err := proxyproto.TrustProxyHeaderFromRanges([]string{"127.0.0.0/8", "::1/128"})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &proxyproto.Listener{
		Listener:          ln,
		ConnPolicy:        policy, // REQUIRE from loopback, drop everyone else
		ReadHeaderTimeout: proxyHeaderTimeout,
	}, nil
}

func (d *LocalDelivery) newIMAPServer() (*imapserver.Server, error) {
	log := d.log.Named("imap")
	errorLog, err := zap.NewStdLogAt(log, zap.WarnLevel)
	if err != nil {
		return nil, err
	}
	return imapserver.New(&imapserver.Options{
		NewSession: func(conn *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			log.Debug("connection", zap.Uint64("conn", d.connID.Add(1)), zap.Stringer("client", conn.NetConn().RemoteAddr()))
			// imapmemserver's sessions implement IMAP4rev2 (NAMESPACE, MOVE).
			session := d.store.NewSession().(imapserver.SessionIMAP4rev2)
			metadata, _ := conn.NetConn().(*metadataConn) // nil without SetServerMetadata
			return &imapSession{SessionIMAP4rev2: session, delivery: d, metadata: metadata}, nil, nil
		},
		Caps: imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}, imap.CapIdle: {}},
		// Plaintext LOGIN is fine: the edge terminated TLS and this port is
		// on loopback (Dovecot trusts PP2_CLIENT_SSL the same way).
		InsecureAuth: true,
		Logger:       errorLog,
	}), nil
}
