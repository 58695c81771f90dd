package acme

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/internal/filelimit"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// exporter keeps the mail domain's certificate where Postfix and Dovecot
// read it (acmetool's /var/lib/acme/live/<d>/{fullchain,privkey}) and runs
// the reload commands after every change. Failures are logged, shown in
// Status and retried with backoff; they never stop the edge.
type exporter struct {
	certFile, keyFile string
	reload            [][]string
	retry             Backoff
	log               *zap.Logger

	want    atomic.Pointer[exportFiles]
	trigger chan struct{}

	mu        sync.Mutex
	lastErr   string
	lastErrAt time.Time
	next      time.Time
}

type exportFiles struct {
	cert       *tls.Certificate
	chain, key []byte
}

// reloadTimeout bounds one reload command; systemctl reload waits for the
// daemon to confirm.
const reloadTimeout = time.Minute

func newExporter(certFile, keyFile string, reload [][]string, retry Backoff, log *zap.Logger) *exporter {
	return &exporter{certFile: certFile, keyFile: keyFile, reload: reload, retry: retry, log: log, trigger: make(chan struct{}, 1)}
}

// set asks for c to be exported (no-op when the files already hold it).
func (e *exporter) set(c *tls.Certificate) {
	if c == nil {
		return
	}
	keyPEM, err := certmagic.PEMEncodePrivateKey(c.PrivateKey)
	if err != nil {
		e.log.Error("cannot encode the key for export", zap.Error(err))
		return
	}
	e.want.Store(&exportFiles{cert: c, chain: chainPEM(c), key: keyPEM})
	select {
	case e.trigger <- struct{}{}:
	default:
	}
}

func (e *exporter) status() (string, time.Time, time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastErr, e.lastErrAt, e.next
}

// run writes what set asked for and runs the reload commands, retrying the
// failed steps with backoff until ctx ends.
func (e *exporter) run(ctx context.Context) {
	var pending [][]string // reload commands still to run
	failures := 0
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.trigger:
		case <-timer.C:
		}
		var err error
		if f := e.want.Load(); f != nil && !e.current(f) {
			if err = e.write(f); err == nil {
				e.log.Info("exported the mail domain's certificate", zap.String("cert", e.certFile), zap.String("key", e.keyFile))
				pending, failures = e.reload, 0
			}
		}
		if err == nil && len(pending) > 0 {
			pending, err = e.runReloads(ctx, pending)
		}
		if ctx.Err() != nil {
			return
		}
		e.mu.Lock()
		if err == nil {
			failures, e.lastErr, e.next = 0, "", time.Time{}
			timer.Stop()
		} else {
			failures++
			wait := e.retry.Delay(failures)
			e.lastErr, e.lastErrAt, e.next = err.Error(), time.Now(), time.Now().Add(wait)
			e.log.Error("export failed; will retry", zap.Error(err), zap.Time("next_attempt", e.next))
			timer.Reset(wait)
		}
		e.mu.Unlock()
	}
}

// current tells whether the files already hold f's certificate and key
// (whatever their PEM flavour), as after a restart or a takeover from
// acmetool: then nothing is written and nothing reloaded.
func (e *exporter) current(f *exportFiles) bool {
	chainFile, err := filelimit.ReadFile(e.certFile, filelimit.PEM)
	if err != nil {
		return false
	}
	keyFile, err := filelimit.ReadFile(e.keyFile, filelimit.Small)
	if err != nil {
		return false
	}
	var ders [][]byte
	for rest := chainFile; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			ders = append(ders, block.Bytes)
		}
	}
	if !slices.EqualFunc(ders, f.cert.Certificate, bytes.Equal) {
		return false
	}
	key, err := certmagic.PEMDecodePrivateKey(keyFile)
	if err != nil {
		return false
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(f.cert.Leaf.PublicKey)
}

// write replaces the key, then the chain, each atomically; the daemons read
// them only when reloaded, after both are in place. The key is 0600: the
// daemons read it as root before dropping privileges.
func (e *exporter) write(f *exportFiles) error {
	for _, dir := range []string{filepath.Dir(e.keyFile), filepath.Dir(e.certFile)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("export: %w", err)
		}
	}
	if err := atomicfile.Write(e.keyFile, f.key, 0o600); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := atomicfile.Write(e.certFile, f.chain, 0o644); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

// runReloads runs the commands and returns those that failed.
func (e *exporter) runReloads(ctx context.Context, cmds [][]string) ([][]string, error) {
	var failed [][]string
	var errs []error
	for _, argv := range cmds {
		cctx, cancel := context.WithTimeout(ctx, reloadTimeout)
		out, err := exec.CommandContext(cctx, argv[0], argv[1:]...).CombinedOutput()
		cancel()
		if err != nil {
			failed = append(failed, argv)
			errs = append(errs, fmt.Errorf("reload command %q: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out)))
			continue
		}
		e.log.Info("ran reload command", zap.Strings("argv", argv))
	}
	return failed, errors.Join(errs...)
}
