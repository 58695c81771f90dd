package acme

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Well-known ACME directories.
const (
	LetsEncrypt = certmagic.LetsEncryptProductionCA
	// ZeroSSL is the default fallback: a second, independent CA that is
	// asked only when Let's Encrypt fails. It needs external account
	// binding (RFC 8555 §7.3.4), which the edge gets by e-mail address.
	ZeroSSL = certmagic.ZeroSSLProductionCA
)

// Challenge types (RFC 8555 §8.3, RFC 8737 §3).
const (
	ChallengeHTTP01    = "http-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
)

// Config configures a Manager: certificates from an ACME CA for the
// relay's names, one certificate per name.
type Config struct {
	// Domain is the mail domain. Its certificate is the default one (for
	// clients without SNI and unknown names) and the one exported to
	// Postfix and Dovecot.
	Domain string
	// Names are all names to hold certificates for (mta-sts.<d>, www.<d>,
	// the ECH public_name); Domain is always among them.
	Names []string

	CA         string // ACME directory URL; "" is Let's Encrypt
	CARootFile string // PEM roots the CA's HTTPS certificate chains to; "" is the system's
	Email      string // contact address for the CA; may be empty
	// FallbackCA is asked when CA fails; "" for none. FallbackEAB binds its
	// account to an external one; without it, a CA that requires binding
	// at ZeroSSL gets credentials for Email from EABEndpoint.
	FallbackCA  string
	FallbackEAB *EAB
	EABEndpoint string // "" is ZeroSSL's

	StorageDir  string   // certmagic's storage, and the edge's copy of the accounts
	Challenges  []string // ChallengeHTTP01, ChallengeTLSALPN01; empty is both
	AcmetoolDir string   // acmetool's state folder to take over from; "" for none

	// ExportCert and ExportKey receive the mail domain's certificate chain
	// and key whenever it changes; "" for no export. Reload runs after
	// each export, one command line (argv) after the other.
	ExportCert, ExportKey string
	Reload                [][]string

	Retry       Backoff // after a failed order; zero is 1 minute doubling up to 1 hour
	ExportRetry Backoff // after a failed export or reload command
}

// EAB is an external account binding (RFC 8555 §7.3.4).
type EAB struct {
	KeyID  string
	MACKey string // base64url
}

// Listeners are where the edge answers challenges: HTTP-01 on the plain
// HTTP listener (nil: none), TLS-ALPN-01 on the HTTPS one.
type Listeners struct {
	HTTP, HTTPS net.Addr
}

