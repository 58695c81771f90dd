package service

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/ech"
	"chatmail-edge/edge"
	"chatmail-edge/internal/buildinfo"
	"chatmail-edge/mail"
	"chatmail-edge/metadata"
	"chatmail-edge/web"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// recentLogSize is how many warnings and errors the admin page shows.
const recentLogSize = 50

// teeRecentLog makes log also record its warnings and errors for the admin
// status page. The copy is sampled as newLogger samples the console (per
// message and second: the first 100, then every 100th), so an error flood
// costs little.
func teeRecentLog(log *zap.Logger) (*zap.Logger, *web.RecentLog) {
	recent := web.NewRecentLog(recentLogSize)
	return log.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewTee(c, zapcore.NewSamplerWithOptions(recent.Core(), time.Second, 100, 100))
	})), recent
}

// webServing is one build of the web server with its handlers. A reload
// builds a new one and swaps it in whole; requests already running finish
// on the old one.
type webServing struct {
	srv                    *web.Server
	https, redirect, admin http.Handler
	retired                chan struct{} // closed when replaced: ends its health checks
}

// buildWeb checks wc and builds the web server for it, without serving it.
// The demo's autoconfig lists the edge's own ports, as bound.
func (in *instance) buildWeb(wc web.Config, backends edge.Backends) (*webServing, error) {
	wc.Domain, wc.HTTPSPort, wc.Version = in.cfg.Domain, in.cfg.HTTPSPort, buildinfo.Read().Version
	wc.SelfMode = selfSignedMode(in.cfg.Domain)
	if wc.Autoconfig.Custom {
		wc.Autoconfig.IMAPS, wc.Autoconfig.SMTPS, wc.Autoconfig.HTTPS = in.boundPort("imaps"), in.boundPort("smtps"), in.boundPort("https")
	}
	// ECH works on the edge's listeners only, not on Dovecot's or Postfix's ports.
	wc.Autoconfig.ECH = nil
	for _, name := range []string{"https", "imaps", "smtps"} {
		if port := in.boundPort(name); port != 0 {
			wc.Autoconfig.ECH = append(wc.Autoconfig.ECH, port)
		}
	}
	srv, err := web.New(wc, web.Deps{
		Log:           in.log.Named("web"),
		ECHConfigList: func() []byte { return in.echKeys.Load().ConfigList() },
		ECHKey:        in.echKeyInfo,
		NewAccount:    in.cfg.NewAccount,
		Certs:         in.cfg.Certs,
		EdgeStats:     func() web.EdgeStats { return edgeStats(in.edge.Snapshot()) },
		Probes:        backendProbes(backends),
		Recent:        in.recent,
		Started:       in.started,
		Store:         in.storeHealth(),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
	}
	ws := &webServing{srv: srv, https: srv.Handler(), redirect: srv.RedirectHandler(), admin: srv.AdminHandler(), retired: make(chan struct{})}
	if in.cfg.WrapHTTP != nil {
		ws.redirect = in.cfg.WrapHTTP(ws.redirect) // ACME HTTP-01 answers
	}
	return ws, nil
}

// useWeb serves ws from now on and starts its health checks; the one it
// replaces stops checking.
func (in *instance) useWeb(ws *webServing) {
	old := in.webNow.Swap(ws)
	in.wg.Go(func() {
		stop := make(chan struct{})
		in.wg.Go(func() {
			select {
			case <-in.stop:
			case <-ws.retired:
			}
			close(stop)
		})
		ws.srv.WatchHealth(stop)
	})
	if old != nil {
		close(old.retired)
	}
}

// currentWeb is the web server in use.
func (in *instance) currentWeb() *web.Server { return in.webNow.Load().srv }

// startWeb builds the web server and serves it on the edge's HTTP handoff,
// the plain HTTP listener and the admin listener, and starts the health
// checks. The servers always use the current build (see useWeb).
func (in *instance) startWeb(backends edge.Backends) error {
	ws, err := in.buildWeb(in.cfg.Web, backends)
	if err != nil {
		return err
	}
	in.useWeb(ws)
	current := func(h func(*webServing) http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h(in.webNow.Load()).ServeHTTP(w, r) })
	}
	https := in.cfg.HTTPLimits
	https.ConnID = in.edge.HTTPConnID // the edge's connection id in the requests' log lines
	in.https = web.NewHTTPServer(current(func(ws *webServing) http.Handler { return ws.https }), in.log, in.edge.HTTPConnState, https)
	in.serve(in.https, in.edge.HTTPListener())
	if in.httpLn != nil {
		in.http = web.NewHTTPServer(current(func(ws *webServing) http.Handler { return ws.redirect }), in.log, nil, in.cfg.HTTPLimits)
		in.serve(in.http, in.httpLn)
	}
	if in.adminLn != nil {
		in.admin = web.NewHTTPServer(current(func(ws *webServing) http.Handler { return ws.admin }), in.log, nil, in.cfg.HTTPLimits)
		in.serve(in.admin, in.adminLn)
	}
	return nil
}

