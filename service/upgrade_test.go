//go:build linux

package service

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"chatmail-edge/internal/servicemanager"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// processDrainTimeout is [edge] drain_timeout in these tests: long enough
// to see sessions go on through the old process, short enough to wait for.
const processDrainTimeout = 4 * time.Second

// processEnv is the real binary run by a stand-in for systemd, in front
// of a local delivery, all on loopback ports the first process picked.
type processEnv struct {
	*reloadEnv
	bin      string // the unit's binary
	built    string // the binary as built
	m        *servicemanager.Manager
	log      *syncBuffer
	roots    *x509.CertPool
	addr     map[string]string // listener name -> address, from the fd store
	echList  []byte
	email    string
	password string
}

// TestServeProcessLifecycle builds chatmail-edge once and runs each case
// against processes of it.
func TestServeProcessLifecycle(t *testing.T) {
	bin := servicemanager.Build(t, t.TempDir())
	t.Run("upgrade", func(t *testing.T) { testUpgrade(t, bin) })
	t.Run("failed upgrade", func(t *testing.T) { testFailedUpgrade(t, bin) })
	t.Run("restart", func(t *testing.T) { testRestart(t, bin) })
	t.Run("upgrade under an older unit", func(t *testing.T) { testUpgradeNotifyAccessMain(t, bin) })
}

func startProcessEnv(t *testing.T, bin string) *processEnv {
	t.Helper()
	return startProcessEnvUnit(t, bin, servicemanager.Unit{})
}

// startProcessEnvUnit runs the binary under a unit with unit's settings.
func startProcessEnvUnit(t *testing.T, bin string, unit servicemanager.Unit) *processEnv {
	t.Helper()
	env, roots := newReloadFiles(t)
	// Its own copy of the binary, which the test may replace.
	own := filepath.Join(env.dir, "chatmail-edge")
	servicemanager.Replace(t, own, bin)
	pe := &processEnv{reloadEnv: env, bin: own, built: bin, roots: roots, log: &syncBuffer{}, addr: map[string]string{}}
	env.writeConfig(t, pe.extraConfig(""))
	unit.Binary, unit.Args, unit.Stderr = own, []string{"serve", "--config", env.config}, pe.log
	pe.m = servicemanager.New(t, unit)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the edge's log:\n%s", pe.log.String())
		}
		for _, p := range pe.m.Problems() {
			t.Errorf("systemd would object: %s", p)
		}
	})
	if _, err := pe.m.Start(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"https", "imaps", "smtps"} {
		a, err := pe.m.Addr(name, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		pe.addr[name] = a
	}
	data, err := os.ReadFile(filepath.Join(env.dir, "ech-config-list"))
	if err != nil {
		t.Fatal(err)
	}
	if pe.echList, err = base64.StdEncoding.DecodeString(strings.TrimSpace(string(data))); err != nil {
		t.Fatal(err)
	}
	if pe.email, pe.password, err = env.delivery.CreateAccount(); err != nil {
		t.Fatal(err)
	}
	return pe
}

// extraConfig is what the process tests add to reloadEnv's configuration.
func (pe *processEnv) extraConfig(more string) string {
	return fmt.Sprintf("[edge]\nsmtps = 127.0.0.1:0\ndrain_timeout = %v\n[ech]\nmetadata_file = %s\n%s",
		processDrainTimeout, filepath.Join(pe.dir, "ech-config-list"), more)
}

func (pe *processEnv) tlsConfig() *tls.Config {
	return &tls.Config{ServerName: reloadDomain, RootCAs: pe.roots, EncryptedClientHelloConfigList: pe.echList}
}

// dialTLS connects to a listener with ECH, as Delta Chat does.
func (pe *processEnv) dialTLS(name string) (*tls.Conn, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", pe.addr[name], pe.tlsConfig())
	if err == nil && !c.ConnectionState().ECHAccepted {
		c.Close()
		err = fmt.Errorf("%s: ECH not accepted", name)
	}
	return c, err
}

// greeting connects to imaps and reads the IMAP greeting.
func (pe *processEnv) greeting() error {
	raw, err := net.DialTimeout("tcp", pe.addr["imaps"], 10*time.Second)
	if err != nil {
		return err
	}
	defer raw.Close()
	return pe.greetingOn(raw)
}

// greetingOn does TLS with ECH on raw, a connection to imaps, and reads the
// IMAP greeting.
func (pe *processEnv) greetingOn(raw net.Conn) error {
	c := tls.Client(raw, pe.tlsConfig())
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.Handshake(); err != nil {
		return fmt.Errorf("imaps: %w", err)
	}
	if !c.ConnectionState().ECHAccepted {
		return errors.New("imaps: ECH not accepted")
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("greeting %q: %v", line, err)
	}
	return nil
}

