package service

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
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
			return nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
		}
		c.watched, c.source, c.getCert = w, w, w.GetCertificate
	case "self":
		st, created, err := acme.SelfSigned(s.MailDomain, s.Certs.SelfCert, s.Certs.SelfKey, time.Now())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
		}
		if created {
			log.Info("created the self-signed certificate", zap.String("cert", s.Certs.SelfCert), zap.String("key", s.Certs.SelfKey))
		}
		c.source, c.getCert = st, st.GetCertificate
	default:
		m, err := acme.NewManager(s.ACME(), log.Named("acme"))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
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
