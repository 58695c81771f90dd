package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"chatmail-edge/acme"
)

// labOptions are the flags of lab, figure and all.
type labOptions struct {
	Dir        string // "" makes a temporary folder, removed at the end
	Keep       bool   // keep the folder (configs and logs) after the end
	EdgeBin    string // a built chatmail-edge; "" builds the repository's
	ServerCPUs string // taskset CPU list for every server; "" leaves them unpinned
	NoInstall  bool
}

func addLabFlags(fs *flag.FlagSet) *labOptions {
	o := &labOptions{}
	fs.StringVar(&o.Dir, "dir", "", "folder for configs, certificates and logs (default: a new temporary folder)")
	fs.BoolVar(&o.Keep, "keep", false, "keep the folder at the end (default: remove it unless -dir was given)")
	fs.StringVar(&o.EdgeBin, "edge-bin", "", "chatmail-edge binary to measure (default: go build the repository this runs in)")
	fs.StringVar(&o.ServerCPUs, "server-cpus", "", "pin nginx, Dovecot, the edge and the backend to these CPUs with taskset (e.g. 0); default: unpinned, sharing all CPUs with the load")
	fs.BoolVar(&o.NoInstall, "no-install", false, "do not apt-get install missing nginx, libnginx-mod-stream, dovecot-imapd")
	return o
}

// lab is everything the figures need, running side by side: Dovecot, the
// bench backend, nginx as chatmail runs it today, nginx terminating TLS,
// and two edges (one in front of Dovecot, one in front of the backend).
type lab struct {
	opts                      labOptions
	dir                       string
	removeDir                 bool
	certFile, keyFile, caFile string
	fileLimit                 uint64
	ports                     labPorts
	edgeBin                   string

	dovecot, backend, nginxToday, nginxTerm, edgeIMAP, edgeEcho *daemon
	started                                                     []*daemon
	echIMAP, echEcho                                            []byte
	log                                                         io.Writer
}

// startLab starts everything; on error whatever was started is stopped
// again.
func startLab(ctx context.Context, opts labOptions, log io.Writer) (l *lab, err error) {
	l = &lab{opts: opts, log: log}
	defer func() {
		if err != nil {
			l.close()
			l = nil
		}
	}()
	if l.fileLimit, err = raiseFileLimit(); err != nil {
		return l, err
	}
	if !opts.NoInstall {
		if err := ensurePackages(ctx, log); err != nil {
			return l, err
		}
	}
	if err := l.makeDir(); err != nil {
		return l, err
	}
	if err := l.makeCertificate(); err != nil {
		return l, err
	}
	if l.ports, err = pickPorts(); err != nil {
		return l, err
	}
	if l.edgeBin, err = l.buildEdge(ctx); err != nil {
		return l, err
	}
	if err := l.writeConfigs(); err != nil {
		return l, err
	}
	for _, d := range []*daemon{l.dovecot, l.backend, l.nginxToday, l.nginxTerm, l.edgeIMAP, l.edgeEcho} {
		fmt.Fprintf(log, "starting %s\n", d.Name)
		l.started = append(l.started, d)
		if err := d.start(ctx); err != nil {
			return l, err
		}
	}
	if l.echIMAP, err = l.echConfig(ctx, "edge-imap"); err != nil {
		return l, err
	}
	if l.echEcho, err = l.echConfig(ctx, "edge-echo"); err != nil {
		return l, err
	}
	return l, nil
}

// close stops every process the lab started and removes its folder unless
// asked to keep it.
func (l *lab) close() error {
	err := stopAll(l.started)
	if l.removeDir && !l.opts.Keep {
		err = errors.Join(err, os.RemoveAll(l.dir))
	} else if l.dir != "" {
		fmt.Fprintf(l.log, "lab folder kept: %s\n", l.dir)
	}
	return err
}

// closeKeepingOnError is close for a defer; after a failure (*err set) it
// keeps the folder: the logs tell what went wrong.
func (l *lab) closeKeepingOnError(err *error) {
	if *err != nil {
		l.opts.Keep = true
	}
	l.close()
}

