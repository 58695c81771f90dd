package service

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/internal/acmetest"
	"chatmail-edge/internal/testcert"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// serveEnv is a relay's configuration for `serve` on loopback, with an
// ACME server (Pebble) and the DNS its validation authority asks.
type serveEnv struct {
	dir, config string
	domain      string
	publicName  string
	pebble      *acmetest.Pebble
	calls       func() []string // reload commands run so far
	export      string          // the exported chain
	pebbleReady func()          // runs once Pebble validates, before the certificates start
	// elsewhere: Pebble validates at another edge's ports (several nodes
	// for one relay), not at this one's.
	elsewhere bool
}

func newServeEnv(t *testing.T, domain, publicName string, opts acmetest.Options, extra string) *serveEnv {
	t.Helper()
	return newServeEnvWith(t, acmetest.Start(t, opts), domain, publicName, extra)
}

// newServeEnvWith is newServeEnv with a Pebble that several edges share.
func newServeEnvWith(t *testing.T, pebble *acmetest.Pebble, domain, publicName, extra string) *serveEnv {
	t.Helper()
	env := &serveEnv{dir: t.TempDir(), domain: domain, publicName: publicName, pebble: pebble}
	chatmailINI := filepath.Join(env.dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = "+domain+"\n"), 0o644)
	script, calls := reloadRecorder(t)
	env.calls = calls
	env.export = filepath.Join(env.dir, "live", domain, "fullchain")
	conf := fmt.Sprintf(`[edge]
chatmail_ini = %s
state_dir = %s
https = 127.0.0.1:0
http = 127.0.0.1:0
control_socket = %s/control
[ech]
public_name = %s
metadata_file =
[admin]
address =
[acme]
fallback_ca =
acmetool =
export_cert = %s/live/<mail_domain>/fullchain
export_key = %s/live/<mail_domain>/privkey
reload = %s dovecot.service; %s postfix.service
`, chatmailINI, filepath.Join(env.dir, "state"), env.dir, publicName, env.dir, env.dir, script, script)
	env.config = filepath.Join(env.dir, "chatmail-edge.ini")
	if err := os.WriteFile(env.config, []byte(mergeINI(conf, extra)), 0o644); err != nil {
		t.Fatal(err)
	}
	return env
}

// mergeINI adds extra's keys to conf, replacing keys conf already has; a
// new key goes into its section when conf has it, else into a new one.
func mergeINI(conf, extra string) string {
	section := ""
	for line := range strings.SplitSeq(extra, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "["):
			section = line
		case strings.Contains(line, "="):
			key := strings.TrimSpace(line[:strings.Index(line, "=")])
			lines := strings.Split(conf, "\n")
			in, done, header := "", false, -1
			for i, l := range lines {
				if strings.HasPrefix(l, "[") {
					in = l
					if l == section {
						header = i
					}
				}
				if in == section && (strings.HasPrefix(l, key+" ") || strings.HasPrefix(l, key+"=")) {
					lines[i], done = line, true
				}
			}
			switch {
			case done:
			case header >= 0:
				lines = slices.Insert(lines, header+1, line)
			default:
				lines = append(lines, section, line)
			}
			conf = strings.Join(lines, "\n")
		}
	}
	return conf
}

