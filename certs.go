package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"chatmail-edge/acme"

	"go.uber.org/zap"
)

// certSettings are the certificate settings beyond [tls] cert and key.
type certSettings struct {
	// [tls]
	SelfCert      string
	SelfKey       string
	CheckInterval time.Duration

	// [acme]
	CA               string
	CARoot           string
	Email            string
	FallbackCA       string
	FallbackEABKeyID string
	FallbackEABHMAC  string
	Storage          string
	Challenges       []string
	AcmetoolDir      string
	ExportCert       string
	ExportKey        string
	Reload           [][]string
	NewKey           string

	// Retry and RenewCheck are not configuration keys: the defaults (1
	// minute doubling to 1 hour; certmagic's 10 minutes) suit a relay;
	// tests shorten them.
	Retry      acme.Backoff
	RenewCheck time.Duration
}

const mailDomainPlaceholder = "<mail_domain>"

// certOptions follow the core options in `config describe`.
var certOptions = []option{
	{"tls", "self_cert", acme.SelfSignedCertFile, "chatmail's self mode (mail_domain starting with _ or an IP address): this self-signed certificate, made as cmdeploy makes it (EC P-256, 36500 days) when it and self_key are both missing.",
		str(func(s *settings) *string { return &s.Certs.SelfCert })},
	{"tls", "self_key", acme.SelfSignedKeyFile, "Key of self_cert.",
		str(func(s *settings) *string { return &s.Certs.SelfKey })},
	{"tls", "check_interval", "30s", "How often cert and key are read again; a changed pair is served without a restart (a pair that does not load yet is retried).",
		durationIn(10*time.Millisecond, 24*time.Hour, func(s *settings) *time.Duration { return &s.Certs.CheckInterval })},
	{"acme", "ca", acme.LetsEncrypt, "ACME directory URL (RFC 8555 §7.1.1). Every attempt, retries included, goes to it. `serve --acme-ca` overrides it.",
		str(func(s *settings) *string { return &s.Certs.CA })},
	{"acme", "ca_root", "", "PEM file with the root certificate(s) the CA's HTTPS server chains to, for a private CA; empty means the system's roots. `serve --acme-ca-root` overrides it.",
		str(func(s *settings) *string { return &s.Certs.CARoot })},
	{"acme", "email", "", "Contact address given to the CA when an account is made. An account taken over from acmetool keeps the one it has.",
		str(func(s *settings) *string { return &s.Certs.Email })},
	{"acme", "fallback_ca", acme.ZeroSSL, "Second CA, asked only when ca fails (outage, rate limit). The relay's CAA record must allow it too (ZeroSSL: 0 issue \"sectigo.com\"). ZeroSSL needs external account binding: set fallback_eab_key_id and fallback_eab_hmac_key, or email (credentials are then fetched for it). Empty: no fallback.",
		str(func(s *settings) *string { return &s.Certs.FallbackCA })},
	{"acme", "fallback_eab_key_id", "", "External account binding key id for fallback_ca (RFC 8555 §7.3.4).",
		str(func(s *settings) *string { return &s.Certs.FallbackEABKeyID })},
	{"acme", "fallback_eab_hmac_key", "", "External account binding HMAC key (base64url) for fallback_ca.",
		str(func(s *settings) *string { return &s.Certs.FallbackEABHMAC })},
	{"acme", "storage", "", "Folder for ACME accounts and certificates (certmagic's layout, keys 0600). Empty means acme/ in state_dir.",
		str(func(s *settings) *string { return &s.Certs.Storage })},
	{"acme", "challenges", "http-01 tls-alpn-01", "Challenge types to answer: http-01 on the http listener, tls-alpn-01 on the https one (RFC 8737).",
		func(s *settings, v string) error {
			s.Certs.Challenges = strings.Fields(v)
			for _, c := range s.Certs.Challenges {
				if c != acme.ChallengeHTTP01 && c != acme.ChallengeTLSALPN01 {
					return fmt.Errorf("want http-01 and/or tls-alpn-01, got %q", c)
				}
			}
			if len(s.Certs.Challenges) == 0 {
				return errors.New("want http-01 and/or tls-alpn-01")
			}
			return nil
		}},
	{"acme", "acmetool", "/var/lib/acme", "acmetool's state folder. Its account key (which the relay's CAA accounturi names) and its current certificate are taken over at the first start, so nothing is issued again. Empty: none.",
		str(func(s *settings) *string { return &s.Certs.AcmetoolDir })},
	{"acme", "export_cert", "/var/lib/acme/live/" + mailDomainPlaceholder + "/fullchain", "Where the mail domain's certificate chain goes for Postfix and Dovecot, replaced atomically whenever it changes (0644). Empty: no export.",
		str(func(s *settings) *string { return &s.Certs.ExportCert })},
	{"acme", "export_key", "/var/lib/acme/live/" + mailDomainPlaceholder + "/privkey", "Where its key goes (0600).",
		str(func(s *settings) *string { return &s.Certs.ExportKey })},
	{"acme", "reload", "systemctl reload dovecot.service; systemctl reload postfix.service", "Commands run after each export, separated by ; (no shell). A failing one is logged and retried with backoff. Empty: none, for when a systemd path unit reloads the daemons.",
		func(s *settings, v string) error {
			s.Certs.Reload = nil
			for cmd := range strings.SplitSeq(v, ";") {
				if argv := strings.Fields(cmd); len(argv) > 0 {
					s.Certs.Reload = append(s.Certs.Reload, argv)
				}
			}
			return nil
		}},
	{"acme", "new_key", "", "Renewals keep each certificate's private key, also across restarts and the takeover from acmetool: Delta Chat pins the key of a certificate it verified and then accepts even an expired certificate with that key (core src/net/tls/spki.rs), a safety net a new key takes from every client that pinned the old one. A new value (true, or a label such as a date) makes each name's next renewal use a new key, once per value: the value done is kept with the certificates, so leaving it set makes no more new keys. Empty or false: keep the keys. Applied at a restart.",
		str(func(s *settings) *string { return &s.Certs.NewKey })},
}

