package acme

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// The Manager's own schedule covers one case: a name without a certificate
// of its own (none yet, or one lent by acmetool's certificate of the mail
// domain). certmagic would obtain it with ObtainCertAsync, whose retries
// follow a fixed table (1 minute, 2, 2, 5, ... up to 6 hours, async.go,
// unexported) that nothing outside can read or cut short. The edge needs
// both: the status page says when the next attempt is, a reload (Recheck)
// tries again at once, and Retry sets the pace (tests make it fast). Each
// attempt is still certmagic's: ObtainCertSync, one attempt at each CA in
// turn under the storage lock (a no-op when another node on the storage
// obtained it meanwhile), then CacheManagedCertificate, after which
// certmagic renews the certificate itself. (ManageSync would do both, but
// takes a name covered by a lent certificate as managed already.)
//
// A lent certificate is replaced by an own one when a third of its life is
// left: certmagic keeps one name per certificate, so it renews acmetool's
// for the mail domain alone.

// run is the scheduler: it sleeps until the next name is due, tries it,
// and starts over.
func (m *Manager) run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-m.wake:
		case <-timer.C:
		}
		next := m.tick(ctx)
		timer.Reset(max(time.Until(next), 0))
	}
}

// tick handles every name that is due and returns when to look again.
func (m *Manager) tick(ctx context.Context) time.Time {
	next := time.Now().Add(24 * time.Hour)
	for _, name := range m.names {
		if ctx.Err() != nil {
			return next
		}
		m.mu.Lock()
		st := m.states[name]
		obtain := !st.own && !m.dueTime(st, time.Now()).After(time.Now())
		renew := st.own && st.renewNow
		st.renewNow = false
		m.mu.Unlock()
		switch {
		case obtain:
			m.obtain(ctx, name)
		case renew:
			m.renew(ctx, name)
		}
		m.mu.Lock()
		if !st.own {
			next = minTime(next, m.dueTime(st, time.Now()))
		}
		m.mu.Unlock()
	}
	return next
}

// dueTime is when a name without its own certificate is tried: after a
// failure at the retry time, else now, or, for a lent certificate, when a
// third of its life is left. The caller holds m.mu.
func (m *Manager) dueTime(st *nameState, now time.Time) time.Time {
	switch {
	case st.failures > 0:
		return st.due
	case st.cert == nil:
		return now
	}
	leaf := st.cert.Leaf
	return leaf.NotAfter.Add(-leaf.NotAfter.Sub(leaf.NotBefore) / 3)
}

// obtain makes one attempt at name's own certificate.
func (m *Manager) obtain(ctx context.Context, name string) {
	m.mu.Lock()
	failures := m.states[name].failures
	m.mu.Unlock()
	err := m.attempt(ctx, name, "obtaining", failures, func(actx context.Context, cfg *certmagic.Config) error {
		if err := cfg.ObtainCertSync(actx, name); err != nil {
			return err
		}
		_, err := cfg.CacheManagedCertificate(actx, name)
		return err
	})
	if ctx.Err() != nil {
		return // stopping
	}
	if err != nil {
		m.failed(name, err)
		return
	}
	m.mu.Lock()
	st := m.states[name]
	st.failures, st.lastErr, st.lastErrAt = 0, nil, time.Time{}
	leaf := st.cert.Leaf
	m.mu.Unlock()
	m.log.Info("certificate in place", zap.String("name", name),
		zap.String("issuer", leaf.Issuer.CommonName), zap.Time("not_after", leaf.NotAfter))
}

// renew makes one renewal attempt now (Recheck after failed renewals);
// certmagic keeps its own retries too, and a renewal one of them already
// did makes this a no-op.
func (m *Manager) renew(ctx context.Context, name string) {
	m.mu.Lock()
	failures := m.states[name].renewFailures
	m.mu.Unlock()
	err := m.attempt(ctx, name, "renewing", failures, func(actx context.Context, cfg *certmagic.Config) error {
		return cfg.RenewCertSync(actx, name, false)
	})
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		m.recordFailure(name, true, err)
		return
	}
	m.recordSuccess(name, true, m.state(name).cert.Leaf.Issuer.CommonName)
}

// attempt runs one certmagic operation for name with the config that
// manages it, then serves what it stored.
func (m *Manager) attempt(ctx context.Context, name, verb string, failures int, op func(context.Context, *certmagic.Config) error) error {
	m.log.Info(verb+" certificate", zap.String("name", name), zap.Int("attempt", failures+1))
	if err := m.engine.Load().rootsErr; err != nil {
		return err
	}
	if err := op(m.ourAttempt(ctx, failures), m.configFor(name)); err != nil {
		return m.withCAs(err)
	}
	m.syncName(ctx, name)
	if !m.state(name).own {
		return errors.New("certmagic holds no certificate after obtaining one")
	}
	return nil
}

// withCAs says which CAs were asked: certmagic returns the last one's error
// and only logs the others.
func (m *Manager) withCAs(err error) error {
	if len(m.cas) < 2 || strings.Contains(err.Error(), m.cas[0].url) {
		return err
	}
	return fmt.Errorf("%w (asked %s)", err, m.caList())
}

// failed records a failed attempt and schedules the next one.
func (m *Manager) failed(name string, err error) {
	now := time.Now()
	m.mu.Lock()
	st := m.states[name]
	st.failures++
	st.lastErr, st.lastErrAt = err, now
	st.due = now.Add(m.cfg.Retry.Delay(st.failures))
	failures, due := st.failures, st.due
	m.mu.Unlock()
	m.log.Error("obtaining certificate failed; will retry", zap.String("name", name),
		zap.Int("attempt", failures), zap.Time("next_attempt", due), zap.Error(err))
}

// Recheck looks at every name now, as on SIGHUP: a name waiting for a
// retry after a failure is tried again at once (the backoff still counts
// its failures), and so is a certificate whose renewal failed; the CA root
// file is read again. Before Start it takes effect when Start runs.
func (m *Manager) Recheck() {
	now := time.Now()
	m.mu.Lock()
	for _, st := range m.states {
		if st.failures > 0 {
			st.due = now
		}
		if st.own && st.renewFailures > 0 {
			st.renewNow = true
		}
	}
	m.mu.Unlock()
	if old := m.engine.Load(); old != nil {
		if _, sig, err := m.roots(); sig != old.rootsSig || (err == nil) != (old.rootsErr == nil) {
			eng := m.newEngine()
			m.engine.Store(eng)
			m.log.Info("read the CA root file again", zap.String("file", m.cfg.CARootFile), zap.Error(eng.rootsErr))
			if old.rootsErr != nil && eng.rootsErr == nil {
				m.mu.Lock()
				for _, st := range m.states {
					if errors.Is(st.lastErr, old.rootsErr) {
						st.lastErr, st.lastErrAt = nil, time.Time{}
					}
				}
				m.mu.Unlock()
			}
		}
	}
	m.poke()
	m.pokeSync()
}

// poke makes the scheduler look at every name again.
func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}
