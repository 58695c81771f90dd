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

	// StorageDir is certmagic's FileStorage folder, used unless Storage
	// names another certmagic.Storage. Nodes that share one storage share
	// certificates, accounts and certmagic's locks: one of them orders or
	// renews a name, every one serves the result.
	StorageDir string
	Storage    certmagic.Storage

	Challenges  []string // ChallengeHTTP01, ChallengeTLSALPN01; empty is both
	AcmetoolDir string   // acmetool's state folder to take over from; "" for none

	// NewKey asks for new private keys: each name's next renewal after
	// NewKey takes a new value makes a new key, once per value (the value
	// done is kept in the storage). "" (or false, no, off, 0) keeps every
	// key: renewals reuse a certificate's key, also across restarts and
	// the takeover from acmetool, because Delta Chat pins the key of a
	// certificate it verified and then accepts even an expired certificate
	// with that key (core src/net/tls/spki.rs).
	NewKey string

	// ExportCert and ExportKey receive the mail domain's certificate chain
	// and key whenever it changes; "" for no export. Reload runs after
	// each export, one command line (argv) after the other.
	ExportCert, ExportKey string
	Reload                [][]string

	Retry       Backoff // after a failed order for a name without a certificate; zero is 1 minute doubling up to 1 hour
	ExportRetry Backoff // after a failed export or reload command
	// RenewCheck is how often certmagic looks for certificates to renew
	// and the storage is read for certificates other nodes obtained or
	// renewed; zero is certmagic's 10 minutes. Tests shorten it.
	RenewCheck time.Duration
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
// certmagic does the certificate work as it is meant to be driven: one
// certmagic.Config with the CAs as Issuers in order, its storage and its
// locks, ManageSync for a first start that must have a certificate,
// ManageAsync for the certificates in storage, and its own maintenance
// for renewals (ARI, RFC 9773, else a third of the lifetime left) and
// their retries. Events (OnEvent) feed the status and the export. The
// Manager schedules only what certmagic cannot do (schedule.go, sync.go).
type Manager struct {
	cfg   Config
	log   *zap.Logger
	cmLog *zap.Logger
	store store
	cas   []caConfig
	names []string // Domain first

	served atomic.Pointer[servedCerts]
	engine atomic.Pointer[engine] // from Start
	cache  *certmagic.Cache       // from Start
	listen Listeners

	mu     sync.Mutex
	states map[string]*nameState
	// lent is the mail domain's certificate at load when it covers other
	// names (acmetool's covers mta-sts.<d> and www.<d>): it is served for
	// them until they have their own.
	lent       *tls.Certificate
	newKeyDone map[string]string // the NewKey value last honoured, by name
	exported   *tls.Certificate  // last handed to the exporter

	export       *exporter
	importedCert string // acmetool's certificate file, when taken over at load

	wake     chan struct{} // the scheduler looks at every name again
	syncWake chan struct{} // the storage is read again
	stop     chan struct{}
	stopped  atomic.Bool // after Stop: certmagic's leftovers neither log nor count
	stopOnce sync.Once
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// nameState is what the Manager knows about one name.
type nameState struct {
	name string
	// cert is served for the name: its own, or lent by the mail domain's
	// certificate that covers it.
	cert *tls.Certificate
	own  bool
	// renewAt is when certmagic renews the own certificate: the time
	// picked in the CA's renewal window (RFC 9773 §4.2) or when a third of
	// its life is left, whichever comes first (certificates.go,
	// certNeedsRenewal).
	renewAt time.Time

	// For a name without its own certificate, the Manager's own schedule
	// (schedule.go): consecutive failures and the next attempt.
	failures int
	due      time.Time
	// For an own certificate, certmagic's failed renewals in a row, and
	// whether Recheck asked for an attempt now.
	renewFailures int
	renewNow      bool

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
	if cfg.ExportCert != "" || cfg.ExportKey != "" {
		if cfg.ExportCert == "" || cfg.ExportKey == "" {
			return nil, errors.New("acme: export needs both a certificate and a key file")
		}
	}
	st, err := newStore(cfg)
	if err != nil {
		return nil, fmt.Errorf("acme: %w", err)
	}
	m := &Manager{
		cfg: cfg, store: st, cas: cas, names: names,
		states:     make(map[string]*nameState, len(names)),
		newKeyDone: make(map[string]string, len(names)),
		wake:       make(chan struct{}, 1),
		syncWake:   make(chan struct{}, 1),
		stop:       make(chan struct{}),
	}
	// certmagic's jobs may outlive Stop by a moment: nothing they log
	// after it gets through.
	m.log = log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return &stoppedGate{c, &m.stopped} }))
	m.cmLog = m.log.Named("certmagic")
	if log.Core().Enabled(zapcore.InfoLevel) {
		// certmagic narrates every lock and step at info level.
		m.cmLog = m.cmLog.WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))
	}
	if cfg.ExportCert != "" {
		m.export = newExporter(cfg.ExportCert, cfg.ExportKey, cfg.Reload, cfg.ExportRetry, m.log.Named("export"))
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
		st := &nameState{name: name}
		m.states[name] = st
		sc, err := m.store.loadCert(ctx, name, m.issuerKeys())
		switch {
		case err == nil:
			m.setOwn(st, sc)
		case !errors.Is(err, fs.ErrNotExist):
			st.lastErr, st.lastErrAt = err, now // obtained again right away
		}
		if done, err := m.store.newKeyDone(ctx, name); err == nil {
			m.newKeyDone[name] = done
		}
	}
	domain := m.states[m.cfg.Domain]
	if domain.cert == nil {
		sc, err := m.importAcmetoolCert(ctx)
		if err != nil {
			m.log.Error("cannot take over acmetool's certificate", zap.Error(err))
			domain.lastErr, domain.lastErrAt = err, now
		} else if sc != nil {
			m.setOwn(domain, sc)
		}
	}
	if domain.own {
		for _, st := range m.states {
			if st.cert == nil && domain.cert.Leaf.VerifyHostname(st.name) == nil {
				st.cert, m.lent = domain.cert, domain.cert
			}
		}
	}
	m.publish()
}

