//go:build integration

// Package integration runs the edge in front of the real Debian Postfix and
// Dovecot, configured as chatmail configures them, in both backend modes.
// It needs root and the packages postfix, dovecot-imapd and dovecot-lmtpd;
// run it with `go test -tags integration ./integration/...` (.ci/run does).
package integration

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"testing"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/ech"
	"chatmail-edge/edge"
	"chatmail-edge/internal/testcert"
	"chatmail-edge/mail"

	"go.uber.org/zap/zaptest"
)

const domain = "chat.example"

// relay is the mail side of a chatmail relay on loopback: Postfix and
// Dovecot as chatmail configures them, with an edge in front in one backend
// mode, and two accounts.
type relay struct {
	mode       mail.Mode
	dir        string // the daemons' folder
	certFile   string // the daemons' (and a process edge's) certificate
	keyFile    string
	postfix    *postfix
	dovecot    *dovecot
	edge       *edge.Edge        // nil when the edge runs as a process
	addrs      map[string]string // a process edge's listeners, by name
	roots      *x509.CertPool
	echList    []byte
	alice, bob account
}

// forEachMode runs test against a fresh relay in tls mode, then in proxy
// mode.
func forEachMode(t *testing.T, test func(t *testing.T, r *relay)) {
	for _, mode := range []mail.Mode{mail.ModeTLS, mail.ModeProxy} {
		t.Run(string(mode), func(t *testing.T) { test(t, startRelay(t, mode)) })
	}
}

func startRelay(t *testing.T, mode mail.Mode) *relay {
	t.Helper()
	r, cert := startMailSide(t, mode, "")
	r.startEdge(t, &cert)
	return r
}

// startMailSide starts Postfix (with the master.cf entries postfixExtra)
// and Dovecot (with dovecotExtra added to its configuration) for a relay
// whose edge the caller starts; cert is theirs.
func startMailSide(t *testing.T, mode mail.Mode, dovecotExtra string, postfixExtra ...string) (*relay, tls.Certificate) {
	t.Helper()
	requireDaemons(t)
	dir := daemonDir(t)
	cert, roots := testcert.SelfSigned(t, domain)
	certFile, keyFile := writeKeyPair(t, dir, cert)
	r := &relay{mode: mode, dir: dir, certFile: certFile, keyFile: keyFile, roots: roots, alice: newAccount("alice"), bob: newAccount("bob")}
	users := map[string]string{r.alice.addr: r.alice.password, r.bob.addr: r.bob.password}
	// Postfix first: it creates the queue's private folder, where Dovecot
	// puts the sockets Postfix uses.
	r.postfix = startPostfix(t, dir, domain, mode, certFile, keyFile, postfixExtra...)
	r.dovecot = startDovecot(t, dir, r.postfix.spool, mode, certFile, keyFile, users, dovecotExtra)
	return r, cert
}

// addr is where the named listener of the edge accepts.
func (r *relay) addr(listener string) string {
	if r.edge == nil {
		return r.addrs[listener] // the edge runs as a process (edgeproc_test.go)
	}
	return r.edge.Addr(listener).String()
}

// startEdge runs an edge on loopback port 0 with one ECH key, its mail
// backends in r.mode.
func (r *relay) startEdge(t *testing.T, cert *tls.Certificate) {
	t.Helper()
	e, err := edge.New(edge.Config{
		Listeners: []edge.ListenerConfig{
			{Name: "https", Address: "127.0.0.1:0", Kind: edge.KindMux},
			{Name: "imaps", Address: "127.0.0.1:0", Kind: edge.KindIMAP},
			{Name: "smtps", Address: "127.0.0.1:0", Kind: edge.KindSMTP},
		},
		Hostname: domain,
	}, zaptest.NewLogger(t), acme.NewStatic(cert, "test").GetCertificate)
	if err != nil {
		t.Fatal(err)
	}
	backend := func(p mail.Protocol, addr string) *mail.Backend {
		b, err := mail.NewBackend(mail.BackendConfig{
			Protocol: p, Mode: r.mode, Address: addr,
			TLSServerName: domain, TLSVerify: true, RootCAs: r.roots, // tls mode
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	e.SetBackends(edge.Backends{IMAP: backend(mail.IMAP, r.dovecot.Backend), SMTP: backend(mail.SMTP, r.postfix.Backend)})
	key, err := ech.GenerateKey(domain, ech.MaxNameLength(domain), 1, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys := ech.NewKeySet(key)
	e.SetECHKeys(keys.TLSKeys(), key.ConfigID())
	r.echList = keys.ConfigList()
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	r.edge = e
}

// writeKeyPair stores cert for the daemons, which read PEM files.
func writeKeyPair(t *testing.T, dir string, cert tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	var chain []byte
	for _, c := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, certFile, string(chain), 0o644)
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), 0o600)
	return certFile, keyFile
}
