package acme

import (
	"chatmail-edge/internal/filelimit"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	acmeapi "github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// engine is certmagic set up for the Manager: one certmagic.Config with the
// CAs as Issuers in order, and a twin that makes new keys for the names a
// NewKey request is pending for. Both share the Manager's cache and storage.
type engine struct {
	cfg       *certmagic.Config // ReusePrivateKeys: renewals keep the key
	newKeyCfg *certmagic.Config // the same, making a new key
	rootsSig  string            // the CA root file it was built with
	// rootsErr is a CA root file that cannot be used: certificates in
	// storage are still served, but no CA is asked until it is fixed.
	rootsErr error
}

func (e *engine) primary() *certmagic.ACMEIssuer { return e.cfg.Issuers[0].(*certmagic.ACMEIssuer) }

// newEngine builds certmagic's configs from the settings and the CA root
// file as it is now.
func (m *Manager) newEngine() *engine {
	roots, sig, err := m.roots()
	e := &engine{rootsSig: sig, rootsErr: err}
	e.cfg = m.certmagicConfig(true, roots)
	e.newKeyCfg = m.certmagicConfig(false, roots)
	return e
}

// configFor is the config that manages name: the one that makes a new key
// while a NewKey request is pending for it, else the one that keeps it.
// certmagic asks it for every certificate it renews (GetConfigForCert).
func (m *Manager) configFor(name string) *certmagic.Config {
	e := m.engine.Load()
	if m.newKeyPending(name) {
		return e.newKeyCfg
	}
	return e.cfg
}

// configForCert is certmagic's GetConfigForCert: it renews a certificate
// for its first name.
func (m *Manager) configForCert(c certmagic.Certificate) (*certmagic.Config, error) {
	if m.engine.Load() == nil {
		return nil, errors.New("the ACME manager is not started")
	}
	if len(c.Names) == 0 {
		return m.engine.Load().cfg, nil
	}
	return m.configFor(c.Names[0]), nil
}

// newKeyRequest is NewKey, or "" when it asks for nothing.
func (m *Manager) newKeyRequest() string {
	switch strings.ToLower(strings.TrimSpace(m.cfg.NewKey)) {
	case "", "false", "no", "off", "0":
		return ""
	}
	return strings.TrimSpace(m.cfg.NewKey)
}

func (m *Manager) newKeyPending(name string) bool {
	req := m.newKeyRequest()
	if req == "" {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.newKeyDone[name] != req
}

func (m *Manager) certmagicConfig(reuseKeys bool, roots *x509.CertPool) *certmagic.Config {
	cfg := certmagic.New(m.cache, certmagic.Config{
		Storage:          m.store.s,
		KeySource:        certmagic.StandardKeyGenerator{KeyType: certmagic.P256},
		ReusePrivateKeys: reuseKeys,
		OnEvent: func(ctx context.Context, event string, data map[string]any) error {
			return m.onEvent(ctx, !reuseKeys, event, data)
		},
		ShouldEmitFunc: func(event string) bool {
			return event == "cert_obtaining" || event == "cert_obtained" || event == "cert_failed"
		},
		Logger: m.cmLog,
	})
	host, httpsPort := hostPort(m.listen.HTTPS)
	httpPort := 0
	if m.listen.HTTP != nil {
		_, httpPort = hostPort(m.listen.HTTP)
	}
	client := caHTTPClient(roots)
	issuers := make([]certmagic.Issuer, 0, len(m.cas)) // tried in order
	for _, ca := range m.cas {
		iss := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
			CA:     ca.url,
			Email:  m.certmagicEmail(),
			Agreed: true,
			// The first time certmagic needs an account at the CA it asks
			// the edge, which takes over acmetool's key, binds it (EAB,
			// fetched by e-mail address when none is configured: certmagic
			// has no way to) and registers it, and never lets the key be
			// replaced. So ExternalAccount stays unset here.
			NewAccountFunc: func(ctx context.Context, _ *certmagic.ACMEIssuer, _ acmeapi.Account) (acmeapi.Account, error) {
				a, err := m.ensureAccount(ctx, ca, client)
				if err != nil {
					return acmeapi.Account{}, fmt.Errorf("%s: ACME account: %w", ca.url, err)
				}
				// certmagic registers what it gets once more: without the
				// account URL, newAccount with the key (RFC 8555 §7.3.1)
				// answers with the existing account.
				acct := a.acct
				acct.Location, acct.Status = "", ""
				return acct, nil
			},
			// The edge itself listens on these; certmagic only checks that
			// something does, and never starts a server of its own.
			DisableHTTPChallenge:    httpPort == 0 || !m.challenge(ChallengeHTTP01),
			DisableTLSALPNChallenge: !m.challenge(ChallengeTLSALPN01),
			ListenHost:              host,
			AltHTTPPort:             httpPort,
			AltTLSALPNPort:          httpsPort,
			TrustedRoots:            roots,
			Logger:                  m.cmLog,
		})
		// No test CA: NewACMEIssuer makes Let's Encrypt's staging CA the
		// one for retries, whose accounts no CAA record allows, and one
		// equal to CA would keep certmagic from ever announcing the
		// certificate a renewal replaces (RFC 9773 §5; acmeissuer.go,
		// doIssue, usingTestCA).
		iss.TestCA = ""
		issuers = append(issuers, iss)
	}
	cfg.Issuers = issuers
	return cfg
}

