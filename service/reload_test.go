package service

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"chatmail-edge/config"
	"chatmail-edge/internal/sdnotify"
	"chatmail-edge/internal/servicemanager"
	"chatmail-edge/internal/testcert"
	"chatmail-edge/mail"

	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
)

// reloadEnv is serve on loopback in external certificate mode, in front of
// a local delivery (go-imap and go-smtp servers behind PROXY v2), with a
// test socket as systemd's $NOTIFY_SOCKET and a channel as SIGHUP.
type reloadEnv struct {
	dir, config, certFile, keyFile string
	delivery                       *mail.LocalDelivery
	notices                        <-chan string
	hup                            chan os.Signal
	edge                           *Service
	done                           chan error
}

const reloadDomain = "chat-reload.test"

// newReloadFiles writes serve's files and starts the local delivery.
func newReloadFiles(t *testing.T) (*reloadEnv, *x509.CertPool) {
	t.Helper()
	env := &reloadEnv{dir: t.TempDir(), hup: make(chan os.Signal, 1), done: make(chan error, 1)}
	env.delivery = mail.NewLocalDelivery(reloadDomain, nil)
	if err := env.delivery.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.delivery.Close() })
	env.certFile, env.keyFile = filepath.Join(env.dir, "cert.pem"), filepath.Join(env.dir, "key.pem")
	cert, roots := testcert.SelfSigned(t, reloadDomain)
	writeKeyPair(t, env.certFile, env.keyFile, cert)
	os.WriteFile(filepath.Join(env.dir, "chatmail.ini"), []byte("[params]\nmail_domain = "+reloadDomain+"\n"), 0o644)
	env.config = filepath.Join(env.dir, "chatmail-edge.ini")
	env.writeConfig(t, "")
	return env, roots
}

func startReloadEnv(t *testing.T) (*reloadEnv, *x509.CertPool) {
	t.Helper()
	env, roots := newReloadFiles(t)
	env.start(t, testZap(t))
	return env, roots
}

