package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"chatmail-edge/internal/filelimit"

	"github.com/caddyserver/certmagic"
	acmeapi "github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// caEngine is certmagic set up for one CA whose account is ready. Each CA
// has its own certmagic.Config, so that an attempt asks them in order and
// a CA without an account is never asked (certmagic would make one).
type caEngine struct {
	iss *certmagic.ACMEIssuer
	cfg *certmagic.Config
	sig string // the roots and account key it was built with
}

// renewalInfo is the CA's suggested renewal window (RFC 9773 §4.2) with
// the time picked in it.
type renewalInfo = acmeapi.RenewalInfo

const (
	ariDefaultPoll = 6 * time.Hour // when the CA sends no Retry-After (RFC 9773 §4.3)
	ariRetry       = time.Hour     // after a failed ARI request
	ariTimeout     = 20 * time.Second
)

// run is the Manager's only worker: it sleeps until the next name is due,
// obtains or renews it, and starts over.
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
		if st.own && !st.ariBusy && !time.Now().Before(st.ariNext) {
			// Beside the worker: a CA that does not answer keeps acmez
			// retrying for seconds, and other names must not wait.
			st.ariBusy = true
			m.wg.Go(func() { m.refreshARI(ctx, st) })
		}
		st.due = m.dueTime(st, time.Now())
		due := !st.due.After(time.Now())
		m.mu.Unlock()
		if due {
			m.act(ctx, st)
		}
		m.mu.Lock()
		next = minTime(next, st.due)
		if st.own && !st.ariBusy {
			next = minTime(next, st.ariNext)
		}
		m.mu.Unlock()
	}
	return next
}

// dueTime is when name needs a certificate: now if it has none; after a
// failure, the retry time; for its own certificate, the time picked in the
// CA's renewal window (RFC 9773 §4.2), else when a third of its life is
// left; a borrowed certificate is replaced by an own one at that point too.
// Whatever ARI says, a certificate with a twentieth of its life left is
// renewed (as certmagic does).
func (m *Manager) dueTime(st *nameState, now time.Time) time.Time {
	if st.failures > 0 {
		return st.due
	}
	if st.cert == nil {
		return now
	}
	leaf := st.cert.Leaf
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	emergency := leaf.NotAfter.Add(-life / 20)
	if st.own && st.ari != nil && !st.ari.SelectedTime.IsZero() {
		return minTime(st.ari.SelectedTime, emergency)
	}
	return leaf.NotAfter.Add(-life / 3)
}

// act obtains or renews one name and records the outcome.
func (m *Manager) act(ctx context.Context, st *nameState) {
	m.mu.Lock()
	name, failures, hadOwn := st.name, st.failures, st.own
	m.mu.Unlock()
	verb := "obtaining"
	if hadOwn {
		verb = "renewing"
	}
	m.log.Info(verb+" certificate", zap.String("name", name), zap.Int("attempt", failures+1))
	err := m.attempt(ctx, name, failures)
	var sc *storedCert
	if err == nil {
		sc, err = m.store.loadCert(ctx, name, m.issuerKeys())
		if err != nil {
			err = fmt.Errorf("load the new certificate: %w", err)
		}
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		if ctx.Err() != nil {
			return // stopping
		}
		m.fail(st, err, now)
		m.log.Error(verb+" certificate failed; will retry", zap.String("name", name),
			zap.Int("attempt", st.failures), zap.Time("next_attempt", st.due), zap.Error(err))
		return
	}
	st.cert, st.own, st.issuerKey = sc.cert, true, sc.issuerKey
	st.failures, st.lastErr, st.lastErrAt = 0, nil, time.Time{}
	st.ari, st.ariNext = nil, now
	st.due = m.dueTime(st, now)
	m.publish()
	m.log.Info("certificate "+strings.TrimSuffix(verb, "ing")+"ed", zap.String("name", name),
		zap.String("issuer", sc.cert.Leaf.Issuer.CommonName), zap.Time("not_after", sc.cert.Leaf.NotAfter))
	if name == m.cfg.Domain && m.export != nil {
		m.export.set(sc.cert)
	}
}

// attempt asks each CA in turn for a certificate for name (a new order;
// certmagic renews with the "replaces" field of RFC 9773 §5 when the CA
// issued the current one). The fallback CA is only asked, and its account
// only made, when the first one fails.
func (m *Manager) attempt(ctx context.Context, name string, failures int) error {
	roots, rootsSig, err := m.roots()
	if err != nil {
		return err
	}
	client := caHTTPClient(roots)
	// certmagic reads the attempt number: after two failures it stops
	// sending "replaces", in case that is what the CA objects to.
	attempts := failures
	ctx = context.WithValue(ctx, certmagic.AttemptsCtxKey, &attempts)
	var errs []error
	for i, ca := range m.cas {
		eng, err := m.caEngine(ctx, i, roots, rootsSig, client)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: ACME account: %w", ca.url, err))
			continue
		}
		if err := eng.cfg.RenewCertSync(ctx, name, true); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ca.url, err))
			continue
		}
		return nil
	}
	return errors.Join(errs...)
}