// Manager obtains and renews the certificates, serves them (GetCertificate),
// answers challenges (GetCertificate for acme-tls/1, HTTPHandler for
// HTTP-01) and exports the mail domain's certificate.
//
// certmagic is the ACME engine and storage; the Manager decides when to
// obtain and renew (ARI, RFC 9773), with its own backoff, so that the
// status page can say when the next attempt is and tests can run fast.
type Manager struct {
	cfg   Config
	log   *zap.Logger
	cmLog *zap.Logger
	store store
	cas   []caConfig
	names []string // Domain first

	served  atomic.Pointer[servedCerts]
	engines []atomic.Pointer[caEngine] // by CA, once its account is ready
	cache   *certmagic.Cache
	listen  Listeners

	mu     sync.Mutex
	states map[string]*nameState

	export       *exporter
	importedCert string // acmetool's certificate file, when taken over at load

	wake     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// nameState is what the Manager knows about one name.
type nameState struct {
	name string
	// cert is served for the name: its own, or one borrowed from the mail
	// domain that covers it (acmetool's certificate has all three names).
	cert      *tls.Certificate
	own       bool
	issuerKey string // where the own certificate is stored
	ari       *renewalInfo
	ariNext   time.Time
	ariBusy   bool      // a refresh is running
	due       time.Time // next obtain or renewal
	failures  int
	lastErr   error
	lastErrAt time.Time
}

type servedCerts struct {
	byName   map[string]*tls.Certificate
	fallback *tls.Certificate // the mail domain's
}

// NewManager checks cfg and loads the certificates already stored (taking
// over acmetool's). It contacts no CA; Start does.
func NewManager(cfg Config, log *zap.Logger) (*Manager, error) {
	domain, err := normalName(cfg.Domain)
	if err != nil {
		return nil, fmt.Errorf("acme: mail domain: %w", err)
	}
	cfg.Domain = domain
	names := []string{domain}
	for _, n := range cfg.Names {
		n, err := normalName(n)
		if err != nil {
			return nil, fmt.Errorf("acme: %w", err)
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if cfg.StorageDir == "" {
		return nil, errors.New("acme: no storage folder")
	}
	for _, c := range cfg.Challenges {
		if c != ChallengeHTTP01 && c != ChallengeTLSALPN01 {
			return nil, fmt.Errorf("acme: unknown challenge type %q (want %s or %s)", c, ChallengeHTTP01, ChallengeTLSALPN01)
		}
	}
	if cfg.CA == "" {
		cfg.CA = LetsEncrypt
	}
	cas := []caConfig{{url: cfg.CA}}
	if cfg.FallbackCA != "" && cfg.FallbackCA != cfg.CA {
		fb := caConfig{url: cfg.FallbackCA, eab: cfg.FallbackEAB, eabEndpoint: cfg.EABEndpoint}
		if fb.eabEndpoint == "" && cfg.FallbackCA == ZeroSSL {
			fb.eabEndpoint = zeroSSLEABEndpoint
		}
		cas = append(cas, fb)
	}
	for _, ca := range cas {
		if _, err := normalURL(ca.url); err != nil {
			return nil, fmt.Errorf("acme: CA directory: %w", err)
		}
	}
	st, err := newStore(cfg.StorageDir)
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	cmLog := log.Named("certmagic")
	if log.Core().Enabled(zapcore.InfoLevel) {
		// certmagic narrates every lock and step at info level.
		cmLog = cmLog.WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))
	}
	m := &Manager{
		cfg: cfg, log: log, cmLog: cmLog, store: st, cas: cas, names: names,
		states:  make(map[string]*nameState, len(names)),
		engines: make([]atomic.Pointer[caEngine], len(cas)),
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
	if cfg.ExportCert != "" || cfg.ExportKey != "" {
		if cfg.ExportCert == "" || cfg.ExportKey == "" {
			return nil, errors.New("acme: export needs both a certificate and a key file")
		}
		m.export = newExporter(cfg.ExportCert, cfg.ExportKey, cfg.Reload, cfg.ExportRetry, log.Named("export"))
	}
	m.load(context.Background())
	return m, nil
}

// load reads the stored certificates, takes over acmetool's certificate
// when there is none for the mail domain, and lends the mail domain's
// certificate to names it covers.
func (m *Manager) load(ctx context.Context) {
	now := time.Now()
	for _, name := range m.names {
		st := &nameState{name: name, ariNext: now}
		m.states[name] = st
		sc, err := m.store.loadCert(ctx, name, m.issuerKeys())
		switch {
		case err == nil:
			st.cert, st.own, st.issuerKey = sc.cert, true, sc.issuerKey
		case !errors.Is(err, fs.ErrNotExist):
			m.fail(st, err, now)
			st.failures = 0 // try to obtain a new one right away
		}
	}
	domain := m.states[m.cfg.Domain]
	if domain.cert == nil {
		sc, err := m.importAcmetoolCert(ctx)
		if err != nil {
			m.log.Error("cannot take over acmetool's certificate", zap.Error(err))
			m.fail(domain, err, now)
			domain.failures = 0
		} else if sc != nil {
			domain.cert, domain.own, domain.issuerKey = sc.cert, true, sc.issuerKey
		}
	}
	for _, st := range m.states {
		if st.cert == nil && domain.cert != nil && domain.cert.Leaf.VerifyHostname(st.name) == nil {
			st.cert = domain.cert
		}
	}
	m.publish()
}

func (m *Manager) issuerKeys() []string {
	keys := make([]string, len(m.cas))
	for i, ca := range m.cas {
		keys[i] = issuerKey(ca.url)
	}
	return keys
}

// Start begins managing, once the listeners accept (the CA validates
// through them). At a first start, with no certificate for the mail domain
// at all, it obtains one before returning and fails if it cannot; later
// failures only delay, retry and show up in Status.
func (m *Manager) Start(ctx context.Context, ln Listeners) error {
	if ln.HTTPS == nil {
		return errors.New("acme: no HTTPS listener")
	}
	if !m.challenge(ChallengeTLSALPN01) && (ln.HTTP == nil || !m.challenge(ChallengeHTTP01)) {
		return errors.New("acme: no challenge type can be answered: tls-alpn-01 is off and there is no plain HTTP listener for http-01")
	}
	m.listen = ln
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		// No certificate is ever cached as managed: the Manager serves and
		// renews them itself.
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) {
			if engs := m.readyEngines(); len(engs) > 0 {
				return engs[0].cfg, nil
			}
			return nil, errors.New("no ACME configuration yet")
		},
		Logger: m.cmLog,
	})
	runCtx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	domain := m.states[m.cfg.Domain] // no worker runs yet
	if domain.cert == nil {
		m.log.Info("no certificate for the mail domain yet; obtaining one", zap.String("name", m.cfg.Domain), zap.String("ca", m.cas[0].url))
		startCtx, stop := context.WithCancel(runCtx)
		unhook := context.AfterFunc(ctx, stop)
		m.act(startCtx, domain)
		unhook()
		stop()
		if st := m.state(m.cfg.Domain); st.cert == nil {
			err := st.lastErr
			if err == nil {
				err = startCtx.Err()
			}
			cancel()
			m.cache.Stop()
			m.cache = nil
			return fmt.Errorf("no certificate for %s, and none could be obtained: %w", m.cfg.Domain, err)
		}
	}
	if m.export != nil {
		m.wg.Go(func() { m.export.run(runCtx) })
		m.export.set(m.state(m.cfg.Domain).cert)
	}
	m.wg.Go(func() { m.run(runCtx) })
	return nil
}

