package config

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"chatmail-edge/acme"
)

// CertSettings are the certificate Settings beyond [tls] cert and key.
type CertSettings struct {
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

const MailDomainPlaceholder = "<mail_domain>"

// certOptions follow the core options in `config describe`.
var certOptions = []option{
	{"tls", "self_cert", acme.SelfSignedCertFile, "chatmail's self mode (mail_domain starting with _ or an IP address): this self-signed certificate, made as cmdeploy makes it (EC P-256, 36500 days) when it and self_key are both missing.",
		str(func(s *Settings) *string { return &s.Certs.SelfCert })},
	{"tls", "self_key", acme.SelfSignedKeyFile, "Key of self_cert.",
		str(func(s *Settings) *string { return &s.Certs.SelfKey })},
	{"tls", "check_interval", "30s", "How often cert and key are read again; a changed pair is served without a restart (a pair that does not load yet is retried).",
		durationIn(10*time.Millisecond, 24*time.Hour, func(s *Settings) *time.Duration { return &s.Certs.CheckInterval })},
	{"acme", "ca", acme.LetsEncrypt, "ACME directory URL (RFC 8555 §7.1.1). Every attempt, retries included, goes to it. `serve --acme-ca` overrides it.",
		str(func(s *Settings) *string { return &s.Certs.CA })},
	{"acme", "ca_root", "", "PEM file with the root certificate(s) the CA's HTTPS server chains to, for a private CA; empty means the system's roots. `serve --acme-ca-root` overrides it.",
		str(func(s *Settings) *string { return &s.Certs.CARoot })},
	{"acme", "email", "", "Contact address given to the CA when an account is made. An account taken over from acmetool keeps the one it has.",
		str(func(s *Settings) *string { return &s.Certs.Email })},
	{"acme", "fallback_ca", acme.ZeroSSL, "Second CA, asked only when ca fails (outage, rate limit). The relay's CAA record must allow it too (ZeroSSL: 0 issue \"sectigo.com\"). ZeroSSL needs external account binding: set fallback_eab_key_id and fallback_eab_hmac_key, or email (credentials are then fetched for it). Empty: no fallback.",
		str(func(s *Settings) *string { return &s.Certs.FallbackCA })},
	{"acme", "fallback_eab_key_id", "", "External account binding key id for fallback_ca (RFC 8555 §7.3.4).",
		str(func(s *Settings) *string { return &s.Certs.FallbackEABKeyID })},
	{"acme", "fallback_eab_hmac_key", "", "External account binding HMAC key (base64url) for fallback_ca.",
		str(func(s *Settings) *string { return &s.Certs.FallbackEABHMAC })},
	{"acme", "storage", "", "Folder for ACME accounts and certificates (certmagic's layout, keys 0600). Empty means acme/ in state_dir. With a shared store ([store]) they are there instead.",
		str(func(s *Settings) *string { return &s.Certs.Storage })},
	{"acme", "challenges", "http-01 tls-alpn-01", "Challenge types to answer: http-01 on the http listener, tls-alpn-01 on the https one (RFC 8737).",
		func(s *Settings, v string) error {
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
		str(func(s *Settings) *string { return &s.Certs.AcmetoolDir })},
	{"acme", "export_cert", "/var/lib/acme/live/" + MailDomainPlaceholder + "/fullchain", "Where the mail domain's certificate chain goes for Postfix and Dovecot, replaced atomically whenever it changes (0644). Empty: no export.",
		str(func(s *Settings) *string { return &s.Certs.ExportCert })},
	{"acme", "export_key", "/var/lib/acme/live/" + MailDomainPlaceholder + "/privkey", "Where its key goes (0600).",
		str(func(s *Settings) *string { return &s.Certs.ExportKey })},
	{"acme", "reload", "systemctl reload dovecot.service; systemctl reload postfix.service", "Commands run after each export, separated by ; (no shell). A failing one is logged and retried with backoff. Empty: none, for when a systemd path unit reloads the daemons.",
		func(s *Settings, v string) error {
			s.Certs.Reload = nil
			for cmd := range strings.SplitSeq(v, ";") {
				if argv := strings.Fields(cmd); len(argv) > 0 {
					s.Certs.Reload = append(s.Certs.Reload, argv)
				}
			}
			return nil
		}},
	{"acme", "new_key", "", "Renewals keep each certificate's private key, also across restarts and the takeover from acmetool: Delta Chat pins the key of a certificate it verified and then accepts even an expired certificate with that key (core src/net/tls/spki.rs), a safety net a new key takes from every client that pinned the old one. A new value (true, or a label such as a date) makes each name's next renewal use a new key, once per value: the value done is kept with the certificates, so leaving it set makes no more new keys. Empty or false: keep the keys. Applied at a restart.",
		str(func(s *Settings) *string { return &s.Certs.NewKey })},
}

// CertMode is chatmail's TLS mode (chatmaild config.py, acme.SourceConfig.Mode).
func (s *Settings) CertMode() string { return s.CertSource().Mode() }

// CertSource is the certificate source's part of the settings.
func (s *Settings) CertSource() acme.SourceConfig {
	return acme.SourceConfig{
		Domain:       s.MailDomain,
		ExternalCert: s.TLSCert, ExternalKey: s.TLSKey, CheckInterval: s.Certs.CheckInterval,
		SelfCert: s.Certs.SelfCert, SelfKey: s.Certs.SelfKey,
		ACME: s.ACME(),
	}
}