// caEngine makes sure of the account at CA i and returns certmagic set up
// for it.
func (m *Manager) caEngine(ctx context.Context, i int, roots *x509.CertPool, rootsSig string, client *http.Client) (*caEngine, error) {
	ca := m.cas[i]
	acct, err := m.ensureAccount(ctx, ca, client)
	if err != nil {
		return nil, err
	}
	sig := rootsSig + "\x00" + string(acct.keyPEM)
	if eng := m.engines[i].Load(); eng != nil && eng.sig == sig {
		return eng, nil
	}
	host, httpsPort := hostPort(m.listen.HTTPS)
	httpPort := 0
	if m.listen.HTTP != nil {
		_, httpPort = hostPort(m.listen.HTTP)
	}
	cfg := certmagic.New(m.cache, certmagic.Config{
		Storage:   m.store.fs,
		KeySource: certmagic.StandardKeyGenerator{KeyType: certmagic.P256},
		Logger:    m.cmLog,
	})
	iss := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
		// TestCA too: certmagic sends retries to TestCA, which would
		// otherwise be Let's Encrypt's staging CA, whose accounts no CAA
		// record allows.
		CA: ca.url, TestCA: ca.url,
		Email:         m.cfg.Email,
		AccountKeyPEM: string(acct.keyPEM),
		Agreed:        true,
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
	cfg.Issuers = []certmagic.Issuer{iss}
	eng := &caEngine{iss: iss, cfg: cfg, sig: sig}
	m.engines[i].Store(eng)
	return eng, nil
}

// roots reads the CA root file, at every attempt, so that fixing it needs
// no restart. nil roots mean the system's.
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
		return nil, "", fmt.Errorf("CA root file %s: no PEM certificate in it", m.cfg.CARootFile)
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

// refreshARI asks the CA that issued st's certificate for its renewal
// window (RFC 9773 §4.1), then wakes the worker. A CA without ARI or an
// error leaves the lifetime rule in charge.
func (m *Manager) refreshARI(ctx context.Context, st *nameState) {
	m.mu.Lock()
	ik, cert := st.issuerKey, st.cert
	m.mu.Unlock()
	defer m.poke()
	var ca string
	for _, c := range m.cas {
		if issuerKey(c.url) == ik {
			ca = c.url
		}
	}
	next := time.Now().Add(ariRetry)
	var info *renewalInfo
	if roots, _, err := m.roots(); ca != "" && err == nil {
		actx, cancel := context.WithTimeout(ctx, ariTimeout)
		client := &acmeapi.Client{Directory: ca, HTTPClient: caHTTPClient(roots)}
		ri, err := client.GetRenewalInfo(actx, cert.Leaf)
		cancel()
		switch {
		case err == nil:
			info = &ri
			next = time.Now().Add(ariDefaultPoll)
			if ri.RetryAfter != nil {
				next = minTime(maxTime(*ri.RetryAfter, time.Now().Add(time.Minute)), time.Now().Add(24*time.Hour))
			}
		case errors.Is(err, acmeapi.ErrUnsupported):
			next = time.Now().Add(24 * time.Hour)
		case ctx.Err() != nil:
		default:
			m.log.Warn("renewal information (ARI) unavailable; renewing by lifetime", zap.String("name", st.name), zap.Error(err))
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st.ariBusy = false
	if st.cert != cert {
		return // renewed meanwhile
	}
	if info != nil {
		// Keep the time already picked while the window stays (RFC 9773
		// §4.2 asks for one uniform pick per window).
		if st.ari != nil && st.ari.SameWindow(*info) {
			info.SelectedTime = st.ari.SelectedTime
		}
		st.ari = info
	}
	st.ariNext = next
}

// Recheck looks at every name now, as on SIGHUP: a name waiting for a
// retry after a failure is tried again at once (the backoff still counts
// its failures), and the renewal window of each own certificate is asked
// for again (RFC 9773 §4.2). Before Start it takes effect when Start runs.
func (m *Manager) Recheck() {
	now := time.Now()
	m.mu.Lock()
	for _, st := range m.states {
		if st.failures > 0 {
			st.due = now
		}
		if st.own && !st.ariBusy {
			st.ariNext = now
		}
	}
	m.mu.Unlock()
	m.poke()
}

// poke makes the worker look at every name again.
func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
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