// certMode is chatmail's TLS mode (chatmaild config.py, acme.SourceConfig.Mode).
func (s *settings) certMode() string { return s.certSource().Mode() }

// certSource is the certificate source's part of the settings.
func (s *settings) certSource() acme.SourceConfig {
	return acme.SourceConfig{
		Domain:       s.MailDomain,
		ExternalCert: s.TLSCert, ExternalKey: s.TLSKey, CheckInterval: s.Certs.CheckInterval,
		SelfCert: s.Certs.SelfCert, SelfKey: s.Certs.SelfKey,
		ACME: s.acmeConfig(),
	}
}

// certs is the edge's certificate source in one of chatmail's modes.
type certs struct {
	acme.Source
	mode string
	// reload.go asks the ACME manager to recheck and replaces the other
	// sources; tests wait for the watched files.
	manager *acme.Manager // acme mode
	watched *acme.Watched // external mode
}

func newCerts(s *settings, log *zap.Logger) (*certs, error) {
	src, err := acme.NewSource(s.certSource(), log)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errConfig, err)
	}
	c := &certs{Source: src, mode: src.Mode()}
	c.manager, _ = src.(*acme.Manager)
	c.watched, _ = src.(*acme.Watched)
	return c, nil
}

// acmeConfig is the ACME manager's part of the settings.
func (s *settings) acmeConfig() acme.Config {
	names := []string{s.MailDomain, "mta-sts." + s.MailDomain, "www." + s.MailDomain}
	if s.ECHPublicName != "" {
		names = append(names, s.ECHPublicName)
	}
	storage := s.Certs.Storage
	if storage == "" {
		storage = filepath.Join(s.StateDir, "acme")
	}
	cfg := acme.Config{
		Domain: s.MailDomain, Names: names,
		CA: s.Certs.CA, CARootFile: s.Certs.CARoot, Email: s.Certs.Email,
		FallbackCA: s.Certs.FallbackCA, StorageDir: storage, Challenges: s.Certs.Challenges,
		AcmetoolDir: s.Certs.AcmetoolDir,
		ExportCert:  strings.ReplaceAll(s.Certs.ExportCert, mailDomainPlaceholder, s.MailDomain),
		ExportKey:   strings.ReplaceAll(s.Certs.ExportKey, mailDomainPlaceholder, s.MailDomain),
		Reload:      s.Certs.Reload,
		NewKey:      s.Certs.NewKey,
		Retry:       s.Certs.Retry, ExportRetry: s.Certs.Retry, RenewCheck: s.Certs.RenewCheck,
	}
	if s.Certs.FallbackEABKeyID != "" || s.Certs.FallbackEABHMAC != "" {
		cfg.FallbackEAB = &acme.EAB{KeyID: s.Certs.FallbackEABKeyID, MACKey: s.Certs.FallbackEABHMAC}
	}
	return cfg
}

