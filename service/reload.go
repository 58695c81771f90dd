package service

import (
	"context"
	"errors"
	"fmt"

	"chatmail-edge/acme"
	"chatmail-edge/config"

	"go.uber.org/zap"
)

// errStopping refuses a reload that comes while serve shuts down.
var errStopping = errors.New("shutting down")

// errNoConfiguration refuses a reload of the demo, which runs from flags.
var errNoConfiguration = errors.New("no configuration to reload: the demo runs from its flags")

// reload re-reads the configuration (load reads the edge's file and
// chatmail.ini, as at start) and the ECH keys, and applies them to the
// running edge. Everything is read and checked first; on an error nothing
// changes and the configuration in force stays whole. Then it applies the
// limits and timeouts, the mail backends, the web side, the ECH keys and
// the certificates (files read again; the ACME manager looks at every name
// now). Established connections stay: only new ones see the changes.
//
// What only a restart can change (listen addresses, the state folder, the
// mail domain, the certificate source, ...) is not applied at all, not even
// in part: restart lists what differs from the running edge's start, for a
// warning.
func (e *Service) Reload(load func() (*config.Settings, error)) (restart []string, err error) {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	if e.stopping {
		return nil, errStopping
	}
	if e.startSettings == nil {
		return nil, errNoConfiguration
	}

	// Read and check everything.
	s, err := load()
	if err != nil {
		return nil, err
	}
	cfg, err := instanceConfigFrom(s, e.relay)
	if err != nil {
		return nil, err
	}
	backends, err := cfg.Backends()
	if err != nil {
		return nil, fmt.Errorf("%w: mail backends: %v", config.ErrConfig, err)
	}
	ws, err := e.buildWeb(cfg.Web, backends)
	if err != nil {
		return nil, err
	}
	echKeys, err := e.loadECHKeys()
	if err != nil {
		return nil, err
	}
	restart = e.startSettings.Restart().Changed(s.Restart())
	var fresh *certs
	if old := e.certs(); old.Mode() != acme.ModeACME {
		// Files are read again (external, self); a changed source that a
		// reload cannot take (to or from ACME) keeps the files in use.
		from := s
		if s.CertMode() != old.Mode() {
			from = e.startSettings
		}
		if fresh, err = newCerts(from, nil, e.log); err != nil {
			return nil, err
		}
	}

	// Apply; nothing below fails.
	if err := e.edge.SetLimits(cfg.Edge.Limits); err != nil {
		e.log.Error("cannot change the edge's limits", zap.Error(err)) // parsing checked every bound
	}
	e.edge.SetBackends(backends)
	e.drainFor = s.DrainTimeout
	e.useWeb(ws)
	e.useECHKeys(echKeys)
	if fresh != nil {
		old := e.certs()
		_ = fresh.start(context.Background(), e.instance) // watches the files; fails in acme mode only
		e.certsNow.Store(fresh)
		old.Stop()
	} else {
		e.certs().Recheck()
	}
	if len(restart) > 0 {
		e.log.Warn("configuration reloaded, but these settings changed and take effect only at a restart", zap.Strings("settings", restart))
	} else {
		e.log.Info("configuration reloaded")
	}
	return restart, nil
}