// start runs serve in-process on env's files, as cmdServe does, until the
// end of the test, and waits for its READY=1.
func (env *reloadEnv) start(t *testing.T, log *zap.Logger) {
	t.Helper()
	socket := filepath.Join(env.dir, "notify")
	env.notices = servicemanager.NotifyListener(t, socket)
	s, err := config.Load(env.config, true)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	ready := make(chan *Service, 1)
	go func() {
		env.done <- serve(ctx, s, log, serveLoop{
			load: func() (*config.Settings, error) {
				return config.Load(env.config, true)
			},
			reload: env.hup,
			notify: sdnotify.New(func(string) string { return socket }),
			ready:  func(e *Service) { ready <- e },
		})
	}()
	t.Cleanup(func() {
		stop()
		if err := <-env.done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	if msg := servicemanager.NextNotice(t, env.notices); !strings.HasPrefix(msg, "READY=1\nSTATUS=serving "+reloadDomain+": ") {
		t.Fatalf("first notice %q", msg)
	}
	env.edge = <-ready
}

// writeConfig writes the edge's file; extra's keys replace or add to the
// base ones.
func (env *reloadEnv) writeConfig(t *testing.T, extra string) {
	t.Helper()
	conf := fmt.Sprintf(`[edge]
chatmail_ini = %s/chatmail.ini
state_dir = %s/state
https = 127.0.0.1:0
imaps = 127.0.0.1:0
smtps =
http =
control_socket = %s/control
drain_timeout = 30s
max_handshakes = 256
max_connections = 2000
idle_timeout = 30m
[ech]
metadata_file =
[admin]
address =
[imap]
backend = proxy
address = %s
[smtp]
backend = proxy
address = %s
[tls]
cert = %s
key = %s
check_interval = 1h
[web]
mxdeliv_upstream =
iroh_relay_upstream =
new_account_cgi =
site_dir = %s/site
[mta-sts]
mode = enforce
`, env.dir, env.dir, env.dir, env.delivery.IMAPAddr(), env.delivery.SMTPAddr(), env.certFile, env.keyFile, env.dir)
	if err := os.WriteFile(env.config, []byte(mergeINI(conf, extra)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// reload sends SIGHUP and waits for serve's READY=1 after RELOADING=1; it
// returns that message's STATUS line.
func (env *reloadEnv) reload(t *testing.T) string {
	t.Helper()
	env.hup <- syscall.SIGHUP
	if msg := servicemanager.NextNotice(t, env.notices); !strings.HasPrefix(msg, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("notice %q, want RELOADING=1 first", msg)
	}
	for {
		msg := servicemanager.NextNotice(t, env.notices)
		if rest, ok := strings.CutPrefix(msg, "READY=1\n"); ok {
			return strings.TrimSpace(rest)
		}
	}
}

// dial opens an IMAP connection through the edge's 993 with ECH.
func (env *reloadEnv) dial(roots *x509.CertPool) (*tls.Conn, error) {
	c, err := tls.Dial("tcp", env.edge.edge.Addr("imaps").String(), &tls.Config{
		ServerName: reloadDomain, RootCAs: roots,
		EncryptedClientHelloConfigList: env.edge.echKeys.Load().ConfigList(),
	})
	if err == nil && !c.ConnectionState().ECHAccepted {
		c.Close()
		err = fmt.Errorf("ECH not accepted")
	}
	return c, err
}

// TestReloadUnderLoad is issue 5's SIGHUP acceptance test: 200 IMAP
// connections through the edge, with ECH, stay open and answer NOOP after
// each of 5 reloads: new limits, a new certificate, a broken configuration
// (refused, the old one stays), a good one again with rotated ECH keys and
// another MTA-STS mode, and a listener change (needs a restart: not
// applied); then a broken certificate file, refused too.
func TestReloadUnderLoad(t *testing.T) {
	env, roots := startReloadEnv(t)
	const n = 200
	clients := make([]*imapclient.Client, n)
	for i := range clients {
		conn, err := env.dial(roots)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		clients[i] = imapclient.New(conn, nil)
		t.Cleanup(func() { clients[i].Close() })
	}
	allNoop := func(after string) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i, c := range clients {
			wg.Go(func() {
				if err := c.Noop().Wait(); err != nil {
					errs <- fmt.Errorf("connection %d: NOOP: %w", i, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("after %s: %v", after, err)
		}
		if got := env.edge.edge.Snapshot().ActiveSessions; got != n {
			t.Fatalf("after %s: %d sessions, want %d", after, got, n)
		}
	}
	allNoop("the start")

	// 1: limits and timeouts.
	env.writeConfig(t, "[edge]\nmax_handshakes = 8\nidle_timeout = 10m\n")
	if st := env.reload(t); !strings.HasPrefix(st, fmt.Sprintf("STATUS=serving %s: %d connections", reloadDomain, n)) {
		t.Fatalf("status after reload 1: %q", st)
	}
	if l := env.edge.edge.Limits(); l.MaxHandshakes != 8 || l.IdleTimeout.Minutes() != 10 {
		t.Fatalf("limits after reload 1: %+v", l)
	}
	allNoop("reload 1 (limits)")

	// 2: the external certificate was renewed in place; the file check is
	// hourly, so only the reload shows it.
	second, roots2 := testcert.SelfSigned(t, reloadDomain)
	writeKeyPair(t, env.certFile, env.keyFile, second)
	env.reload(t)
	c, err := env.dial(roots2)
	if err != nil {
		t.Fatalf("a new connection after reload 2: %v", err)
	}
	if !c.ConnectionState().PeerCertificates[0].Equal(second.Leaf) {
		t.Fatal("a new connection does not get the new certificate")
	}
	c.Close()
	allNoop("reload 2 (certificate)")

	// 3: a broken file is refused whole: its valid key is not applied either.
	env.writeConfig(t, "[edge]\nmax_handshakes = 4\nmax_connections = many\n")
	if st := env.reload(t); !strings.Contains(st, "reload refused") || !strings.Contains(st, "max_connections") {
		t.Fatalf("status after the broken reload: %q", st)
	}
	if l := env.edge.edge.Limits(); l.MaxHandshakes != 8 {
		t.Fatalf("the refused configuration was applied in part: %+v", l)
	}
	allNoop("reload 3 (refused)")

	// 4: a good file again, with new ECH keys and a new MTA-STS mode.
	before := env.edge.echKeys.Load().Current().Parsed().ConfigID
	echRotate(t, filepath.Join(env.dir, "state"))
	env.writeConfig(t, "[edge]\nmax_handshakes = 4\n[mta-sts]\nmode = testing\n")
	env.reload(t)
	if l := env.edge.edge.Limits(); l.MaxHandshakes != 4 {
		t.Fatalf("limits after reload 4: %+v", l)
	}
	if after := env.edge.echKeys.Load().Current().Parsed().ConfigID; after == before {
		t.Fatal("the rotated ECH key is not in use after the reload")
	}
	c, err = env.dial(roots2) // with the new ECH config
	if err != nil {
		t.Fatalf("a new connection with the new ECH key: %v", err)
	}
	c.Close()
	if policy := env.getHTTPS(t, roots2, "/.well-known/mta-sts.txt"); !strings.Contains(policy, "mode: testing") {
		t.Fatalf("MTA-STS policy after reload 4:\n%s", policy)
	}
	allNoop("reload 4 (ECH keys, web)")

	// 5: a new listen address needs a restart: warned about, not applied.
	imapsBefore := env.edge.edge.Addr("imaps").String()
	env.writeConfig(t, "[edge]\nmax_handshakes = 4\nimaps = 127.0.0.1:1\n[mta-sts]\nmode = testing\n")
	if st := env.reload(t); !strings.Contains(st, "restart needed for [edge] imaps") {
		t.Fatalf("status after reload 5: %q", st)
	}
	if got := env.edge.edge.Addr("imaps").String(); got != imapsBefore {
		t.Fatalf("imaps moved from %s to %s", imapsBefore, got)
	}
	allNoop("reload 5 (listener)")

	// And a certificate file cut short is refused like a broken config.
	os.WriteFile(env.certFile, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644)
	if st := env.reload(t); !strings.Contains(st, "reload refused") || !strings.Contains(st, env.certFile) {
		t.Fatalf("status after a broken certificate file: %q", st)
	}
	if c, err = env.dial(roots2); err != nil || !c.ConnectionState().PeerCertificates[0].Equal(second.Leaf) {
		t.Fatalf("the certificate in use was not kept: %v", err)
	}
	c.Close()
	allNoop("a refused certificate")
}

// getHTTPS fetches path through the edge's 443 with ECH.
func (env *reloadEnv) getHTTPS(t *testing.T, roots *x509.CertPool, path string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		ServerName: reloadDomain, RootCAs: roots,
		EncryptedClientHelloConfigList: env.edge.echKeys.Load().ConfigList(),
	}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + env.edge.edge.Addr("https").String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !resp.TLS.ECHAccepted {
		t.Fatal("HTTPS without ECH")
	}
	return string(body)
}

// TestServeProcessSignals runs serve as systemd does (Type=notify,
// ExecReload=kill -HUP): real signals, a real $NOTIFY_SOCKET. A SIGHUP
// that comes with SIGTERM, during shutdown, must not change the clean exit.
func TestServeProcessSignals(t *testing.T) {
	env, _ := newReloadFiles(t)
	socket := filepath.Join(env.dir, "notify")
	notices := servicemanager.NotifyListener(t, socket)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, servicemanager.Build(t, t.TempDir()), "serve", "--config", env.config)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+socket)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	expect := func(prefix string) {
		t.Helper()
		msg := servicemanager.NextNotice(t, notices)
		for strings.HasPrefix(msg, "FDSTORE") { // the listening sockets, for a restart
			msg = servicemanager.NextNotice(t, notices)
		}
		if !strings.HasPrefix(msg, prefix) {
			t.Fatalf("notice %q, want %q first; stderr:\n%s", msg, prefix, stderr.String())
		}
	}
	expect("READY=1\nSTATUS=serving " + reloadDomain)
	cmd.Process.Signal(syscall.SIGHUP)
	expect("RELOADING=1\nMONOTONIC_USEC=")
	expect("READY=1\nSTATUS=serving " + reloadDomain)
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Process.Signal(syscall.SIGHUP)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("serve: %v; stderr:\n%s", err, stderr.String())
	}
	// Sent before the exit, so in the socket now (a reload may come first).
	for !strings.HasPrefix(servicemanager.NextNotice(t, notices), "STOPPING=1\nSTATUS=stopping") {
	}
}
