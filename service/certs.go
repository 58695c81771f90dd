package service

import (
	"context"
	"fmt"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/store"

	"go.uber.org/zap"
)

// certs is the edge's certificate source in one of chatmail's modes
// (acme.NewSource chooses it from the settings).
type certs struct {
	acme.Source
}

// newCerts makes the certificate source; with a shared store, acme mode
// keeps everything there.
func newCerts(s *config.Settings, shared *store.Cached, log *zap.Logger) (*certs, error) {
	cfg := s.CertSource()
	if shared != nil {
		cfg.ACME.Storage = shared
	}
	src, err := acme.NewSource(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
	}
	return &certs{Source: src}, nil
}

// start runs once the listeners accept: the CA validates through them
// (acme.Source.Start).
func (c *certs) start(ctx context.Context, in *instance) error {
	ln := acme.Listeners{HTTPS: in.edge.Addr("https")}
	if in.httpLn != nil {
		ln.HTTP = in.httpLn.Addr()
	}
	return c.Start(ctx, ln)
}
