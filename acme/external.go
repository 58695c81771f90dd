package acme

import (
	"bytes"
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"chatmail-edge/internal/filelimit"

	"go.uber.org/zap"
)

// Watched serves a certificate from files another program renews
// (chatmail's external mode, tls_external_cert_and_key) and swaps it for
// new handshakes when the files change. It polls: the files are small, and
// polling needs no inotify, which does not cross bind mounts either.
type Watched struct {
	*Static
	certFile, keyFile string
	interval          time.Duration
	log               *zap.Logger

	mu        sync.Mutex
	seen      [32]byte // hash of the contents last looked at
	lastErr   string
	lastErrAt time.Time

	changed chan struct{} // signalled after each swap (tests wait on it)
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// WatchFiles loads the pair; Start begins watching it.
func WatchFiles(certFile, keyFile string, interval time.Duration, log *zap.Logger) (*Watched, error) {
	pair, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	w := &Watched{
		Static: NewStatic(pair, ModeExternal), certFile: certFile, keyFile: keyFile,
		interval: interval, log: log, changed: make(chan struct{}, 1),
	}
	w.seen, _ = w.hash()
	return w, nil
}

// Start polls the files every interval until Stop.
func (w *Watched) Start(context.Context, Listeners) error {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.wg.Go(func() {
		t := time.NewTicker(w.interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				w.Check()
			}
		}
	})
	return nil
}

// Recheck reads the files now.
func (w *Watched) Recheck() { w.Check() }

func (w *Watched) Stop() {
	if w.cancel != nil {
		w.cancel()
	}
	w.wg.Wait()
}

// Changed is signalled after the served certificate was swapped.
func (w *Watched) Changed() <-chan struct{} { return w.changed }

// Check reloads the files if their contents changed. A pair that does not
// load (say, the certificate is already replaced but the key not yet) is
// logged once and the current certificate stays; the next change is tried
// again.
func (w *Watched) Check() {
	sum, err := w.hash()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil && sum == w.seen {
		return
	}
	if err == nil {
		w.seen = sum
		pair, lerr := loadKeyPair(w.certFile, w.keyFile)
		if err = lerr; err == nil {
			if !bytes.Equal(pair.Certificate[0], w.Certificate().Certificate[0]) {
				w.Set(pair)
				w.log.Info("external certificate changed", zap.String("cert", w.certFile),
					zap.Strings("names", pair.Leaf.DNSNames), zap.Time("not_after", pair.Leaf.NotAfter))
				select {
				case w.changed <- struct{}{}:
				default:
				}
			}
			w.lastErr = ""
			return
		}
	}
	if w.lastErr != err.Error() {
		w.log.Warn("external certificate unusable; keeping the current one", zap.Error(err))
	}
	w.lastErr, w.lastErrAt = err.Error(), time.Now()
}

func (w *Watched) hash() ([32]byte, error) {
	certPEM, err := filelimit.ReadFile(w.certFile, filelimit.PEM)
	if err != nil {
		return [32]byte{}, err
	}
	keyPEM, err := filelimit.ReadFile(w.keyFile, filelimit.Small)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(append(append(certPEM, 0), keyPEM...)), nil
}

// Status adds the last failure to reload the files.
func (w *Watched) Status() []CertStatus {
	st := w.Static.Status()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(st) == 1 && w.lastErr != "" {
		st[0].LastError, st[0].LastErrorAt = w.lastErr, w.lastErrAt
	}
	return st
}