// wrapHTTP answers ACME HTTP-01 challenges on the plain HTTP listener.
func (c *certs) wrapHTTP(h http.Handler) http.Handler { return c.HTTPHandler(h) }

// start runs once the listeners accept (acme.Source.Start).
func (c *certs) start(ctx context.Context, in *instance) error {
	ln := acme.Listeners{HTTPS: in.edge.Addr("https")}
	if in.httpLn != nil {
		ln.HTTP = in.httpLn.Addr()
	}
	return c.Start(ctx, ln)
}

func (c *certs) stop() { c.Stop() }

// servingEdge is what serve runs: the instance and its certificates.
type servingEdge struct {
	*instance
	log      *zap.Logger
	certsNow atomic.Pointer[certs] // a reload may replace them (see reload.go)
	// startSettings are the settings the edge started with; a reload
	// compares what only a restart can change with them.
	startSettings *settings

	reloadMu sync.Mutex // one reload at a time, none once shutdown began
	stopping bool       // guarded by reloadMu
	// drainFor is [edge] drain_timeout as last loaded (reload applies it);
	// guarded by reloadMu.
	drainFor time.Duration
}

// drainTimeout is [edge] drain_timeout in force.
func (e *servingEdge) drainTimeout() time.Duration {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	return e.drainFor
}

// startServe starts serve's edge. listen, if set, opens its listeners (see
// handoff.go). onListening runs between the listeners and the certificates
// (tests start their ACME server there, on the ports the edge got).
func startServe(ctx context.Context, s *settings, log *zap.Logger, listen func(name, addr string) (*net.TCPListener, error), onListening func(*instance) error) (*servingEdge, error) {
	if note, err := s.fitOpenFileLimit(openFileLimit()); err != nil {
		return nil, err
	} else if note != "" {
		log.Warn(note)
	}
	c, err := newCerts(s, log)
	if err != nil {
		return nil, err
	}
	cfg, err := s.instanceConfig()
	if err != nil {
		return nil, err
	}
	cfg.Listen = listen
	e := &servingEdge{log: log, startSettings: s, drainFor: s.DrainTimeout}
	e.certsNow.Store(c)
	// Handshakes and the status page ask the certificates in use. The ACME
	// manager (and with it the HTTP-01 handler) is never replaced: a change
	// of the certificate source needs a restart.
	cfg.GetCert = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) { return e.certs().GetCertificate(hello) }
	cfg.WrapHTTP, cfg.Certs = c.wrapHTTP, e
	in, err := startInstance(cfg, log)
	if err != nil {
		return nil, err
	}
	e.instance = in
	if onListening != nil {
		if err := onListening(in); err != nil {
			in.shutdown()
			return nil, err
		}
	}
	if err := c.start(ctx, in); err != nil {
		in.shutdown()
		return nil, fmt.Errorf("certificates: %w", err)
	}
	return e, nil
}

// certs are the certificates in use.
func (e *servingEdge) certs() *certs { return e.certsNow.Load() }

// Status is for the status page.
func (e *servingEdge) Status() []acme.CertStatus { return e.certs().Status() }

func (e *servingEdge) shutdown() { e.drain(0, drainStop) }

// drain refuses reloads from now on, stops the certificates (a process
// that replaces this one renews them) and drains the instance for up to
// timeout.
func (e *servingEdge) drain(timeout time.Duration, kind drainKind) {
	e.reloadMu.Lock()
	e.stopping = true
	e.reloadMu.Unlock()
	e.certs().stop()
	e.instance.drain(timeout, kind)
}