func (l *lab) makeDir() error {
	l.dir = l.opts.Dir
	if l.dir == "" {
		d, err := os.MkdirTemp("", "chatmail-edge-bench-")
		if err != nil {
			return fmt.Errorf("create lab folder: %w", err)
		}
		l.dir, l.removeDir = d, true
	} else if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return fmt.Errorf("create lab folder: %w", err)
	}
	var err error
	if l.dir, err = filepath.Abs(l.dir); err != nil {
		return err
	}
	// Dovecot's unprivileged helpers reach their sockets below it.
	return os.Chmod(l.dir, 0o755)
}

// makeCertificate issues one ECDSA P-256 certificate for every server,
// as chatmail's acmetool and self-signed modes make.
func (l *lab) makeCertificate() error {
	now := time.Now()
	caDir := filepath.Join(l.dir, "ca")
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		return fmt.Errorf("create the lab CA folder: %w", err)
	}
	ca, err := acme.LoadOrCreateLocalCA(caDir, now)
	if err != nil {
		return fmt.Errorf("create the lab CA: %w", err)
	}
	leaf, err := ca.Leaf(caDir, []string{benchDomain}, now)
	if err != nil {
		return fmt.Errorf("issue the lab certificate: %w", err)
	}
	var chain bytes.Buffer
	for _, der := range leaf.Certificate {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		return fmt.Errorf("encode the lab key: %w", err)
	}
	l.certFile, l.keyFile, l.caFile = filepath.Join(l.dir, "cert.pem"), filepath.Join(l.dir, "key.pem"), ca.CertFile
	if err := os.WriteFile(l.certFile, chain.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	if err := os.WriteFile(l.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	return nil
}

// pickPorts finds free loopback ports (all held at once, so they differ).
func pickPorts() (labPorts, error) {
	var p labPorts
	fields := []*int{&p.DovecotTLS, &p.DovecotProxy, &p.BackendProxy, &p.Today, &p.Web, &p.Unrouted, &p.TermIMAP, &p.TermEcho, &p.EdgeIMAP, &p.EdgeIMAPS, &p.EdgeEcho}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, f := range fields {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return p, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		*f = ln.Addr().(*net.TCPAddr).Port
	}
	return p, nil
}

// buildEdge builds the repository's chatmail-edge into the lab folder,
// unless a binary was given.
func (l *lab) buildEdge(ctx context.Context) (string, error) {
	if l.opts.EdgeBin != "" {
		return filepath.Abs(l.opts.EdgeBin)
	}
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the repository (go env GOMOD): %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if b, err := os.ReadFile(gomod); err != nil || !bytes.Contains(b, []byte("module chatmail-edge\n")) {
		return "", fmt.Errorf("run from the chatmail-edge repository, or give -edge-bin (go.mod here: %q)", gomod)
	}
	bin := filepath.Join(l.dir, "chatmail-edge")
	fmt.Fprintf(l.log, "building %s\n", bin)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build chatmail-edge: %w\n%s", err, out)
	}
	return bin, nil
}

func (l *lab) path(name string) string { return filepath.Join(l.dir, name) }

