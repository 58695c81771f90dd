package service

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"chatmail-edge/config"
	"chatmail-edge/edge"
	"chatmail-edge/internal/sdnotify"
	"chatmail-edge/mail"
	"chatmail-edge/web"
)

// pidFileName, in state_dir, holds the PID of the process that serves,
// written when it is ready.
const pidFileName = "serve.pid"

// upgradeOnSignal turns each SIGUSR2 into an upgrade request, for
// `systemctl kill -s USR2 chatmail-edge`; its outcome is in the log.
func upgradeOnSignal(ctx context.Context, log *zap.Logger, sig <-chan os.Signal, upgrades chan<- *upgradeRequest) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
			log.Info("SIGUSR2: upgrading")
			select {
			case upgrades <- newUpgradeRequest():
			case <-ctx.Done():
				return
			}
		}
	}
}

// serveLoop is what serve reacts to besides the end of its context.
type serveLoop struct {
	load   func() (*config.Settings, error) // reads the configuration again, for a reload
	reload <-chan os.Signal                 // SIGHUP
	notify sdnotify.Notifier
	// sockets, if set, opens the listeners, hands them on at an upgrade and
	// lends them to systemd for a restart; nil listens anew.
	sockets *sockets
	// upgrades are requests to hand the sockets to a new process (SIGUSR2
	// and the control socket); they need sockets.
	upgrades chan *upgradeRequest
	// ready, if set, runs once the edge serves (tests reach the edge
	// through it).
	ready func(*Service)
}

// statusInterval is how often the STATUS= line for systemd is refreshed.
const statusInterval = 30 * time.Second

// serve runs the edge until ctx ends or an upgrade hands it over, and
// reloads it on every SIGHUP, telling systemd about each step
// (sd_notify(3)): READY=1 once the listeners accept and the certificates
// are loaded; RELOADING=1 then READY=1 around a reload, a refused one
// included; STOPPING=1 at the end. After an upgrade the new process is the
// unit's main process and this one tells systemd nothing more.
func serve(ctx context.Context, s *config.Settings, log *zap.Logger, loop serveLoop) error {
	notify := func(assignments ...string) {
		if err := loop.notify.Send(assignments...); err != nil {
			log.Warn("cannot notify systemd", zap.Error(err))
		}
	}
	var listen func(name, addr string) (*net.TCPListener, error)
	if loop.sockets != nil {
		listen = loop.sockets.listenTCP
	}
	e, err := startServe(ctx, s, log, listen, nil)
	if err != nil {
		notify(sdnotify.Status("start failed: %v", err))
		return err
	}
	var control *controlServer
	if loop.sockets != nil && s.ControlSocket != "" {
		ln, err := loop.sockets.listenUnix(s.ControlSocket)
		if err != nil {
			notify(sdnotify.Status("start failed: %v", err))
			e.Shutdown()
			return err
		}
		control = serveControl(ln, log.Named("control"), loop.upgrades)
		defer control.stop()
	}
	restart := []string(nil) // settings changed since the start that wait for a restart
	if loop.sockets != nil {
		loop.sockets.ready(e.status(restart))
	} else {
		notify("READY=1", e.status(restart))
	}
	if loop.ready != nil {
		loop.ready(e)
	}
	var tick <-chan time.Time
	if loop.notify.Enabled() {
		t := time.NewTicker(statusInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			notify("STOPPING=1", sdnotify.Status("stopping"))
			log.Info("stopping: draining the sessions", zap.Duration("drain_timeout", e.drainTimeout()))
			e.drain(e.drainTimeout(), drainStop)
			return nil
		case req := <-loop.upgrades:
			log.Info("upgrading: starting the binary again with the listening sockets")
			pid, err := loop.sockets.upgrade()
			if err != nil {
				log.Error("upgrade failed; this process goes on serving", zap.Error(err))
				notify(sdnotify.Status("upgrade failed, the running process goes on serving: %v", err))
				req.done <- err
				continue
			}
			// From here on the new process is the unit's main process: this
			// one tells systemd nothing more (a STOPPING=1 would stop the unit).
			drainTimeout := e.drainTimeout()
			snap := e.edge.Snapshot()
			req.result = fmt.Sprintf("a new process (pid %d) serves; the old one (pid %d) drains its %d connections for up to %v",
				pid, os.Getpid(), snap.ActiveSessions+snap.Pending, drainTimeout)
			log.Info("upgraded: "+req.result, zap.Duration("drain_timeout", drainTimeout))
			if control != nil {
				control.close()
			}
			req.done <- nil
			e.drain(drainTimeout, drainUpgrade)
			log.Info("drained; exiting")
			return nil
		case <-loop.reload:
			log.Info("reloading the configuration")
			notify(append(sdnotify.Reloading(), sdnotify.Status("reloading the configuration"))...)
			changed, err := e.Reload(loop.load)
			if err != nil {
				log.Error("reload refused; the configuration in force stays", zap.Error(err))
				notify("READY=1", sdnotify.Status("reload refused, previous configuration kept: %v", err))
				continue
			}
			restart = changed
			notify("READY=1", e.status(restart))
		case <-tick:
			notify(e.status(restart))
		}
	}
}

