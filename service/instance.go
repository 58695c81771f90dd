package service

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/ech"
	"chatmail-edge/edge"
	"chatmail-edge/store"
	"chatmail-edge/web"

	"go.uber.org/zap"
)

// instanceConfig is what demo and serve have in common once their own
// settings are resolved.
type instanceConfig struct {
	Domain     string
	PublicName string // ECH public_name; "" is Domain
	StateDir   string
	Edge       edge.Config
	HTTPAddr   string // plain HTTP listener; "" for none
	HTTPSPort  int    // the public HTTPS port, for redirects and URLs
	GetCert    func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// WrapHTTP wraps the plain HTTP handler (:80), to answer ACME HTTP-01
	// challenges; nil leaves the redirect alone.
	WrapHTTP func(http.Handler) http.Handler
	// Backends builds the mail backends.
	Backends   func() (edge.Backends, error)
	NewAccount func() (string, string, error)

	// Web configures the HTTP side (see web_wiring.go); startInstance fills
	// in its Domain, HTTPSPort, Version and SelfMode.
	Web          web.Config
	AdminAddr    string            // loopback listener of the detailed status page and /metrics; "" for none
	MetadataFile string            // the ECH config list for chatmail's IMAP METADATA; "" for none
	HTTPLimits   web.ServerConfig  // timeouts of every HTTP server
	Certs        acme.StatusSource // certificates, for the status page and metrics
	// Listen opens the listener name on addr, for every listener (serve's
	// come from handoff.go's sockets); nil listens anew.
	Listen func(name, addr string) (*net.TCPListener, error)
	// Shared is the store several nodes share ([store], store.go): the ECH
	// keys are there; nil keeps them in StateDir.
	Shared *store.Cached
}

// listenTCP is instanceConfig.Listen when none is given.
func listenTCP(name, addr string) (*net.TCPListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s on %s: %w", name, addr, err)
	}
	return ln.(*net.TCPListener), nil
}

// instance is a running edge with its web servers.
type instance struct {
	cfg     instanceConfig
	log     *zap.Logger
	edge    *edge.Edge
	webNow  atomic.Pointer[webServing] // see useWeb
	started time.Time
	https   *http.Server
	http    *http.Server
	httpLn  net.Listener
	admin   *http.Server
	adminLn net.Listener
	given   []net.Listener // the edge's listeners from cfg.Listen
	recent  *web.RecentLog
	echKeys atomic.Pointer[ech.KeySet]
	stop    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup

	metadata *metadataPublisher // nil without a METADATA file
	echMu    sync.Mutex         // serialises changes of the ECH keys
}

// echKeyCheckInterval is how often the ECH folder (or the shared store,
// besides its watch) is re-read, so that `chatmail-edge ech rotate` takes
// effect without a restart.
const echKeyCheckInterval = 30 * time.Second

func startInstance(cfg instanceConfig, log *zap.Logger) (*instance, error) {
	if cfg.PublicName == "" {
		cfg.PublicName = cfg.Domain
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state folder: %w", err)
	}
	log, recent := teeRecentLog(log)
	in := &instance{cfg: cfg, log: log, recent: recent, stop: make(chan struct{}), started: time.Now()}
	if cfg.MetadataFile != "" {
		in.metadata = newMetadataPublisher(cfg.MetadataFile, log)
	}

	names := []string{cfg.Domain, "www." + cfg.Domain, "mta-sts." + cfg.Domain, "autoconfig." + cfg.Domain, cfg.PublicName}
	keys, err := cfg.ensureECHKeys(names, log)
	if err != nil {
		return nil, err
	}

	cfg.Edge.TicketKeyFile = filepath.Join(cfg.StateDir, "tls-ticket-keys")
	if cfg.Listen != nil {
		for i, lc := range cfg.Edge.Listeners {
			ln, err := cfg.Listen(lc.Name, lc.Address)
			if err != nil {
				in.closeListeners()
				return nil, err
			}
			cfg.Edge.Listeners[i].Listener = ln
			in.given = append(in.given, ln)
		}
	}
	listen := cfg.Listen
	if listen == nil {
		listen = listenTCP
	}
	e, err := edge.New(cfg.Edge, log.Named("edge"), cfg.GetCert)
	if err != nil {
		in.closeListeners()
		return nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
	}
	in.edge = e
	in.setECHKeys(keys)
	backends, err := cfg.Backends()
	if err != nil {
		in.closeListeners()
		return nil, fmt.Errorf("%w: mail backends: %v", config.ErrConfig, err)
	}
	e.SetBackends(backends)

	if cfg.HTTPAddr != "" {
		if in.httpLn, err = listen("http", cfg.HTTPAddr); err != nil {
			in.closeListeners()
			return nil, err
		}
	}
	if cfg.AdminAddr != "" {
		if in.adminLn, err = listenAdmin(cfg.AdminAddr, listen); err != nil {
			in.closeListeners()
			return nil, err
		}
	}
	if err := e.Start(); err != nil {
		in.closeListeners()
		return nil, err
	}
	if cfg.HTTPSPort == 0 { // port 0 in tests: use what the listener got
		cfg.HTTPSPort = e.Addr("https").(*net.TCPAddr).Port
		in.cfg.HTTPSPort = cfg.HTTPSPort
	}
	if err := in.startWeb(backends); err != nil {
		e.Shutdown()
		in.closeListeners()
		return nil, err
	}
	in.wg.Go(in.watchECHKeys)
	if in.metadata != nil {
		in.wg.Go(func() { in.metadata.retryUntil(in.stop) })
	}
	return in, nil
}