// setOwn records a stored certificate as name's own. The caller holds
// m.mu (or no other goroutine runs yet).
func (m *Manager) setOwn(st *nameState, sc *storedCert) {
	st.cert, st.own = sc.cert, true
	st.renewAt = m.renewalTime(sc)
}

func (m *Manager) issuerKeys() []string {
	keys := make([]string, len(m.cas))
	for i, ca := range m.cas {
		keys[i] = issuerKey(ca.url)
	}
	return keys
}

// Mode is "acme".
func (m *Manager) Mode() string { return ModeACME }

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
		GetConfigForCert:   m.configForCert,
		RenewCheckInterval: m.cfg.RenewCheck,
		Logger:             m.cmLog,
	})
	eng := m.newEngine()
	m.engine.Store(eng)
	runCtx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel

	m.mu.Lock()
	var stored []string
	for _, name := range m.names {
		st := m.states[name]
		if st.own {
			stored = append(stored, name)
		}
		if eng.rootsErr != nil {
			st.lastErr, st.lastErrAt = eng.rootsErr, time.Now()
		}
	}
	haveDomain := m.states[m.cfg.Domain].own
	m.mu.Unlock()
	if !haveDomain {
		if err := m.firstCertificate(ctx, runCtx, eng); err != nil {
			cancel()
			m.Stop()
			return err
		}
	}
	// certmagic loads the stored certificates, renews those due now, and
	// keeps renewing them.
	for _, name := range stored {
		if err := m.configFor(name).ManageAsync(runCtx, []string{name}); err != nil {
			m.log.Error("cannot manage the stored certificate", zap.String("name", name), zap.Error(err))
		}
	}
	if m.export != nil {
		m.wg.Go(func() { m.export.run(runCtx) })
	}
	m.syncAll(runCtx) // the export of what is there
	m.wg.Go(func() { m.run(runCtx) })
	m.wg.Go(func() { m.syncLoop(runCtx) })
	return nil
}

// firstCertificate obtains the mail domain's certificate at a first start:
// certmagic's ManageSync, one attempt at each CA in turn.
func (m *Manager) firstCertificate(ctx, runCtx context.Context, eng *engine) error {
	m.log.Info("no certificate for the mail domain yet; obtaining one", zap.String("name", m.cfg.Domain), zap.String("ca", m.cas[0].url))
	startCtx, stop := context.WithCancel(runCtx)
	defer stop()
	defer context.AfterFunc(ctx, stop)()
	err := eng.rootsErr
	if err == nil {
		err = m.configFor(m.cfg.Domain).ManageSync(m.ourAttempt(startCtx, 0), []string{m.cfg.Domain})
	}
	if err == nil {
		m.syncName(startCtx, m.cfg.Domain)
		if !m.state(m.cfg.Domain).own {
			err = errors.New("certmagic holds no certificate after obtaining one")
		}
	}
	if err != nil {
		return fmt.Errorf("no certificate for %s, and none could be obtained from %s: %w", m.cfg.Domain, m.caList(), err)
	}
	return nil
}

func (m *Manager) caList() string {
	urls := make([]string, len(m.cas))
	for i, ca := range m.cas {
		urls[i] = ca.url
	}
	return strings.Join(urls, " or ")
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
		m.stopped.Store(true)
		m.store.close()
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

// publish makes the current certificates visible to handshakes. The caller
// holds m.mu (or no other goroutine runs yet).
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
		// the storage, where another node on it may have put it.
		if eng := m.engine.Load(); eng != nil {
			return eng.cfg.GetCertificate(hello)
		}
		return nil, fmt.Errorf("acme-tls/1 handshake for %s, but no challenge is running", hello.ServerName)
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
// other request to next. certmagic finds the challenge in memory or in the
// storage, under any of the CAs.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if certmagic.LooksLikeHTTPChallenge(r) {
			if eng := m.engine.Load(); eng != nil && eng.primary().HandleHTTPChallenge(w, r) {
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Status reports every name: its certificate, the last failure and when
// the next obtain or renewal is due. Export and reload failures show on
// the mail domain's entry.
func (m *Manager) Status() []CertStatus {
	now := time.Now()
	m.mu.Lock()
	out := make([]CertStatus, 0, len(m.names))
	for _, name := range m.names {
		st := m.states[name]
		cs := CertStatus{Names: []string{name}, Source: ModeACME, NextAttempt: m.nextAttempt(st, now)}
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

// stoppedGate drops log entries once the Manager stopped.
type stoppedGate struct {
	zapcore.Core
	stopped *atomic.Bool
}

func (g *stoppedGate) With(f []zapcore.Field) zapcore.Core {
	return &stoppedGate{g.Core.With(f), g.stopped}
}

func (g *stoppedGate) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if g.stopped.Load() {
		return ce
	}
	return g.Core.Check(e, ce)
}