// boundPort is the port of the edge's named listener, 0 if it has none.
func (in *instance) boundPort(name string) int {
	if a, ok := in.edge.Addr(name).(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// selfSignedMode is chatmail's `self` TLS mode (chatmaild config.py): a
// mail_domain starting with "_" or an IP address.
func selfSignedMode(domain string) bool {
	return strings.HasPrefix(domain, "_") || net.ParseIP(domain) != nil
}

func (in *instance) echKeyInfo() web.ECHKeyInfo {
	set := in.echKeys.Load()
	cur := set.Current()
	if cur == nil {
		return web.ECHKeyInfo{}
	}
	p := cur.Parsed()
	info := web.ECHKeyInfo{ConfigID: p.ConfigID, PublicName: p.PublicName, Created: cur.Created, Keys: len(set.Keys)}
	if in.metadata != nil {
		info.Metadata = in.metadata.State()
	}
	return info
}

// edgeStats hands the edge's counters to web, which does not import edge.
// The conversion compiles only while both structs have the same fields.
func edgeStats(s edge.Snapshot) web.EdgeStats {
	out := web.EdgeStats{
		ActiveSessions: s.ActiveSessions, Pending: s.Pending,
		WaitingForHello: s.WaitingForHello, HandshakeQueue: s.HandshakeQueue, SourceRefusals: s.SourceRefusals,
	}
	for _, l := range s.Listeners {
		out.Listeners = append(out.Listeners, web.ListenerStats(l))
	}
	return out
}

// probedBackend is a backend the health checks can probe: *mail.Backend,
// and a node's relayBackend.
type probedBackend interface {
	Config() mail.BackendConfig
	Probe(context.Context) (mail.ProbeResult, error)
}

// backendProbes check Dovecot and Postfix (or the demo's local delivery,
// or a node's relay) with the real protocol: greeting plus CAPABILITY or
// EHLO.
func backendProbes(b edge.Backends) []web.Probe {
	var probes []web.Probe
	for _, svc := range []struct {
		name    string
		backend edge.Backend
	}{{"IMAP", b.IMAP}, {"SMTP", b.SMTP}} {
		mb, ok := svc.backend.(probedBackend)
		if !ok {
			continue
		}
		c := mb.Config()
		probes = append(probes, web.Probe{
			Name: svc.name, Target: fmt.Sprintf("%s (%s)", c.Address, c.Mode),
			Run: func(ctx context.Context) error { _, err := mb.Probe(ctx); return err },
		})
	}
	return probes
}

// publishECHConfig has the ECH config list written, base64 on one line, for
// IMAP METADATA (docs/METADATA.md): the metadata proxy answers
// metadata.ECHEntry from it. The first attempt is made at once; if it
// fails, the publisher retries until it succeeds (retryUntil).
func (in *instance) publishECHConfig(set *ech.KeySet) {
	if in.metadata != nil {
		in.metadata.publish(set.ConfigList(), set.Current().Parsed().ConfigID)
	}
}

// Retries of a failed write of the METADATA file: the first after
// metadataRetryMin, doubling up to metadataRetryMax.
const (
	metadataRetryMin = time.Second
	metadataRetryMax = 5 * time.Minute
)

// metadataPublisher keeps the METADATA file equal to the published config
// list. A failure (a full disk, a folder that is not there yet) is logged
// once per episode and retried with backoff, so that the file follows
// without a restart once the cause is gone; the admin page and
// chatmail_edge_ech_metadata_file_current say whether it is current.
type metadataPublisher struct {
	path  string
	log   *zap.Logger
	retry chan struct{} // capacity 1: a failed write waits for its retry

	mu       sync.Mutex // serialises writes of the file
	want     []byte     // the config list the file should hold
	configID uint8
	state    web.MetadataFileState
}

func newMetadataPublisher(path string, log *zap.Logger) *metadataPublisher {
	return &metadataPublisher{path: path, log: log, retry: make(chan struct{}, 1), state: web.MetadataFileState{Path: path}}
}

// publish makes line the file's content, with one attempt now.
func (p *metadataPublisher) publish(list []byte, configID uint8) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.want, p.configID = list, configID
	p.attemptLocked(time.Now())
}

// attemptLocked writes the wanted line unless the file holds it, and
// records the outcome. It rewrites atomically, only on a change, so a reader
// never sees half a line.
func (p *metadataPublisher) attemptLocked(now time.Time) {
	err := p.write()
	if err == nil {
		if p.state.FailedAttempts > 0 {
			p.log.Info("published the ECH config list for IMAP METADATA after failed attempts", zap.String("file", p.path),
				zap.Int("failed_attempts", p.state.FailedAttempts), zap.Duration("failing_for", now.Sub(p.state.FailingSince).Round(time.Second)))
		}
		p.state = web.MetadataFileState{Path: p.path, Current: true}
		return
	}
	if p.state.FailedAttempts == 0 {
		p.log.Error("cannot publish the ECH config list for IMAP METADATA; retrying until it works", zap.String("file", p.path), zap.Error(err))
		p.state.FailingSince = now
	}
	p.state.FailedAttempts++
	p.state.Current, p.state.Error = false, err.Error()
	p.state.NextAttempt = now.Add(p.retryDelay())
	select {
	case p.retry <- struct{}{}:
	default: // a retry is pending already
	}
}

// write puts the wanted line into the file.
func (p *metadataPublisher) write() error {
	changed, err := metadata.PublishECHConfigList(p.path, p.want)
	if changed {
		p.log.Info("published the ECH config list for IMAP METADATA", zap.String("file", p.path), zap.Uint8("config_id", p.configID))
	}
	return err
}

// retryDelay is the wait before the next attempt after the failed ones.
func (p *metadataPublisher) retryDelay() time.Duration {
	d := metadataRetryMin
	for i := 1; i < p.state.FailedAttempts && d < metadataRetryMax; i++ {
		d *= 2
	}
	return min(d, metadataRetryMax)
}

// retryUntil runs the retries of failed writes until stop is closed.
func (p *metadataPublisher) retryUntil(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-p.retry:
		}
		p.mu.Lock()
		next := p.state.NextAttempt
		p.mu.Unlock()
		timer := time.NewTimer(time.Until(next))
		select {
		case <-stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		p.mu.Lock()
		if !p.state.Current {
			p.attemptLocked(time.Now())
		}
		p.mu.Unlock()
	}
}

// State is what the admin page and the metrics show.
func (p *metadataPublisher) State() web.MetadataFileState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// httpLimits are the web servers' timeouts.
func httpLimitsFrom(s *config.Settings) web.ServerConfig {
	return web.ServerConfig{HeaderTimeout: s.HeaderTimeout, SendTimeout: s.SendTimeout}
}

func webConfigFrom(s *config.Settings) web.Config {
	return web.Config{
		SiteDir:             s.SiteDir,
		NewAccountCGI:       s.NewAccountCGI,
		MXDeliv:             s.MXDelivUpstream,
		IrohRelay:           s.IrohRelayUpstream,
		MaxMessageSize:      s.MaxMessageSize,
		UpstreamDialTimeout: s.BackendTimeout,
		UpstreamTimeout:     s.UpstreamTimeout,
		MTASTS:              web.MTASTSConfig{Mode: s.MTASTSMode, MaxAge: int64(s.MTASTSMaxAge)},
		ProbeInterval:       s.ProbeInterval,
		AccessLog:           s.AccessLog,
	}
}
