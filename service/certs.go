package service

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/config"

	"go.uber.org/zap"
)

// certs is the edge's certificate source in one of chatmail's modes.
type certs struct {
	mode    string
	source  interface{ Status() []acme.CertStatus }
	getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	manager *acme.Manager // acme mode
	watched *acme.Watched // external mode
}

func newCerts(s *config.Settings, log *zap.Logger) (*certs, error) {
	c := &certs{mode: s.CertMode()}
	switch c.mode {
	case "external":
		w, err := acme.WatchFiles(s.TLSCert, s.TLSKey, s.Certs.CheckInterval, log.Named("tls"))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", config.ErrConfig, err)
		}
		c.watched, c.source, c.getCert = w, w, w.GetCertificate
	case "self":
		st, created, err := acme.SelfSigned(s.MailDomain, s.Certs.SelfCert, s.Certs.SelfKey, time.Now())
		if err != nil {
			return nil, fmt.Errorf("%w: %v", config.ErrConfig, err)
		}
		if created {
			log.Info("created the self-signed certificate", zap.String("cert", s.Certs.SelfCert), zap.String("key", s.Certs.SelfKey))
		}
		c.source, c.getCert = st, st.GetCertificate
	default:
		m, err := acme.NewManager(s.ACME(), log.Named("acme"))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", config.ErrConfig, err)
		}
		c.manager, c.source, c.getCert = m, m, m.GetCertificate
	}
	return c, nil
}

// wrapHTTP answers ACME HTTP-01 challenges on the plain HTTP listener.
func (c *certs) wrapHTTP(h http.Handler) http.Handler {
	if c.manager == nil {
		return h
	}
	return c.manager.HTTPHandler(h)
}

// start runs once the listeners accept: the CA validates through them. In
// acme mode a first start without any certificate for the mail domain
// waits for one, and fails if none can be had.
func (c *certs) start(ctx context.Context, in *instance) error {
	switch {
	case c.watched != nil:
		c.watched.Start()
	case c.manager != nil:
		ln := acme.Listeners{HTTPS: in.edge.Addr("https")}
		if in.httpLn != nil {
			ln.HTTP = in.httpLn.Addr()
		}
		return c.manager.Start(ctx, ln)
	}
	return nil
}

func (c *certs) stop() {
	if c.watched != nil {
		c.watched.Stop()
	}
	if c.manager != nil {
		c.manager.Stop()
	}
}

// Status is for the status page.
func (c *certs) Status() []acme.CertStatus { return c.source.Status() }

// servingEdge is what serve runs: the instance and its certificates.
type servingEdge struct {
	*instance
	log      *zap.Logger
	certsNow atomic.Pointer[certs] // a reload may replace them (see reload.go)
	// startSettings are the settings the edge started with; a reload
	// compares what only a restart can change with them.
	startSettings *config.Settings

	reloadMu sync.Mutex // one reload at a time, none once shutdown began
	stopping bool       // guarded by reloadMu
	// drainFor is [edge] drain_timeout as last loaded (reload applies it);
	// guarded by reloadMu.
	drainFor time.Duration
}

// drainTimeout is [edge] drain_timeout in force.
func (e *servingEdge) drainTimeout() time.Duration {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	return e.drainFor
}

// startServe starts serve's edge. listen, if set, opens its listeners (see
// handoff.go). onListening runs between the listeners and the certificates
// (tests start their ACME server there, on the ports the edge got).
func startServe(ctx context.Context, s *config.Settings, log *zap.Logger, listen func(name, addr string) (*net.TCPListener, error), onListening func(*instance) error) (*servingEdge, error) {
	if note, err := s.FitOpenFileLimit(openFileLimit()); err != nil {
		return nil, err
	} else if note != "" {
		log.Warn(note)
	}
	c, err := newCerts(s, log)
	if err != nil {
		return nil, err
	}
	cfg, err := instanceConfigFrom(s)
	if err != nil {
		return nil, err
	}
	cfg.Listen = listen
	e := &servingEdge{log: log, startSettings: s, drainFor: s.DrainTimeout}
	e.certsNow.Store(c)
	// Handshakes and the status page ask the certificates in use. The ACME
	// manager (and with it the HTTP-01 handler) is never replaced: a change
	// of the certificate source needs a restart.
	cfg.GetCert = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) { return e.certs().getCert(hello) }
	cfg.WrapHTTP, cfg.Certs = c.wrapHTTP, e
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
func (e *servingEdge) certs() *certs { return e.certsNow.Load() }

// Status is for the status page.
func (e *servingEdge) Status() []acme.CertStatus { return e.certs().Status() }

func (e *servingEdge) shutdown() { e.drain(0, drainStop) }

// drain refuses reloads from now on, stops the certificates (a process
// that replaces this one renews them) and drains the instance for up to
// timeout.
func (e *servingEdge) drain(timeout time.Duration, kind drainKind) {
	e.reloadMu.Lock()
	e.stopping = true
	e.reloadMu.Unlock()
	e.certs().stop()
	e.instance.drain(timeout, kind)
}