// status is the STATUS= summary of a serving edge.
func (e *Service) status(restart []string) string {
	snap := e.edge.Snapshot()
	line := fmt.Sprintf("serving %s: %d connections", e.cfg.Domain, snap.ActiveSessions+snap.Pending)
	if len(restart) > 0 {
		line += "; restart needed for " + strings.Join(restart, ", ")
	}
	return sdnotify.Status("%s", line)
}

// instanceConfig turns the settings into the running parts' configuration;
// the certificates come from certs.go (startServe fills them in). A node's
// connections to the relay are recorded in reach (node.go).
func instanceConfigFrom(s *config.Settings, reach *web.RelayReach) (instanceConfig, error) {
	var listeners []edge.ListenerConfig
	for _, l := range []struct {
		name, addr string
		kind       edge.Kind
	}{{"https", s.HTTPS, edge.KindMux}, {"imaps", s.IMAPS, edge.KindIMAP}, {"smtps", s.SMTPS, edge.KindSMTP}} {
		if l.addr != "" {
			listeners = append(listeners, edge.ListenerConfig{Name: l.name, Address: s.ListenAddr(l.addr), Kind: l.kind})
		}
	}
	httpAddr := ""
	if s.HTTP != "" {
		httpAddr = s.ListenAddr(s.HTTP)
	}
	cfg := instanceConfig{
		Domain:     s.MailDomain,
		PublicName: s.ECHPublicName,
		StateDir:   s.StateDir,
		Edge: edge.Config{
			Listeners: listeners,
			Limits:    edgeLimitsFrom(s),
			Hostname:  s.MailDomain,
		},
		HTTPAddr:  httpAddr,
		HTTPSPort: s.HTTPSPort(),
		Backends: func() (edge.Backends, error) {
			imapB, err := mail.NewBackend(backendConfig(s.IMAPBackend, mail.IMAP, s))
			if err != nil {
				return edge.Backends{}, fmt.Errorf("[imap]: %w", err)
			}
			smtpB, err := mail.NewBackend(backendConfig(s.SMTPBackend, mail.SMTP, s))
			if err != nil {
				return edge.Backends{}, fmt.Errorf("[smtp]: %w", err)
			}
			return edge.Backends{IMAP: imapB, SMTP: smtpB}, nil
		},

		Web:          webConfigFrom(s),
		AdminAddr:    s.AdminAddress,
		MetadataFile: s.ECHMetadataFile,
		HTTPLimits:   httpLimitsFrom(s),
	}
	if s.IsNode() {
		if err := nodeInstanceConfig(&cfg, s, reach); err != nil {
			return instanceConfig{}, err
		}
	}
	return cfg, nil
}

// edgeLimits are the edge's limits and timeouts from the settings.
func edgeLimitsFrom(s *config.Settings) edge.Limits {
	return edge.Limits{
		HelloTimeout:     s.HelloTimeout,
		HandshakeTimeout: s.HandshakeTimeout,
		IdleTimeout:      s.IdleTimeout,
		BackendTimeout:   s.BackendTimeout,
		MaxConnections:   s.MaxConnections,
		MaxHandshakes:    s.MaxHandshakes,
		Sources: edge.SourceLimits{
			MaxConnections: s.MaxConnectionsPerAddress,
			MaxHandshakes:  s.MaxHandshakesPerAddress,
			NewPerSecond:   s.NewConnectionsPerAddress,
			Exempt:         s.ExemptNetworks,
		},
		MinTLS: edge.MinTLS{HTTP: s.MinTLS, IMAP: s.IMAPBackend.MinTLS, SMTP: s.SMTPBackend.MinTLS},
	}
}

func backendConfig(b config.BackendSettings, p mail.Protocol, s *config.Settings) mail.BackendConfig {
	return mail.BackendConfig{
		Protocol: p, Mode: mail.Mode(b.Mode), Address: b.Address,
		DialTimeout: s.BackendTimeout, TLSServerName: s.MailDomain,
	}
}