// onEvent is certmagic's OnEvent (config.go: invoked synchronously, inside
// the storage lock of the operation). freshKey tells the config that
// makes new keys.
func (m *Manager) onEvent(ctx context.Context, freshKey bool, event string, data map[string]any) error {
	if m.stopped.Load() {
		return nil
	}
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	ours := ctx.Value(ourAttemptKey{}) != nil
	switch event {
	case "cert_obtaining":
		// A CA root file that cannot be read stops every order before it
		// starts (cert_obtaining is the event certmagic lets abort).
		if err := m.engine.Load().rootsErr; err != nil {
			if !ours {
				m.recordFailure(name, renewal, err)
			}
			return err
		}
	case "cert_obtained":
		if freshKey {
			if req := m.newKeyRequest(); req != "" {
				// Inside the lock: another node sees it before it could
				// renew again.
				if err := m.store.saveNewKeyDone(ctx, name, req); err != nil {
					m.log.Error("cannot record the new key", zap.String("name", name), zap.Error(err))
				}
				m.mu.Lock()
				m.newKeyDone[name] = req
				m.mu.Unlock()
				m.log.Info("made a new key, as new_key asked", zap.String("name", name), zap.String("new_key", req))
			}
		}
		if !ours {
			m.recordSuccess(name, renewal, data["issuer"])
		}
		m.pokeSync()
	case "cert_failed":
		if !ours {
			err, _ := data["error"].(error)
			if err == nil {
				err = fmt.Errorf("%v", data["error"])
			}
			m.recordFailure(name, renewal, err)
		}
	}
	return nil
}

// recordSuccess and recordFailure keep the status of what certmagic did by
// itself: renewals, and the renewal at start (ManageAsync).
func (m *Manager) recordSuccess(name string, renewal bool, issuer any) {
	m.mu.Lock()
	if st := m.states[name]; st != nil {
		st.renewFailures, st.lastErr, st.lastErrAt = 0, nil, time.Time{}
	}
	m.mu.Unlock()
	verb := "obtained"
	if renewal {
		verb = "renewed"
	}
	m.log.Info("certificate "+verb, zap.String("name", name), zap.Any("issuer", issuer))
}

func (m *Manager) recordFailure(name string, renewal bool, err error) {
	now := time.Now()
	m.mu.Lock()
	st := m.states[name]
	if st == nil {
		m.mu.Unlock()
		return
	}
	st.lastErr, st.lastErrAt = err, now
	if st.own {
		st.renewFailures++
	}
	next := m.nextAttempt(st, now)
	m.mu.Unlock()
	verb := "obtaining"
	if renewal {
		verb = "renewing"
	}
	m.log.Error(verb+" certificate failed; will retry", zap.String("name", name), zap.Time("next_attempt", next), zap.Error(err))
}

