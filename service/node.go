package service

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"

	"chatmail-edge/config"
	"chatmail-edge/edge"
	"chatmail-edge/internal/filelimit"
	"chatmail-edge/mail"
	"chatmail-edge/web"
)

// A node is an edge in front of a relay elsewhere ([node] relay, see
// docs/NODES.md). It terminates TLS with ECH and routes by the inner ALPN
// as the relay's own edge does; then IMAP and SMTP sessions go on to the
// relay's Dovecot and Postfix, and HTTPS requests to the relay's HTTPS
// port, each over TLS with the relay's certificate verified for the mail
// domain. What a node answers itself: the ECH configuration, its status
// page and metrics, ACME challenges (from the certificate storage), and the
// :80 redirect.

// relayBackend is a node's way to one of the relay's mail services: a
// mail.Backend in tls or proxy-tls mode that records every attempt, the
// edge's sessions (edge.BackendObserver) and the health probes alike, in
// the relay's reachability.
type relayBackend struct {
	*mail.Backend
	service string // web.RelayIMAP or web.RelaySMTP
	reach   *web.RelayReach
}

// Observe records how the edge's attempt to open a session went.
func (b relayBackend) Observe(err error) { b.reach.Record(b.service, err) }

// Probe is the health check, recorded too.
func (b relayBackend) Probe(ctx context.Context) (mail.ProbeResult, error) {
	res, err := b.Backend.Probe(ctx)
	b.reach.Record(b.service, err)
	return res, err
}

// nodeInstanceConfig gives cfg a node's backends and web side, built from
// the settings at a start and at each reload (the reachability record
// stays).
func nodeInstanceConfig(cfg *instanceConfig, s *config.Settings, reach *web.RelayReach) error {
	roots, err := relayRoots(s.Node.CAFile)
	if err != nil {
		return fmt.Errorf("%w: [node] ca_file: %w", config.ErrConfig, err)
	}
	mode := mail.ModeTLS
	if s.Node.Connect == config.NodeConnectProxy {
		mode = mail.ModeProxyTLS
	}
	backend := func(p mail.Protocol, service, addr string) (relayBackend, error) {
		b, err := mail.NewBackend(mail.BackendConfig{
			Protocol: p, Mode: mode, Address: addr, DialTimeout: s.BackendTimeout,
			TLSServerName: s.MailDomain, TLSVerify: true, RootCAs: roots,
		})
		return relayBackend{Backend: b, service: service, reach: reach}, err
	}
	cfg.Backends = func() (edge.Backends, error) {
		imapB, err := backend(mail.IMAP, web.RelayIMAP, s.Node.RelayIMAP())
		if err != nil {
			return edge.Backends{}, fmt.Errorf("[node] relay IMAP: %w", err)
		}
		smtpB, err := backend(mail.SMTP, web.RelaySMTP, s.Node.RelaySMTP())
		if err != nil {
			return edge.Backends{}, fmt.Errorf("[node] relay SMTP: %w", err)
		}
		return edge.Backends{IMAP: imapB, SMTP: smtpB}, nil
	}
	name := s.Node.Name
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return fmt.Errorf("the node's name: [node] name is empty and the host name unknown: %w", err)
		}
	}
	// Everything the relay serves over HTTP is the relay's: nothing of it
	// runs here.
	cfg.Web.MXDeliv, cfg.Web.IrohRelay, cfg.Web.NewAccountCGI, cfg.Web.SiteDir = "", "", "", ""
	cfg.Web.Node = &web.NodeConfig{
		Name: name, Relay: s.Node.RelayHTTPS(), RootCAs: roots, Reachable: reach,
		IMAP: fmt.Sprintf("%s (%s)", s.Node.RelayIMAP(), s.Node.Connect), SMTP: fmt.Sprintf("%s (%s)", s.Node.RelaySMTP(), s.Node.Connect),
	}
	return nil
}

// relayRoots are the CAs a node trusts for the relay's certificate: those
// in file, or the system's (nil) when file is "".
func relayRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := filelimit.ReadFile(file, filelimit.PEM)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", file)
	}
	return roots, nil
}
