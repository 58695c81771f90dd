// Package etcdtest runs a real etcd server (Debian's etcd-server, 3.4) for
// one test: its data and its sockets in a temporary folder of the test,
// never the system's etcd and never a TCP port.
//
// The server listens on unix sockets only, for clients and for its peer
// port, named relative to its working folder (etcd 3.4 wants
// "unix://host:port", and takes "host:port" as the socket's file name),
// so no two tests can race for an address. Start waits until the server
// says it serves clients and then answers a read; Stop kills it, as a
// crash would; Start again on the same folder brings it back with its
// data.
package etcdtest

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// RequireEnv, set to 1, makes a missing etcd binary fail the test instead
// of skipping it: .ci/run sets it, so that the store's tests never skip in
// CI.
const RequireEnv = "CHATMAIL_EDGE_REQUIRE_ETCD"

// startTimeout bounds one start of the server, until it serves.
const startTimeout = 30 * time.Second

// Etcd is one etcd server process.
type Etcd struct {
	// Endpoint is the client URL: unix:// and the socket's absolute path.
	Endpoint string

	t    testing.TB
	bin  string
	dir  string
	opts Options

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd has exited
	log  *tailBuffer
}

// Options change how the server runs.
type Options struct {
	// TLS serves clients over TLS (unixs://) with the certificate in
	// CertFile and KeyFile, and requires client certificates signed by
	// the CA in ClientCAFile when that is set.
	CertFile, KeyFile, ClientCAFile string
	// ClientTLS is how Start itself connects to a TLS server, to see that
	// it answers.
	ClientTLS *tls.Config
}

// Start starts an etcd server for t, or skips t (fails it, with
// RequireEnv set) when the etcd binary is not installed.
func Start(t testing.TB, opts Options) *Etcd {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	scheme := "unix"
	if opts.CertFile != "" {
		scheme = "unixs"
	}
	e := &Etcd{t: t, bin: bin, dir: dir, opts: opts, Endpoint: scheme + "://" + filepath.Join(dir, "client:1")}
	// A unix socket's path holds at most 107 bytes (sockaddr_un).
	if len(filepath.Join(dir, "client:1")) > 100 {
		t.Fatalf("etcd's socket path %s is too long for a unix socket: use a shorter test name", filepath.Join(dir, "client:1"))
	}
	t.Cleanup(e.Stop)
	e.Start()
	return e
}

// Binary is the path of the etcd binary, or skips (fails) t without one.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err == nil {
		return bin
	}
	msg := "etcd not found: apt-get install etcd-server (see .ci/run)"
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s; %s=1 says this test must run", msg, RequireEnv)
	}
	t.Skipf("SKIPPED: %s", msg)
	return ""
}

// Start starts the server (again) on its folder and waits until it serves.
func (e *Etcd) Start() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil {
		e.t.Fatal("etcd is running already")
	}
	scheme := "unix"
	if e.opts.CertFile != "" {
		scheme = "unixs"
	}
	args := []string{
		"--name", "test",
		"--data-dir", filepath.Join(e.dir, "data"),
		"--listen-client-urls", scheme + "://client:1",
		"--advertise-client-urls", scheme + "://client:1",
		"--listen-peer-urls", "unix://peer:1",
		"--initial-advertise-peer-urls", "unix://peer:1",
		"--initial-cluster", "test=unix://peer:1",
		"--logger", "zap", "--log-outputs", "stderr",
	}
	if e.opts.CertFile != "" {
		args = append(args, "--cert-file", e.opts.CertFile, "--key-file", e.opts.KeyFile)
		if e.opts.ClientCAFile != "" {
			args = append(args, "--client-cert-auth", "--trusted-ca-file", e.opts.ClientCAFile)
		}
	}
	// A killed etcd leaves its sockets behind, and etcd 3.4 does not bind
	// over them.
	for _, sock := range []string{"client:1", "peer:1"} {
		if err := os.Remove(filepath.Join(e.dir, sock)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			e.t.Fatal(err)
		}
	}
	cmd := exec.Command(e.bin, args...)
	cmd.Dir = e.dir
	// A pipe of our own rather than StderrPipe: Wait runs at once, while
	// the output is still read to its end.
	stderr, w, err := os.Pipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stderr = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		stderr.Close()
		e.t.Fatalf("start etcd: %v", err)
	}
	e.cmd, e.exit, e.log = cmd, make(chan struct{}), &tailBuffer{}
	ready := make(chan struct{})
	go func(exit chan struct{}) {
		// The output ends when the process exits; then it is waited for.
		e.log.follow(stderr, "serving client traffic", ready)
		stderr.Close()
		cmd.Wait()
		close(exit)
	}(e.exit)

	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-ready:
	case <-e.exit:
		e.t.Fatalf("etcd exited at its start:\n%s", e.log.String())
	case <-timer.C:
		e.t.Fatalf("etcd did not serve within %v:\n%s", startTimeout, e.log.String())
	}
	if err := e.answers(); err != nil {
		e.t.Fatalf("etcd says it serves but does not answer: %v\n%s", err, e.log.String())
	}
}

// answers reads a key, as a client would.
func (e *Etcd) answers() error {
	c, err := e.Client(e.opts.ClientTLS)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	_, err = c.Get(ctx, "etcdtest")
	return err
}

// Client is a client of the server, for tests that look at what is stored.
func (e *Etcd) Client(tlsConfig *tls.Config) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: startTimeout, TLS: tlsConfig, Logger: zap.NewNop()})
}

// Stop kills the server (SIGKILL, as a crash) and waits for it to exit.
// Its data stays for Start.
func (e *Etcd) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return
	}
	e.cmd.Process.Kill()
	<-e.exit
	e.cmd = nil
}

// Log is what the server printed last, for failing tests.
func (e *Etcd) Log() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.log == nil {
		return ""
	}
	return e.log.String()
}

// tailBuffer keeps the last lines of a process's output.
type tailBuffer struct {
	mu    sync.Mutex
	lines []string
}

const tailLines = 40

// follow reads r to its end, keeping the last lines, and closes ready at
// the first line that holds marker.
func (b *tailBuffer) follow(r io.Reader, marker string, ready chan struct{}) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	seen := false
	for sc.Scan() {
		line := sc.Text()
		b.mu.Lock()
		b.lines = append(b.lines, line)
		if len(b.lines) > tailLines {
			b.lines = b.lines[len(b.lines)-tailLines:]
		}
		b.mu.Unlock()
		if !seen && strings.Contains(line, marker) {
			seen = true
			close(ready)
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
		b.mu.Lock()
		b.lines = append(b.lines, fmt.Sprintf("(reading the output: %v)", err))
		b.mu.Unlock()
	}
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}