// renewalTime is when certmagic renews sc (certificates.go,
// certNeedsRenewal): at the time picked in the CA's renewal window (RFC
// 9773 §4.2) less one check interval, or when RenewalWindowRatio (a
// third) of its life is left, whichever comes first; with five check
// intervals left in any case.
func (m *Manager) renewalTime(sc *storedCert) time.Time {
	leaf := sc.cert.Leaf
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	at := leaf.NotAfter.Add(-life / 3)
	if ri := sc.data.RenewalInfo; ri != nil && !ri.SelectedTime.IsZero() {
		at = minTime(at, ri.SelectedTime.Add(-m.renewCheck()))
	}
	return minTime(at, leaf.NotAfter.Add(-5*m.renewCheck()))
}

func (m *Manager) renewCheck() time.Duration {
	if m.cfg.RenewCheck > 0 {
		return m.cfg.RenewCheck
	}
	return certmagic.DefaultRenewCheckInterval
}

// certmagicRetryIntervals are certmagic's waits after failed renewals
// (async.go, retryIntervals, unexported): the status page says when its
// next attempt is due.
var certmagicRetryIntervals = []time.Duration{
	time.Minute, 2 * time.Minute, 2 * time.Minute, 5 * time.Minute,
	10 * time.Minute, 10 * time.Minute, 10 * time.Minute,
	20 * time.Minute, 20 * time.Minute, 20 * time.Minute, 20 * time.Minute,
	30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute,
	time.Hour, time.Hour, time.Hour,
	2 * time.Hour, 2 * time.Hour, 3 * time.Hour, 3 * time.Hour, 6 * time.Hour,
}

// nextAttempt is when name is next tried: for a name without its own
// certificate the Manager's schedule; for an own certificate certmagic's
// renewal time or, after failed renewals, its retry (at a maintenance
// check no earlier than its backoff allows). The caller holds m.mu.
func (m *Manager) nextAttempt(st *nameState, now time.Time) time.Time {
	if !st.own {
		return m.dueTime(st, now)
	}
	if st.renewFailures == 0 || st.lastErrAt.IsZero() {
		return st.renewAt
	}
	wait := certmagicRetryIntervals[min(st.renewFailures, len(certmagicRetryIntervals))-1]
	return maxTime(st.lastErrAt.Add(wait), st.renewAt)
}

// ourAttemptKey marks the context of an attempt the Manager makes itself:
// it records the outcome, the event handler does not.
type ourAttemptKey struct{}

// ourAttempt is ctx for an attempt after failures earlier ones; certmagic
// reads the count and, at the third attempt, leaves out the "replaces"
// field (RFC 9773 §5) in case that is what the CA objects to.
func (m *Manager) ourAttempt(ctx context.Context, failures int) context.Context {
	attempts := failures
	ctx = context.WithValue(ctx, certmagic.AttemptsCtxKey, &attempts)
	return context.WithValue(ctx, ourAttemptKey{}, true)
}

// roots reads the CA root file. nil roots mean the system's.
func (m *Manager) roots() (*x509.CertPool, string, error) {
	if m.cfg.CARootFile == "" {
		return nil, "", nil
	}
	pemBytes, err := filelimit.ReadFile(m.cfg.CARootFile, filelimit.PEM)
	if err != nil {
		return nil, "", fmt.Errorf("CA root file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, string(pemBytes), fmt.Errorf("CA root file %s: no PEM certificate in it", m.cfg.CARootFile)
	}
	return pool, string(pemBytes), nil
}

func caHTTPClient(roots *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			TLSClientConfig:     &tls.Config{RootCAs: roots},
			TLSHandshakeTimeout: 15 * time.Second,
		},
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
