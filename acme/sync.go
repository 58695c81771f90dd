package acme

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"time"

	"go.uber.org/zap"
)

// The storage check: every RenewCheck, and at once after certmagic stored
// a certificate (cert_obtained), the Manager reads each name's certificate
// from the storage and, when it differs from the one served, serves it,
// hands it to certmagic's cache (dropping the one it replaces) and exports
// it. certmagic alone would not do this in time: it reads the storage for
// a certificate another node renewed only when its own copy is due itself
// (maintain.go, RenewManagedCertificates), so a renewal that came early
// elsewhere (a new key, a revocation, a Recheck) would reach this node
// weeks later, and a certificate another node obtained not before this
// node's next attempt; and its reload after a renewal (reloadManagedCertificate)
// tells nobody, so the export would miss it. With the check, every node on
// one storage serves what any of them obtained or renewed within
// RenewCheck (plus the time to take a lock the other holds).

// syncLoop runs the storage check until Stop.
func (m *Manager) syncLoop(ctx context.Context) {
	t := time.NewTicker(m.renewCheck())
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		case <-m.syncWake:
		}
		m.syncAll(ctx)
	}
}

// pokeSync asks for a storage check now.
func (m *Manager) pokeSync() {
	select {
	case m.syncWake <- struct{}{}:
	default:
	}
}

// syncAll checks every name, reads which NewKey requests are done (another
// node may have made a new key) and exports the mail domain's certificate
// when it changed.
func (m *Manager) syncAll(ctx context.Context) {
	for _, name := range m.names {
		if ctx.Err() != nil {
			return
		}
		m.syncName(ctx, name)
		if done, err := m.store.newKeyDone(ctx, name); err == nil {
			m.mu.Lock()
			m.newKeyDone[name] = done
			m.mu.Unlock()
		}
	}
	m.mu.Lock()
	domain := m.states[m.cfg.Domain].cert
	changed := domain != m.exported
	m.exported = domain
	m.mu.Unlock()
	if changed && m.export != nil {
		m.export.set(domain)
	}
}

// syncName serves name's certificate in the storage if it is not the one
// served.
func (m *Manager) syncName(ctx context.Context, name string) {
	sc, err := m.store.loadCert(ctx, name, m.issuerKeys())
	if errors.Is(err, fs.ErrNotExist) || ctx.Err() != nil {
		return
	}
	if err != nil {
		m.log.Warn("cannot read the stored certificate; serving the one at hand", zap.String("name", name), zap.Error(err))
		return
	}
	m.mu.Lock()
	st := m.states[name]
	if st.own && bytes.Equal(st.cert.Certificate[0], sc.cert.Certificate[0]) {
		st.renewAt = m.renewalTime(sc) // the renewal information may be new
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	if m.cache != nil {
		m.cacheOnly(ctx, name)
	}
	m.mu.Lock()
	first := !st.own
	m.setOwn(st, sc)
	if first {
		st.failures, st.lastErr, st.lastErrAt = 0, nil, time.Time{}
	}
	m.publish()
	m.mu.Unlock()
	m.log.Info("serving the certificate from the storage", zap.String("name", name),
		zap.String("issuer", sc.cert.Leaf.Issuer.CommonName), zap.Time("not_after", sc.cert.Leaf.NotAfter))
}

// cacheOnly puts name's stored certificate into certmagic's cache, which
// from then on renews it, and drops the one it replaces (the cache is
// indexed by certificate, and certmagic renews a certificate for its first
// name: certificates.go, maintain.go).
func (m *Manager) cacheOnly(ctx context.Context, name string) {
	fresh, err := m.configFor(name).CacheManagedCertificate(ctx, name)
	if err != nil {
		m.log.Warn("certmagic cannot load the stored certificate", zap.String("name", name), zap.Error(err))
		return
	}
	var old []string
	for _, c := range m.cache.AllMatchingCertificates(name) {
		if len(c.Names) > 0 && c.Names[0] == name && c.Hash() != fresh.Hash() {
			old = append(old, c.Hash())
		}
	}
	m.cache.Remove(old)
}