// connectLoop connects again and again until stop is called, which
// returns how many connections were served and the failures.
func (pe *processEnv) connectLoop() (stop func() (int, []error)) {
	done := make(chan struct{})
	var served atomic.Int64
	var mu sync.Mutex
	var failures []error
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if err := pe.greeting(); err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
					continue
				}
				served.Add(1)
			}
		})
	}
	return func() (int, []error) {
		close(done)
		wg.Wait()
		return int(served.Load()), failures
	}
}

// idler is an IMAP session in IDLE that reports EXISTS.
type idler struct {
	c      *imapclient.Client
	exists chan uint32
	idle   *imapclient.IdleCommand
}

func (pe *processEnv) startIdle(t *testing.T, route string) *idler {
	t.Helper()
	conn, err := pe.dialTLS(route)
	if err != nil {
		t.Fatal(err)
	}
	s := &idler{exists: make(chan uint32, 16)}
	s.c = imapclient.New(conn, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				s.exists <- *d.NumMessages
			}
		},
	}})
	t.Cleanup(func() { s.c.Close() })
	if err := s.c.Login(pe.email, pe.password).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if s.idle, err = s.c.Idle(); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitExists waits for an EXISTS above before.
func (s *idler) waitExists(t *testing.T, before uint32) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case n := <-s.exists:
			if n > before {
				return
			}
		case <-deadline:
			t.Fatalf("no EXISTS above %d", before)
		}
	}
}

// submit sends one message to the account through smtps, with SMTP AUTH.
func (pe *processEnv) submit(t *testing.T) {
	t.Helper()
	conn, err := pe.dialTLS("smtps")
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", pe.email, pe.password)); err != nil {
		t.Fatal(err)
	}
	msg := "From: " + pe.email + "\r\nTo: " + pe.email + "\r\nSubject: after the upgrade\r\n\r\nhello\r\n"
	if err := c.SendMail(pe.email, []string{pe.email}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
}

// upgradeCommand runs `chatmail-edge upgrade` as an operator would (with
// the binary built, which the test does not break).
func (pe *processEnv) upgradeCommand() (string, error) {
	out, err := exec.Command(pe.built, "upgrade", "--config", pe.config).CombinedOutput()
	return string(out), err
}