func (l *lab) writeConfigs() error {
	p := l.ports
	ticketKey := make([]byte, 80) // nginx: 80 bytes for AES-256 tickets
	rand.Read(ticketKey)
	chatmailINI := "[params]\nmail_domain = " + benchDomain + "\n"
	nofile := min(l.fileLimit, 65536)
	files := map[string]string{
		"dovecot.conf":           dovecotConf(l.dir, l.certFile, l.keyFile, p),
		"nginx-today.conf":       l.todayConf(nofile),
		"www/index.html":         "<!doctype html><title>" + benchDomain + "</title><p>chatmail-edge bench\n",
		"nginx-termination.conf": nginxConf(l.dir, "termination", nofile, terminationStream(l.certFile, l.keyFile, l.path("nginx-ticket.key"), p)),
		"chatmail.ini":           chatmailINI,
		"edge-imap.ini":          edgeConf(l.edgeFile("edge-imap-state", p.EdgeIMAP, p.DovecotProxy)),
		"edge-echo.ini":          edgeConf(l.edgeFile("edge-echo-state", p.EdgeEcho, p.BackendProxy)),
	}
	if err := os.WriteFile(l.path("nginx-ticket.key"), ticketKey, 0o600); err != nil {
		return fmt.Errorf("write nginx ticket key: %w", err)
	}
	if err := os.MkdirAll(l.path("www"), 0o755); err != nil {
		return fmt.Errorf("create the web root: %w", err)
	}
	for name, text := range files {
		if err := os.WriteFile(l.path(name), []byte(text), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the bench binary for the backend: %w", err)
	}
	addr := func(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
	cpus := l.opts.ServerCPUs
	l.dovecot = &daemon{Name: "dovecot", CPUs: cpus, LogFile: l.path("dovecot.stderr"),
		Argv:  []string{"dovecot", "-F", "-c", l.path("dovecot.conf")},
		Ports: []string{addr(p.DovecotTLS), addr(p.DovecotProxy)}}
	l.backend = &daemon{Name: "bench backend", CPUs: cpus, LogFile: l.path("backend.log"),
		Argv:  []string{self, "backend", "-listen-proxy", addr(p.BackendProxy)},
		Ports: []string{addr(p.BackendProxy)}}
	l.nginxToday = &daemon{Name: "nginx (chatmail today)", CPUs: cpus, LogFile: l.path("nginx-today.stderr"),
		Argv:  []string{"nginx", "-e", l.path("nginx-today.log"), "-c", l.path("nginx-today.conf")},
		Ports: []string{addr(p.Today), addr(p.Web)}}
	l.nginxTerm = &daemon{Name: "nginx (termination)", CPUs: cpus, LogFile: l.path("nginx-termination.stderr"),
		Argv:  []string{"nginx", "-e", l.path("nginx-termination.log"), "-c", l.path("nginx-termination.conf")},
		Ports: []string{addr(p.TermIMAP), addr(p.TermEcho)}}
	l.edgeIMAP = &daemon{Name: "edge (to Dovecot)", CPUs: cpus, LogFile: l.path("edge-imap.log"),
		Argv:  []string{l.edgeBin, "serve", "--config", l.path("edge-imap.ini")},
		Ports: []string{addr(p.EdgeIMAP)}}
	l.edgeEcho = &daemon{Name: "edge (to the backend)", CPUs: cpus, LogFile: l.path("edge-echo.log"),
		Argv:  []string{l.edgeBin, "serve", "--config", l.path("edge-echo.ini")},
		Ports: []string{addr(p.EdgeEcho)}}
	return nil
}

// edgeFile is the configuration of an edge of the lab.
func (l *lab) edgeFile(state string, port, backend int) edgeFile {
	return edgeFile{ChatmailINI: l.path("chatmail.ini"), StateDir: l.path(state), CertFile: l.certFile, KeyFile: l.keyFile, Port: port, Backend: backend}
}

// todayConf is nginx as chatmail runs it: the stream block on 443 and the
// HTTPS site behind it, with nofile as worker_connections and
// worker_rlimit_nofile.
func (l *lab) todayConf(nofile uint64) string {
	return nginxConf(l.dir, "today", nofile, todayStream(l.ports)+todayWeb(l.dir, l.certFile, l.keyFile, l.ports))
}

// echConfig asks the edge for its ECHConfigList (created at its first start).
func (l *lab) echConfig(ctx context.Context, name string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, l.edgeBin, "ech", "show", "--state", l.path(name+"-state")).Output()
	if err != nil {
		return nil, fmt.Errorf("read the ECH config of %s: %w", name, err)
	}
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(out)))
	if err != nil {
		return nil, fmt.Errorf("ECH config of %s: %w", name, err)
	}
	return b, nil
}

// maxProxiedConns is how many proxied connections one front-end process
// can hold: two descriptors each (client and backend), within the open-file
// limit (20,000 in some containers, which cannot raise it).
func (l *lab) maxProxiedConns() int {
	return int(l.fileLimit-200) / 2 / 100 * 100
}