// closeListeners closes what a failed start opened (the edge's own
// listeners included: closing twice is harmless).
func (in *instance) closeListeners() {
	for _, ln := range append([]net.Listener{in.httpLn, in.adminLn}, in.given...) {
		if ln != nil {
			ln.Close()
		}
	}
}

func (in *instance) serve(srv *http.Server, ln net.Listener) {
	in.wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			in.log.Error("web server stopped", zap.Error(err))
		}
	})
}

func (in *instance) setECHKeys(set *ech.KeySet) {
	in.echKeys.Store(set)
	cur := set.Current()
	in.edge.SetECHKeys(set.TLSKeys(), cur.Parsed().ConfigID)
	in.publishECHConfig(set)
}

// watchECHKeys re-reads the ECH folder. A folder that became unreadable or
// holds a bad file is logged and the keys in use are kept: clients depend on
// them.
func (in *instance) watchECHKeys() {
	t := time.NewTicker(echKeyCheckInterval)
	defer t.Stop()
	changes := in.echChanges() // the shared store's changes; nil without one
	failing := false
	for {
		select {
		case <-in.stop:
			return
		case <-t.C:
		case <-changes:
		}
		failing = in.reloadECHKeys(failing)
	}
}

// reloadECHKeys serves the keys as they are now; an error is logged when
// it starts, not at every check while it lasts.
func (in *instance) reloadECHKeys(failing bool) bool {
	set, err := in.loadECHKeys()
	if err != nil {
		if !failing {
			in.log.Error("ECH keys unreadable, keeping the keys in use", zap.Error(err))
		}
		return true
	}
	if failing {
		in.log.Info("ECH keys readable again")
	}
	in.useECHKeys(set)
	return false
}

// loadECHKeys reads the ECH folder or the shared store, which must hold a
// current key.
func (in *instance) loadECHKeys() (*ech.KeySet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), echLoadWait)
	defer cancel()
	place := in.cfg.echPlace()
	set, err := ech.LoadFrom(ctx, place)
	if err == nil && set.Current() == nil {
		err = errors.New("no keys left")
	}
	if err != nil {
		return nil, fmt.Errorf("ECH keys in %s: %w", place, err)
	}
	return set, nil
}

// useECHKeys serves set if it differs from the keys in use. The watch and
// a reload both call it, one at a time.
func (in *instance) useECHKeys(set *ech.KeySet) {
	in.echMu.Lock()
	defer in.echMu.Unlock()
	if sameKeys(set, in.echKeys.Load()) {
		return
	}
	in.setECHKeys(set)
	in.log.Info("ECH keys changed", zap.Uint8("current_config_id", set.Current().Parsed().ConfigID), zap.Int("keys", len(set.Keys)))
}

func sameKeys(a, b *ech.KeySet) bool {
	if len(a.Keys) != len(b.Keys) {
		return false
	}
	for i := range a.Keys {
		if !bytes.Equal(a.Keys[i].Config, b.Keys[i].Config) {
			return false
		}
	}
	return true
}

// httpGrace is the least time HTTP requests in flight get at a shutdown.
const httpGrace = 5 * time.Second

// shutdown stops accepting, closes the edge's connections and gives HTTP
// requests in flight a few seconds.
func (in *instance) shutdown() { in.drain(0, drainStop) }

// drainKind says how a drain ends the sessions.
type drainKind uint8

const (
	// drainStop is a stop or a restart: each session gets its goodbye at
	// once where that cuts nothing, mail transactions in progress finish.
	drainStop drainKind = iota
	// drainUpgrade is the old process after an upgrade: sessions go on
	// untouched for the first half of the time (clients in IDLE get their
	// mail through it), then the goodbyes are spread over the second half,
	// so that their reconnects to the new process do not come at once.
	drainUpgrade
)

// drain stops accepting on every listener at once, ends the edge's
// sessions within timeout as kind says (edge.Drain), lets HTTP requests
// finish (for at least httpGrace), then closes what remains.
func (in *instance) drain(timeout time.Duration, kind drainKind) {
	in.stopped.Do(func() {
		close(in.stop)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		httpCtx, cancelHTTP := context.WithTimeout(context.Background(), max(timeout, httpGrace))
		defer cancelHTTP()
		var wg sync.WaitGroup
		wg.Go(func() {
			if kind == drainUpgrade {
				in.edge.Drain(ctx, timeout/2, true)
			} else {
				in.edge.Drain(ctx, 0, false)
			}
			in.edge.Shutdown()
		})
		for _, srv := range []*http.Server{in.https, in.http, in.admin} {
			if srv != nil {
				wg.Go(func() {
					if srv.Shutdown(httpCtx) != nil {
						srv.Close()
					}
				})
			}
		}
		wg.Wait()
		in.wg.Wait()
	})
}