// Stop ends management and waits for running work to give up.
func (m *Manager) Stop() {
	m.stopOnce.Do(func() {
		close(m.stop)
		if m.cancel != nil {
			m.cancel()
		}
		m.wg.Wait()
		if m.cache != nil {
			m.cache.Stop()
		}
	})
}

func (m *Manager) challenge(kind string) bool {
	return len(m.cfg.Challenges) == 0 || slices.Contains(m.cfg.Challenges, kind)
}

func (m *Manager) state(name string) nameState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return *m.states[name]
}

// publish makes the current certificates visible to handshakes.
func (m *Manager) publish() {
	s := &servedCerts{byName: make(map[string]*tls.Certificate, len(m.states))}
	for name, st := range m.states {
		if st.cert != nil {
			s.byName[name] = st.cert
		}
	}
	s.fallback = s.byName[m.cfg.Domain]
	m.served.Store(s)
}

// GetCertificate is a tls.Config.GetCertificate. TLS-ALPN-01 validations
// (RFC 8737 §3: the only ALPN offered is acme-tls/1) get certmagic's
// challenge certificate; clients without SNI and names without a
// certificate get the mail domain's.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if hello.ServerName != "" && len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmeTLSProtocol {
		// certmagic finds the challenge in its process-wide memory, or in
		// the storage under its CA: ask each.
		for _, eng := range m.readyEngines() {
			if c, err := eng.cfg.GetCertificate(hello); err == nil {
				return c, nil
			}
		}
		return nil, fmt.Errorf("acme-tls/1 handshake for %s, but no such challenge is running", hello.ServerName)
	}
	s := m.served.Load()
	if c := s.byName[strings.TrimSuffix(strings.ToLower(hello.ServerName), ".")]; c != nil {
		return c, nil
	}
	if s.fallback == nil {
		return nil, fmt.Errorf("no certificate for %s yet", m.cfg.Domain)
	}
	return s.fallback, nil
}

const acmeTLSProtocol = "acme-tls/1"

// HTTPHandler answers HTTP-01 challenges (RFC 8555 §8.3) and passes every
// other request to next.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if certmagic.LooksLikeHTTPChallenge(r) {
			for _, eng := range m.readyEngines() {
				if eng.iss.HandleHTTPChallenge(w, r) {
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (m *Manager) readyEngines() []*caEngine {
	var engs []*caEngine
	for i := range m.engines {
		if eng := m.engines[i].Load(); eng != nil {
			engs = append(engs, eng)
		}
	}
	return engs
}

// Status reports every name: its certificate, the last failure and when
// the next obtain or renewal is due. Export and reload failures show on
// the mail domain's entry.
func (m *Manager) Status() []CertStatus {
	m.mu.Lock()
	out := make([]CertStatus, 0, len(m.names))
	for _, name := range m.names {
		st := m.states[name]
		cs := CertStatus{Names: []string{name}, Source: "acme", NextAttempt: st.due}
		if st.cert != nil {
			cs.Issuer, cs.NotAfter = st.cert.Leaf.Issuer.CommonName, st.cert.Leaf.NotAfter
		}
		if st.lastErr != nil {
			cs.LastError, cs.LastErrorAt = st.lastErr.Error(), st.lastErrAt
		}
		out = append(out, cs)
	}
	m.mu.Unlock()
	if m.export != nil {
		if msg, at, next := m.export.status(); msg != "" && at.After(out[0].LastErrorAt) {
			out[0].LastError, out[0].LastErrorAt = msg, at
			if out[0].NextAttempt.IsZero() || next.Before(out[0].NextAttempt) {
				out[0].NextAttempt = next
			}
		}
	}
	return out
}

// fail records a failed attempt and schedules the next one.
func (m *Manager) fail(st *nameState, err error, now time.Time) {
	st.failures++
	st.lastErr, st.lastErrAt = err, now
	st.due = now.Add(m.cfg.Retry.Delay(st.failures))
}

// normalName lower-cases a DNS name and refuses what no CA can certify.
func normalName(n string) (string, error) {
	n = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
	if n == "" {
		return "", errors.New("empty name")
	}
	if net.ParseIP(n) != nil || !strings.Contains(n, ".") || strings.HasPrefix(n, "_") || !certmagic.SubjectQualifiesForCert(n) {
		return "", fmt.Errorf("%q is not a DNS name an ACME CA can certify", n)
	}
	return n, nil
}

func hostPort(a net.Addr) (string, int) {
	host, port, _ := net.SplitHostPort(a.String())
	p, _ := strconv.Atoi(port)
	return host, p
}