// start runs serve's start-up with the config and Pebble as the CA, as
// `serve --config ... --acme-ca ... --acme-ca-root ...` does; Pebble validates on the ports the edge got.
func (env *serveEnv) start(t *testing.T) *Service {
	t.Helper()
	e, err := env.startErr(t)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// startErr is start for any goroutine: it returns what fails.
func (env *serveEnv) startErr(t *testing.T) (*Service, error) {
	s, err := config.Load(env.config, true)
	if err != nil {
		return nil, err
	}
	s.Certs.CA, s.Certs.CARoot = env.pebble.URL, env.pebble.RootFile
	s.Certs.Retry = acme.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	s.Certs.RenewCheck = 200 * time.Millisecond
	log := testZap(t)
	names := []string{env.domain, "mta-sts." + env.domain, "www." + env.domain, env.publicName}
	e, err := startServe(context.Background(), s, log, nil, func(in *instance) error {
		httpPort := 0
		if in.httpLn != nil {
			httpPort = in.httpLn.Addr().(*net.TCPAddr).Port
		}
		if !env.elsewhere {
			env.pebble.Validate(acmetest.StartDNS(t, names...), httpPort, in.edge.Addr("https").(*net.TCPAddr).Port)
		}
		if env.pebbleReady != nil {
			env.pebbleReady()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(e.Shutdown)
	return e, nil
}

// dialECH connects to name like Delta Chat, with ECH, trusting roots.
func (e *Service) dialECH(name string, roots *x509.CertPool) (tls.ConnectionState, error) {
	return e.dialECHWith(name, e.echKeys.Load().ConfigList(), roots)
}

// dialECHWith connects to name with ECH with the config list a client
// holds, trusting roots; an error unless ECH is accepted.
func (e *Service) dialECHWith(name string, configList []byte, roots *x509.CertPool) (tls.ConnectionState, error) {
	conn, err := tls.Dial("tcp", e.edge.Addr("https").String(), &tls.Config{
		ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"},
		EncryptedClientHelloConfigList: configList,
	})
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	cs := conn.ConnectionState()
	if !cs.ECHAccepted {
		return cs, fmt.Errorf("%s: ECH not accepted", name)
	}
	return cs, nil
}

// waitIssued waits until every name gets a certificate from the CA, over
// ECH, and returns the chains.
func (env *serveEnv) waitIssued(t *testing.T, e *Service) map[string][]*x509.Certificate {
	t.Helper()
	chains := map[string][]*x509.Certificate{}
	for _, name := range []string{env.domain, "mta-sts." + env.domain, "www." + env.domain, env.publicName} {
		acmetest.WaitFor(t, 30*time.Second, "a certificate for "+name, func() error {
			cs, err := e.dialECH(name, env.pebble.Roots())
			if err != nil {
				return err
			}
			if !slices.Contains(cs.PeerCertificates[0].DNSNames, name) || len(cs.VerifiedChains) == 0 {
				return fmt.Errorf("%s got a certificate for %v", name, cs.PeerCertificates[0].DNSNames)
			}
			chains[name] = cs.PeerCertificates
			return nil
		})
	}
	return chains
}

// exportMatches checks that the exported chain is byte for byte the PEM of
// what the edge serves for the mail domain.
func (env *serveEnv) exportMatches(e *Service) error {
	exported, err := os.ReadFile(env.export)
	if err != nil {
		return err
	}
	cs, err := e.dialECH(env.domain, env.pebble.Roots())
	if err != nil {
		return err
	}
	if !bytes.Equal(exported, pemOf(cs.PeerCertificates)) {
		return fmt.Errorf("exported chain (%d bytes) differs from the served one", len(exported))
	}
	return nil
}

// accountURL is the ACME account URL as `acme account-url` gets it.
func (env *serveEnv) accountURL(t *testing.T) string {
	t.Helper()
	s, err := config.Load(env.config, true)
	if err != nil {
		t.Fatal(err)
	}
	s.Certs.CA, s.Certs.CARoot = env.pebble.URL, env.pebble.RootFile
	m, err := acme.NewManager(s.ACME(), testZap(t))
	if err != nil {
		t.Fatal(err)
	}
	url, err := m.AccountURL(t.Context())
	if err != nil {
		t.Fatalf("account URL: %v", err)
	}
	return url
}

// TestServeIssuesThroughHTTP01 is issue 3's first acceptance test: Pebble,
// validating for real over HTTP-01 on the edge's own :80 handler, issues
// certificates for the four names; a client trusting Pebble sees them over
// ECH; the mail domain's is exported and the daemons reloaded.
func TestServeIssuesThroughHTTP01(t *testing.T) {
	env := newServeEnv(t, "chat-http.test", "front-http.test", acmetest.Options{}, "[acme]\nchallenges = http-01\n")
	e := env.start(t)
	env.waitIssued(t, e)
	acmetest.WaitFor(t, 10*time.Second, "export and reload", func() error {
		if c := env.calls(); len(c) != 2 {
			return fmt.Errorf("reload calls %q", c)
		}
		return env.exportMatches(e)
	})
	account := env.accountURL(t)
	valid := env.pebble.ValidChallenges(account)
	if len(valid) != 4 {
		t.Fatalf("validated names of %s: %v", account, valid)
	}
	for name, typ := range valid {
		if typ != "http-01" {
			t.Errorf("%s validated by %s", name, typ)
		}
	}
	// Anything else on :80 is still a 301 to https.
	resp, err := httpGet("http://" + e.httpLn.Addr().String() + "/.well-known/acme-challenge/unknown")
	if err != nil || resp.StatusCode != 301 {
		t.Fatalf("unknown challenge path: %v %v", resp, err)
	}
	for _, st := range e.certs().Status() {
		if st.Source != "acme" || st.LastError != "" || st.NotAfter.IsZero() {
			t.Errorf("status %+v", st)
		}
	}
}

// TestServeIssuesThroughTLSALPN01: with no plain HTTP listener at all, the
// certificates come through TLS-ALPN-01 (RFC 8737) on the 443 listener.
func TestServeIssuesThroughTLSALPN01(t *testing.T) {
	env := newServeEnv(t, "chat-alpn.test", "front-alpn.test", acmetest.Options{}, "[edge]\nhttp =\n")
	e := env.start(t)
	if e.httpLn != nil {
		t.Fatal("an HTTP listener although http is empty")
	}
	env.waitIssued(t, e)
	for name, typ := range env.pebble.ValidChallenges(env.accountURL(t)) {
		if typ != "tls-alpn-01" {
			t.Errorf("%s validated by %s", name, typ)
		}
	}
	var acmeHandshakes uint64
	for _, l := range e.edge.Snapshot().Listeners {
		acmeHandshakes += l.Routes["acme-tls"]
	}
	if acmeHandshakes == 0 {
		t.Fatal("no acme-tls/1 handshake reached the edge")
	}
	acmetest.WaitFor(t, 10*time.Second, "the export", func() error { return env.exportMatches(e) })
}

// TestServeRenewsShortLivedCertificate: a certificate that lives seconds
// is renewed by the running edge; the exported files change with it, stay
// equal to what is served, and the daemons are reloaded each time.
func TestServeRenewsShortLivedCertificate(t *testing.T) {
	env := newServeEnv(t, "chat-renew.test", "front-renew.test", acmetest.Options{Validity: 15 * time.Second}, "")
	e := env.start(t)
	var first []byte
	acmetest.WaitFor(t, 10*time.Second, "the first export", func() (err error) {
		first, err = os.ReadFile(env.export)
		return err
	})
	// Renewals are due from a third of the 15 s left; a renewal attempt
	// that fails on a loaded machine is retried by certmagic a minute
	// later (its retryIntervals), so the bound covers one retry.
	acmetest.WaitFor(t, 100*time.Second, "a renewal", func() error {
		now, err := os.ReadFile(env.export)
		if err != nil || bytes.Equal(now, first) {
			return fmt.Errorf("export unchanged (%v)", err)
		}
		return nil
	})
	acmetest.WaitFor(t, 20*time.Second, "the renewed export to match what is served, reloaded", func() error {
		if c := env.calls(); len(c) < 4 {
			return fmt.Errorf("reload calls %q", c)
		}
		return env.exportMatches(e)
	})
}

// TestServeKeepsServingWhileCAIsDown: restarted with a new ECH public
// name while the CA is unreachable, the edge serves what it has (the mail
// domain's certificate for the new name), shows the failure and its next
// attempt, and gets the certificate once the CA is back.
func TestServeKeepsServingWhileCAIsDown(t *testing.T) {
	env := newServeEnv(t, "chat-down.test", "front-down.test", acmetest.Options{}, "")
	first := env.start(t)
	env.waitIssued(t, first)
	first.Shutdown()

	env.publicName = "front2-down.test"
	os.WriteFile(env.config, []byte(mergeINI(mustRead(t, env.config), "[ech]\npublic_name = front2-down.test\n")), 0o644)
	env.pebbleReady = func() { env.pebble.SetMode(acmetest.Down) }
	e := env.start(t)
	acmetest.WaitFor(t, 10*time.Second, "the failure in the status", func() error {
		for _, st := range e.certs().Status() {
			if st.Names[0] == env.publicName && strings.Contains(st.LastError, env.pebble.URL) && st.NextAttempt.After(st.LastErrorAt) {
				return nil
			}
		}
		return fmt.Errorf("status %+v", e.certs().Status())
	})
	if _, err := e.dialECH(env.domain, env.pebble.Roots()); err != nil {
		t.Fatalf("the mail domain is not served while the CA is down: %v", err)
	}
	if _, err := e.dialECH(env.publicName, env.pebble.Roots()); err == nil || !strings.Contains(err.Error(), env.domain) {
		t.Fatalf("%s without its certificate: want the mail domain's, got %v", env.publicName, err)
	}
	env.pebble.SetMode(acmetest.Up)
	env.waitIssued(t, e)
}

// TestServeTakesOverAcmetool: acmetool's account and certificate are taken
// over; nothing is issued for the names the certificate covers, the next
// order (for the ECH public name) uses acmetool's account, and `acme
// account-url` prints that account's URL.
func TestServeTakesOverAcmetool(t *testing.T) {
	domain := "chat-takeover.test"
	env := newServeEnv(t, domain, "front-takeover.test", acmetest.Options{}, "")
	relay := acmetest.NewRelay(t, filepath.Join(env.dir, "acme"), env.pebble.URL, domain)
	live := relay.Live
	os.WriteFile(env.config, []byte(mergeINI(mustRead(t, env.config), fmt.Sprintf(
		"[acme]\nacmetool = %s\nexport_cert = %s/fullchain\nexport_key = %s/privkey\n", relay.Dir, live, live))), 0o644)

	var accountURL string
	env.pebbleReady = func() { accountURL = env.pebble.RegisterAccount(t, relay.AccountKey) }
	e := env.start(t)
	for _, name := range []string{domain, "www." + domain, "mta-sts." + domain} {
		if _, err := e.dialECH(name, relay.Roots); err != nil {
			t.Fatalf("acmetool's certificate for %s: %v", name, err)
		}
	}
	acmetest.WaitFor(t, 30*time.Second, "the public name's certificate", func() error {
		_, err := e.dialECH(env.publicName, env.pebble.Roots())
		return err
	})
	orders := env.pebble.Orders(accountURL)
	if len(orders) != 1 || orders[0].Identifiers[0].Value != env.publicName {
		t.Fatalf("acmetool's account has %d orders; want one, for %s", len(orders), env.publicName)
	}
	if got := env.accountURL(t); got != accountURL {
		t.Fatalf("acme account-url printed %q, want %q", got, accountURL)
	}
	if now := mustRead(t, filepath.Join(live, "fullchain")); now != string(relay.ChainPEM) {
		t.Fatal("acmetool's live certificate was rewritten")
	}
	if c := env.calls(); len(c) != 0 {
		t.Fatalf("reload ran without a change: %q", c)
	}
}

// TestServeSelfAndExternalModes: chatmail's other two modes.
func TestServeSelfAndExternalModes(t *testing.T) {
	t.Run("self", func(t *testing.T) {
		dir := t.TempDir()
		env := newServeEnv(t, "_self.test", "front-self.test", acmetest.Options{}, fmt.Sprintf(
			"[tls]\nself_cert = %s/mailserver.pem\nself_key = %s/private/mailserver.key\n", dir, dir))
		e := env.start(t)
		want, err := os.ReadFile(filepath.Join(dir, "mailserver.pem"))
		if err != nil {
			t.Fatalf("no self-signed certificate made: %v", err)
		}
		block, _ := pem.Decode(want)
		self, _ := x509.ParseCertificate(block.Bytes)
		pool := x509.NewCertPool()
		pool.AddCert(self)
		for _, name := range []string{"_self.test", "www._self.test", "mta-sts._self.test"} {
			cs, err := e.dialECH(name, pool)
			if err != nil || !cs.PeerCertificates[0].Equal(self) {
				t.Fatalf("%s: %v", name, err)
			}
		}
		if st := e.certs().Status(); len(st) != 1 || st[0].Source != "self" {
			t.Fatalf("status %+v", st)
		}
	})
	t.Run("external", func(t *testing.T) {
		dir := t.TempDir()
		certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		first, roots1 := testcert.SelfSigned(t, "chat-ext.test")
		writeKeyPair(t, certFile, keyFile, first)
		env := newServeEnv(t, "chat-ext.test", "front-ext.test", acmetest.Options{}, "[tls]\ncheck_interval = 20ms\n")
		os.WriteFile(filepath.Join(env.dir, "chatmail.ini"), []byte(fmt.Sprintf(
			"[params]\nmail_domain = chat-ext.test\ntls_external_cert_and_key = %s %s\n", certFile, keyFile)), 0o644)
		e := env.start(t)
		if _, err := e.dialECH("chat-ext.test", roots1); err != nil {
			t.Fatal(err)
		}
		second, roots2 := testcert.SelfSigned(t, "chat-ext.test")
		writeKeyPair(t, certFile, keyFile, second)
		select {
		case <-e.certs().Source.(*acme.Watched).Changed():
		case <-time.After(10 * time.Second):
			t.Fatal("the replaced files were not noticed")
		}
		if cs, err := e.dialECH("chat-ext.test", roots2); err != nil || !cs.PeerCertificates[0].Equal(second.Leaf) {
			t.Fatalf("the new certificate is not served: %v", err)
		}
	})
}

// TestServeFirstStartNeedsACertificate: with nothing to serve and the CA
// out of reach (here: its root file is missing), serve stops with an error
// naming the file.
func TestServeFirstStartNeedsACertificate(t *testing.T) {
	env := newServeEnv(t, "chat-nocert.test", "front-nocert.test", acmetest.Options{}, "")
	missing := filepath.Join(env.dir, "no-such-root.pem")
	s, err := config.Load(env.config, true)
	if err != nil {
		t.Fatal(err)
	}
	s.Certs.CA, s.Certs.CARoot = env.pebble.URL, missing
	e, err := startServe(t.Context(), s, testZap(t), nil, nil)
	if err == nil {
		e.Shutdown()
	}
	if err == nil || errors.Is(err, config.ErrConfig) || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "no certificate for chat-nocert.test") {
		t.Fatalf("start: %v; want an error (not a configuration one) naming the root file", err)
	}
}

func httpGet(url string) (*http.Response, error) {
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(url)
	if err == nil {
		resp.Body.Close()
	}
	return resp, err
}

func testZap(t *testing.T) *zap.Logger {
	if testing.Verbose() {
		return zaptest.NewLogger(t)
	}
	return zap.NewNop()
}

func writeKeyPair(t *testing.T, certFile, keyFile string, c tls.Certificate) {
	t.Helper()
	der, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644)
}

func pemOf(chain []*x509.Certificate) []byte {
	var out []byte
	for _, c := range chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// reloadRecorder is a reload command that records its arguments.
func reloadRecorder(t *testing.T) (string, func() []string) {
	dir := t.TempDir()
	calls, script := filepath.Join(dir, "calls"), filepath.Join(dir, "reload")
	os.WriteFile(script, []byte("#!/bin/sh\necho \"$*\" >> "+strconv.Quote(calls)+"\n"), 0o755)
	return script, func() []string {
		b, _ := os.ReadFile(calls)
		return strings.Fields(string(b))
	}
}

// TestACMESettings: the [acme] keys as the manager gets them. An empty
// reload list is allowed (issue 5 reloads through a systemd path unit).
func TestACMESettings(t *testing.T) {
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = Chat.Example\n"), 0o644)
	load := func(extra string) *config.Settings {
		t.Helper()
		path := filepath.Join(dir, "edge.ini")
		os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\nstate_dir = /state\n"+extra), 0o644)
		s, err := config.Load(path, true)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := load("")
	cfg := s.ACME()
	if s.CertMode() != "acme" || cfg.StorageDir != "/state/acme" || cfg.CA != acme.LetsEncrypt || cfg.FallbackCA != acme.ZeroSSL ||
		cfg.ExportCert != "/var/lib/acme/live/chat.example/fullchain" || cfg.ExportKey != "/var/lib/acme/live/chat.example/privkey" ||
		!slices.Equal(cfg.Names, []string{"chat.example", "mta-sts.chat.example", "www.chat.example"}) ||
		len(cfg.Reload) != 2 || !slices.Equal(cfg.Reload[1], []string{"systemctl", "reload", "postfix.service"}) {
		t.Fatalf("defaults: mode %s, %+v", s.CertMode(), cfg)
	}
	cfg = load("[ech]\npublic_name = front.example\n[acme]\nreload =\nexport_cert =\nexport_key =\nfallback_eab_key_id = k\nfallback_eab_hmac_key = h\n").ACME()
	if cfg.Reload != nil || cfg.ExportCert != "" || cfg.Names[3] != "front.example" || cfg.FallbackEAB == nil || cfg.FallbackEAB.KeyID != "k" {
		t.Fatalf("overrides: %+v", cfg)
	}
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n[acme]\nchallenges = dns-01\n"), 0o644)
	if _, err := config.Load(path, true); err == nil || !strings.Contains(err.Error(), path+":4: challenges") {
		t.Fatalf("bad challenge type: %v", err)
	}
}
