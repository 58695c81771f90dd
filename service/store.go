package service

import (
	"context"
	"fmt"
	"path/filepath"
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
	return store.Open(ctx, StoreConfig(st), log.Named("store"))
}

// storeCopyDir, in state_dir, holds serve's copy of what it read from and
// wrote to the shared store (store.Cached).
const storeCopyDir = "store-copy"

// openServeStore connects serve to the shared store the settings name, with
// a copy in state_dir; nil without a store. A store that does not answer
// at the start is an error naming its endpoints, unless the copy holds
// what an earlier run had: then the node starts from it, as it would go
// on serving had it kept running, and catches up once the store answers.
func openServeStore(ctx context.Context, s *config.Settings, log *zap.Logger) (*store.Cached, error) {
	if !s.Store.Shared() {
		return nil, nil
	}
	remote, err := store.Dial(StoreConfig(s.Store), log.Named("store"))
	if err != nil {
		return nil, err
	}
	shared, err := store.NewCached(remote, filepath.Join(s.StateDir, storeCopyDir))
	if err != nil {
		remote.Close()
		return nil, err
	}
	if err := remote.Check(ctx); err != nil {
		if !shared.HasCopy() {
			remote.Close()
			return nil, fmt.Errorf("%w; and %s holds no copy to start from", err, filepath.Join(s.StateDir, storeCopyDir))
		}
		log.Warn("the shared store does not answer; starting from this node's copy of it", zap.String("copy", filepath.Join(s.StateDir, storeCopyDir)), zap.Error(err))
		return shared, nil
	}
	log.Info("using the shared store", zap.String("store", remote.String()))
	return shared, nil
}

// echPlace is where this edge's ECH keys are: in the shared store when
// there is one, else in state_dir.
func (cfg instanceConfig) echPlace() ech.Place {
	if cfg.Shared != nil {
		return ech.InStorage(cfg.Shared)
	}
	return ech.InFolder(ech.Dir(cfg.StateDir))
}

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
