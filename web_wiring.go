package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"chatmail-edge/edge"
	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/internal/filelimit"
	"chatmail-edge/mail"
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
	wc.Domain, wc.HTTPSPort, wc.Version = in.cfg.Domain, in.cfg.HTTPSPort, version()
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
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errConfig, err)
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
	in.https = web.NewHTTPServer(current(func(ws *webServing) http.Handler { return ws.https }), in.log, in.edge.HTTPConnState)
	in.serve(in.https, in.edge.HTTPListener())
	if in.httpLn != nil {
		in.http = web.NewHTTPServer(current(func(ws *webServing) http.Handler { return ws.redirect }), in.log, nil)
		in.serve(in.http, in.httpLn)
	}
	if in.adminLn != nil {
		in.admin = web.NewHTTPServer(current(func(ws *webServing) http.Handler { return ws.admin }), in.log, nil)
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
	return web.ECHKeyInfo{ConfigID: p.ConfigID, PublicName: p.PublicName, Created: cur.Created, Keys: len(set.Keys)}
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

// backendProbes check Dovecot and Postfix (or the demo's local delivery)
// with the real protocol: greeting plus CAPABILITY or EHLO.
func backendProbes(b edge.Backends) []web.Probe {
	var probes []web.Probe
	for _, svc := range []struct {
		name    string
		backend edge.Backend
	}{{"IMAP", b.IMAP}, {"SMTP", b.SMTP}} {
		mb, ok := svc.backend.(*mail.Backend)
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

// publishECHConfig writes the ECH config list, base64 on one line, for
// chatmail's IMAP METADATA service (docs/chatmail-frontend.md §7 pattern:
// read a file, emit one line). It is rewritten atomically, only when it
// changes, so a reader never sees half a line.
func (in *instance) publishECHConfig(set *edge.ECHKeySet) {
	path := in.cfg.MetadataFile
	if path == "" {
		return
	}
	in.publishMu.Lock()
	defer in.publishMu.Unlock()
	line := set.Base64() + "\n"
	if old, err := filelimit.ReadFile(path, filelimit.Small); err == nil && string(old) == line {
		return
	}
	err := os.MkdirAll(filepath.Dir(path), 0o755)
	if err == nil {
		// World-readable: it is published anyway, and chatmail-metadata
		// runs as another user.
		err = atomicfile.Write(path, []byte(line), 0o644)
	}
	if err != nil {
		in.log.Error("cannot publish the ECH config list for IMAP METADATA", zap.String("file", path), zap.Error(err))
		return
	}
	in.log.Info("published the ECH config list for IMAP METADATA", zap.String("file", path), zap.Uint8("config_id", set.Current().Parsed().ConfigID))
}
