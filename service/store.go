package service

import (
	"context"
	"fmt"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/ech"
	"chatmail-edge/store"
	"chatmail-edge/web"

	"go.uber.org/zap"
)

// The shared store of several nodes ([store], docs/NODES.md): the ACME
// manager's certmagic.Storage and the ECH key set's place. Without one,
// both stay in state_dir.

// storeProbeInterval is how often the store is asked whether it answers
// while nothing else asks it: the status page and metrics say within
// this (plus [store] timeout) when it stops answering.
const storeProbeInterval = 5 * time.Second

// echStoreWait bounds making the first ECH key at a start, which may wait
// for another node's lock on the key set.
const echStoreWait = 2 * time.Minute

// echLoadWait bounds one reading of the key set from the store (each
// request has [store] timeout).
const echLoadWait = time.Minute

// StoreConfig is the store's part of the settings.
func StoreConfig(st config.StoreSettings) store.Config {
	return store.Config{
		Endpoints: st.EtcdEndpoints, Prefix: st.Prefix,
		CAFile: st.TLSCA, CertFile: st.TLSCert, KeyFile: st.TLSKey,
		Username: st.Username, PasswordFile: st.PasswordFile,
		Timeout: st.Timeout, LockTTL: st.LockTTL, ProbeInterval: storeProbeInterval,
	}
}

// OpenStore connects to the shared store the settings name, for serve and
// the commands that read what it holds (ech, dns, acme account-url); nil
// without one. A store that does not answer is an error naming its
// endpoints: a node that starts has nothing to serve without it.
func OpenStore(ctx context.Context, st config.StoreSettings, log *zap.Logger) (*store.Store, error) {
	if !st.Shared() {
		return nil, nil
	}
	s, err := store.Open(ctx, StoreConfig(st), log.Named("store"))
	if err != nil {
		return nil, err
	}
	log.Info("using the shared store", zap.String("store", s.String()))
	return s, nil
}

// ECHPlace is where the ECH keys are: in the shared store when there is
// one, else in state_dir.
func ECHPlace(shared *store.Store, stateDir string) ech.Place {
	if shared != nil {
		return ech.InStorage(shared)
	}
	return ech.InFolder(ech.Dir(stateDir))
}

// echPlace is where this edge's ECH keys are.
func (cfg instanceConfig) echPlace() ech.Place { return ECHPlace(cfg.Shared, cfg.StateDir) }

// ensureECHKeys loads the ECH keys, making the first if there is none.
func (cfg instanceConfig) ensureECHKeys(names []string, log *zap.Logger) (*ech.KeySet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), echStoreWait)
	defer cancel()
	keys, created, err := ech.EnsureIn(ctx, cfg.echPlace(), cfg.PublicName, ech.MaxNameLength(names...), time.Now())
	if err != nil {
		return nil, fmt.Errorf("ECH keys: %w", err)
	}
	if created {
		log.Info("created the first ECH key", zap.Stringer("in", cfg.echPlace()), zap.String("public_name", cfg.PublicName))
	}
	return keys, nil
}

// echChanges tells of changes of the key set in the shared store until
// the instance stops; nil (never) without a store, where the folder is
// read every echKeyCheckInterval.
func (in *instance) echChanges() <-chan struct{} {
	if in.cfg.Shared == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	in.wg.Go(func() {
		<-in.stop
		cancel()
	})
	return in.cfg.Shared.Watch(ctx, ech.SharedKeysPrefix)
}

// storeHealth is the shared store's health for the status pages; nil
// without a store.
func (in *instance) storeHealth() func() web.StoreHealth {
	if in.cfg.Shared == nil {
		return nil
	}
	return func() web.StoreHealth {
		h := in.cfg.Shared.Health()
		return web.StoreHealth{Endpoints: h.Endpoints, Up: h.Up, Since: h.Since, LastSuccess: h.LastSuccess, LastError: h.LastError, LastErrorAt: h.LastErrorAt}
	}
}

// closeStore closes the shared store once nothing uses it any more.
func (in *instance) closeStore() {
	if in.cfg.Shared != nil {
		in.cfg.Shared.Close()
	}
}