// An upgrade refuses no connection, keeps the established sessions on the
// old process (an IDLE client hears of new mail through it), and the old
// process exits within the drain bound; the new one is the unit's main
// process and serves on the same sockets.
func testUpgrade(t *testing.T, bin string) {
	pe := startProcessEnv(t, bin)
	old := pe.m.MainPID()
	session := pe.startIdle(t, "imaps")
	stopLoop := pe.connectLoop()

	out, err := pe.upgradeCommand()
	if err != nil || !strings.HasPrefix(out, "upgraded: ") {
		t.Fatalf("upgrade: %v\n%s", err, out)
	}
	upgraded := time.Now()
	pid, err := pe.m.WaitNewMain(old, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("a new process (pid %d) serves; the old one (pid %d) drains", pid, old); !strings.Contains(out, want) {
		t.Errorf("upgrade printed %q, want %q", out, want)
	}
	// A new connection now, and mail through the new process.
	if err := pe.greeting(); err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	pe.submit(t)
	session.waitExists(t, 0)
	if pe.m.Exited(old) {
		t.Fatal("the old process exited before its IDLE session heard of the new mail")
	}

	// The old process drains for processDrainTimeout at most; its session
	// is closed then.
	if err := pe.m.WaitExit(old, processDrainTimeout+10*time.Second); err != nil {
		t.Fatal(err)
	}
	drained := time.Since(upgraded)
	if err := session.c.Noop().Wait(); err == nil {
		t.Fatal("the old process's session is still open after it exited")
	}
	served, failures := stopLoop()
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed during the upgrade, first: %v", len(failures), served+len(failures), failures[0])
	}
	t.Logf("%d connections served during the upgrade, none refused; the old process exited %v after it", served, drained.Round(time.Millisecond))
	for _, name := range []string{"https", "imaps", "smtps"} {
		if a, _ := pe.m.Addr(name, time.Second); a != pe.addr[name] {
			t.Errorf("%s: the fd store holds %s, want the same socket %s", name, a, pe.addr[name])
		}
	}
	if pe.m.MainPID() != pid || pe.m.Exited(pid) {
		t.Fatalf("main process %d (want %d, alive)", pe.m.MainPID(), pid)
	}

	// The new process can be upgraded in turn, now that the old one is
	// gone; SIGUSR2 does what the command does.
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	if _, err := pe.m.WaitNewMain(pid, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := pe.greeting(); err != nil {
		t.Fatalf("after the second upgrade: %v", err)
	}
}

// Under a unit that takes notifications from the main process only (one
// written before upgrades existed) the new process's own MAINPID= is
// dropped; the old process, still the main one, names it, so systemd never
// sees its main process exit.
func testUpgradeNotifyAccessMain(t *testing.T, bin string) {
	pe := startProcessEnvUnit(t, bin, servicemanager.Unit{NotifyAccessMain: true})
	old := pe.m.MainPID()
	if out, err := pe.upgradeCommand(); err != nil {
		t.Fatalf("upgrade: %v\n%s", err, out)
	}
	pid, err := pe.m.WaitNewMain(old, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := pe.m.WaitExit(old, processDrainTimeout+10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := pe.greeting(); err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	if pe.m.MainPID() != pid {
		t.Fatalf("main process %d, want %d", pe.m.MainPID(), pid)
	}
}

// A new process that cannot start (a bad configuration, a broken binary)
// leaves the old one serving, and the command says why; once fixed, the
// upgrade goes through.
func testFailedUpgrade(t *testing.T, bin string) {
	pe := startProcessEnv(t, bin)
	old := pe.m.MainPID()
	check := func(what, want string) {
		t.Helper()
		failedBefore := strings.Count(pe.log.String(), "upgrade failed; this process goes on serving")
		out, err := pe.upgradeCommand()
		if err == nil || !strings.Contains(out, want) {
			t.Fatalf("%s: upgrade printed %q (%v), want an error with %q", what, out, err, want)
		}
		if pe.m.MainPID() != old || pe.m.Exited(old) {
			t.Fatalf("%s: main process %d, want %d still running", what, pe.m.MainPID(), old)
		}
		if err := pe.greeting(); err != nil {
			t.Fatalf("%s: the old process does not serve: %v", what, err)
		}
		if strings.Count(pe.log.String(), "upgrade failed; this process goes on serving") != failedBefore+1 {
			t.Fatalf("%s: no clear log line", what)
		}
	}

	// A file that does not parse: the command itself refuses, and names
	// the key.
	pe.writeConfig(t, pe.extraConfig("[edge]\nmax_handshakes = lots\n"))
	out, err := pe.upgradeCommand()
	if code := exitCode(err); code != 78 || // EX_CONFIG
		!strings.Contains(out, "max_handshakes") {
		t.Fatalf("upgrade with a broken file: exit %d, %q", code, out)
	}
	pe.writeConfig(t, pe.extraConfig(""))

	// What only the new process finds: a certificate that does not load.
	good, err := os.ReadFile(pe.certFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pe.certFile, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	check("a certificate that does not load", "exit status 78")
	if err := os.WriteFile(pe.certFile, good, 0o644); err != nil {
		t.Fatal(err)
	}

	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'crashed before ready' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	servicemanager.Replace(t, pe.bin, broken)
	check("a binary that exits before ready", "exit status 3")
	if err := os.WriteFile(broken, []byte("not a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	servicemanager.Replace(t, pe.bin, broken)
	check("a file that does not run", "exec format error")

	servicemanager.Replace(t, pe.bin, bin)
	if out, err := pe.upgradeCommand(); err != nil {
		t.Fatalf("upgrade with the binary back: %v\n%s", err, out)
	}
	if _, err := pe.m.WaitNewMain(old, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// A restart (stop, start) says goodbye to sessions between commands at once
// (one in a mail transaction may finish within the bound), and the sockets
// stay open in the fd store meanwhile: a client that connects while no
// process runs waits in the backlog and is served by the next process.
func testRestart(t *testing.T, bin string) {
	pe := startProcessEnv(t, bin)
	old := pe.m.MainPID()
	session := pe.startIdle(t, "imaps")
	if err := session.idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := session.idle.Wait(); err != nil {
		t.Fatal(err)
	}

	stopped := make(chan error, 1)
	go func() { stopped <- pe.m.Stop(processDrainTimeout + 10*time.Second) }()
	// A stop says goodbye at once to a session between commands (as
	// Dovecot does on shutdown): the session ends, and so does the process.
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if !pe.m.Exited(old) {
		t.Fatal("the process still runs after the stop")
	}
	if err := session.c.Noop().Wait(); err == nil {
		t.Fatal("the session is still open after the process exited")
	}

	// No process runs, yet the socket accepts (the kernel does, into the
	// stored socket's backlog); the next process answers.
	raw, err := net.Dial("tcp", pe.addr["imaps"])
	if err != nil {
		t.Fatalf("connect while no process runs: %v", err)
	}
	defer raw.Close()
	waiting := make(chan error, 1)
	go func() { waiting <- pe.greetingOn(raw) }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pe.m.Start(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatalf("the connection made during the restart: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the connection made during the restart was not served")
	}
	for _, name := range []string{"https", "imaps", "smtps"} {
		if a, _ := pe.m.Addr(name, time.Second); a != pe.addr[name] {
			t.Errorf("%s: %s after the restart, want the same socket %s", name, a, pe.addr[name])
		}
	}
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// syncBuffer is the edge's log, written by os/exec's copying goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
