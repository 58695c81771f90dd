// Package service is the running edge: Start brings up the edge, the web
// servers, the certificates and the ECH keys from the settings; Reload
// applies a changed configuration; Shutdown (and the drain of a restart or
// an upgrade, handoff.go) ends it without cutting anything. Run is `serve`
// as systemd runs it, RunDemo the demo: the same edge with the in-process
// mail delivery.
package service

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/store"
	"chatmail-edge/web"
)

// Service is the running edge, of `serve` or of the demo: the instance
// (edge, web servers, ECH keys) and its certificates.
type Service struct {
	*instance
	log      *zap.Logger
	certsNow atomic.Pointer[certs] // a reload may replace them (see reload.go)
	// startSettings are the settings the edge started with; a reload
	// compares what only a restart can change with them. nil for the
	// demo, which has no configuration to reload.
	startSettings *config.Settings

	reloadMu sync.Mutex // one reload at a time, none once shutdown began
	stopping bool       // guarded by reloadMu
	// drainFor is [edge] drain_timeout as last loaded (reload applies it);
	// guarded by reloadMu.
	drainFor time.Duration
	// relay records a node's connections to the relay, across reloads.
	relay *web.RelayReach
}

// drainTimeout is [edge] drain_timeout in force.
func (e *Service) drainTimeout() time.Duration {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	return e.drainFor
}

// Start starts serve's edge from the settings: listeners, web servers, ECH
// keys and certificates. It returns once the edge accepts and holds a
// certificate for the mail domain.
func Start(ctx context.Context, s *config.Settings, log *zap.Logger) (*Service, error) {
	return startServe(ctx, s, log, nil, nil)
}

// startServe is Start with its test hooks: listen, if set, opens the
// listeners (handoff.go); onListening runs between the listeners and the
// certificates (tests start their ACME server there, on the ports the
// edge got).
func startServe(ctx context.Context, s *config.Settings, log *zap.Logger, listen func(name, addr string) (*net.TCPListener, error), onListening func(*instance) error) (*Service, error) {
	if note, err := s.FitOpenFileLimit(openFileLimit()); err != nil {
		return nil, err
	} else if note != "" {
		log.Warn(note)
	}
	shared, err := openServeStore(ctx, s, log)
	if err != nil {
		return nil, err
	}
	e, err := startServeOn(ctx, s, shared, log, listen, onListening)
	if err != nil && shared != nil {
		shared.Close()
	}
	return e, err
}

// startServeOn is startServe once the shared store (if any) answers.
func startServeOn(ctx context.Context, s *config.Settings, shared *store.Cached, log *zap.Logger, listen func(name, addr string) (*net.TCPListener, error), onListening func(*instance) error) (*Service, error) {
	c, err := newCerts(s, shared, log)
	if err != nil {
		return nil, err
	}
	relay := web.NewRelayReach()
	cfg, err := instanceConfigFrom(s, relay)
	if err != nil {
		return nil, err
	}
	cfg.Listen, cfg.Shared = listen, shared
	return startService(ctx, cfg, c, s, relay, log, onListening)
}

// startService is what serve and the demo share: the instance from cfg,
// served with the certificates c. settings are what a reload compares
// with; the demo has none. relay records a node's connections to its
// relay (nil for the demo).
func startService(ctx context.Context, cfg instanceConfig, c *certs, settings *config.Settings, relay *web.RelayReach, log *zap.Logger, onListening func(*instance) error) (*Service, error) {
	e := &Service{log: log, startSettings: settings, relay: relay}
	if settings != nil {
		e.drainFor = settings.DrainTimeout
	}
	e.certsNow.Store(c)
	// Handshakes and the status page ask the certificates in use. The ACME
	// manager (and with it the HTTP-01 handler) is never replaced: a change
	// of the certificate source needs a restart.
	cfg.GetCert = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) { return e.certs().GetCertificate(hello) }
	cfg.WrapHTTP, cfg.Certs = c.HTTPHandler, e
	in, err := startInstance(cfg, log)
	if err != nil {
		return nil, err
	}
	e.instance = in
	if onListening != nil {
		if err := onListening(in); err != nil {
			in.shutdown()
			return nil, err
		}
	}
	if err := c.start(ctx, in); err != nil {
		in.shutdown()
		return nil, fmt.Errorf("certificates: %w", err)
	}
	return e, nil
}

// certs are the certificates in use.
func (e *Service) certs() *certs { return e.certsNow.Load() }

// Addr is where the named listener (https, imaps, smtps) accepts, nil for
// none: for tests that start an edge on port 0.
func (e *Service) Addr(listener string) net.Addr { return e.edge.Addr(listener) }

// ECHConfigList is the ECH config list the edge publishes, for tests that
// connect as a client that fetched it.
func (e *Service) ECHConfigList() []byte { return e.echKeys.Load().ConfigList() }

// Status is for the status page.
func (e *Service) Status() []acme.CertStatus { return e.certs().Status() }

func (e *Service) Shutdown() { e.drain(0, drainStop) }

// drain refuses reloads from now on, stops the certificates (a process
// that replaces this one renews them) and drains the instance for up to
// timeout.
func (e *Service) drain(timeout time.Duration, kind drainKind) {
	e.reloadMu.Lock()
	e.stopping = true
	e.reloadMu.Unlock()
	e.certs().Stop()
	e.instance.drain(timeout, kind)
	e.closeStore()
}
