package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"chatmail-edge/edge"
	"chatmail-edge/mail"

	"go.uber.org/zap"
)

func cmdServe(args []string, stdout, stderr io.Writer) error {
	// SIGHUP is caught from the very start, before its default action
	// (ending the process) can hit a starting edge; one that comes during
	// the start is taken once the edge is ready. It stays caught until the
	// process exits, so one during shutdown is ignored. SIGUSR2 (an upgrade)
	// likewise.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	s, log, err := loadCommand(newFlagSet("serve", stderr, "serve [flags]"), args, stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	notify := newNotifier(os.Getenv)
	socks, err := newSockets(log, notify, os.Getenv, filepath.Join(s.StateDir, pidFileName))
	if err != nil {
		return err
	}
	defer socks.close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A stop cancels an upgrade in progress (its new process is killed).
	defer context.AfterFunc(ctx, socks.stopUpgrades)()
	upgrades := make(chan *upgradeRequest)
	go upgradeOnSignal(ctx, log, usr2, upgrades)
	go keepGCFloor(ctx, log)
	return serve(ctx, s, log, serveLoop{
		load: func() (*settings, error) {
			return parseConfigFlags(newFlagSet("serve", io.Discard, "serve [flags]"), args)
		},
		reload:   hup,
		notify:   notify,
		sockets:  socks,
		upgrades: upgrades,
		ready:    func(e *servingEdge) { go keepProcs(ctx, log, e.edge.HandshakeBacklog) },
	})
}

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
	load   func() (*settings, error) // reads the configuration again, for a reload
	reload <-chan os.Signal          // SIGHUP
	notify notifier
	// sockets, if set, opens the listeners, hands them on at an upgrade and
	// lends them to systemd for a restart; nil listens anew.
	sockets *sockets
	// upgrades are requests to hand the sockets to a new process (SIGUSR2
	// and the control socket); they need sockets.
	upgrades chan *upgradeRequest
	// ready, if set, runs once the edge serves (tests reach the edge
	// through it).
	ready func(*servingEdge)
}

// statusInterval is how often the STATUS= line for systemd is refreshed.
const statusInterval = 30 * time.Second

// serve runs the edge until ctx ends or an upgrade hands it over, and
// reloads it on every SIGHUP, telling systemd about each step
// (sd_notify(3)): READY=1 once the listeners accept and the certificates
// are loaded; RELOADING=1 then READY=1 around a reload, a refused one
// included; STOPPING=1 at the end. After an upgrade the new process is the
// unit's main process and this one tells systemd nothing more.
func serve(ctx context.Context, s *settings, log *zap.Logger, loop serveLoop) error {
	notify := func(assignments ...string) {
		if err := loop.notify.send(assignments...); err != nil {
			log.Warn("cannot notify systemd", zap.Error(err))
		}
	}
	var listen func(name, addr string) (*net.TCPListener, error)
	if loop.sockets != nil {
		listen = loop.sockets.listenTCP
	}
	e, err := startServe(ctx, s, log, listen, nil)
	if err != nil {
		notify(status("start failed: %v", err))
		return err
	}
	var control *controlServer
	if loop.sockets != nil && s.ControlSocket != "" {
		ln, err := loop.sockets.listenUnix(s.ControlSocket)
		if err != nil {
			notify(status("start failed: %v", err))
			e.shutdown()
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
	if loop.notify.addr != nil {
		t := time.NewTicker(statusInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			notify("STOPPING=1", status("stopping"))
			log.Info("stopping: draining the sessions", zap.Duration("drain_timeout", e.drainTimeout()))
			e.drain(e.drainTimeout(), drainStop)
			return nil
		case req := <-loop.upgrades:
			log.Info("upgrading: starting the binary again with the listening sockets")
			pid, err := loop.sockets.upgrade()
			if err != nil {
				log.Error("upgrade failed; this process goes on serving", zap.Error(err))
				notify(status("upgrade failed, the running process goes on serving: %v", err))
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
			notify(append(reloading(), status("reloading the configuration"))...)
			changed, err := e.reload(loop.load)
			if err != nil {
				log.Error("reload refused; the configuration in force stays", zap.Error(err))
				notify("READY=1", status("reload refused, previous configuration kept: %v", err))
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
func (e *servingEdge) status(restart []string) string {
	snap := e.edge.Snapshot()
	line := fmt.Sprintf("serving %s: %d connections", e.cfg.Domain, snap.ActiveSessions+snap.Pending)
	if len(restart) > 0 {
		line += "; restart needed for " + strings.Join(restart, ", ")
	}
	return status("%s", line)
}

// instanceConfig turns the settings into the running parts' configuration;
// the certificates come from certs.go (startServe fills them in).
func (s *settings) instanceConfig() (instanceConfig, error) {
	var listeners []edge.ListenerConfig
	for _, l := range []struct {
		name, addr string
		kind       edge.Kind
	}{{"https", s.HTTPS, edge.KindMux}, {"imaps", s.IMAPS, edge.KindIMAP}, {"smtps", s.SMTPS, edge.KindSMTP}} {
		if l.addr != "" {
			listeners = append(listeners, edge.ListenerConfig{Name: l.name, Address: s.listenAddr(l.addr), Kind: l.kind})
		}
	}
	httpAddr := ""
	if s.HTTP != "" {
		httpAddr = s.listenAddr(s.HTTP)
	}
	return instanceConfig{
		Domain:     s.MailDomain,
		PublicName: s.ECHPublicName,
		StateDir:   s.StateDir,
		Edge: edge.Config{
			Listeners: listeners,
			Limits:    s.edgeLimits(),
			Hostname:  s.MailDomain,
		},
		HTTPAddr:  httpAddr,
		HTTPSPort: s.httpsPort(),
		Backends: func(dial func(context.Context, string, string) (net.Conn, error)) (edge.Backends, error) {
			imapB, err := mail.NewBackend(s.IMAPBackend.config(mail.IMAP, s, dial))
			if err != nil {
				return edge.Backends{}, fmt.Errorf("[imap]: %w", err)
			}
			smtpB, err := mail.NewBackend(s.SMTPBackend.config(mail.SMTP, s, dial))
			if err != nil {
				return edge.Backends{}, fmt.Errorf("[smtp]: %w", err)
			}
			return edge.Backends{IMAP: imapB, SMTP: smtpB}, nil
		},

		Web:          s.webConfig(),
		AdminAddr:    s.AdminAddress,
		MetadataFile: s.ECHMetadataFile,
		HTTPLimits:   s.httpLimits(),
	}, nil
}

// edgeLimits are the edge's limits and timeouts from the settings.
func (s *settings) edgeLimits() edge.Limits {
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
	}
}

func (b backendSettings) config(p mail.Protocol, s *settings, dial func(context.Context, string, string) (net.Conn, error)) mail.BackendConfig {
	return mail.BackendConfig{
		Protocol: p, Mode: mail.Mode(b.Mode), Address: b.Address,
		DialTimeout: s.BackendTimeout, TLSServerName: s.MailDomain, Dial: dial,
	}
}

// listenAddr keeps a wildcard listener on IPv4 only when chatmail.ini says
// disable_ipv6, as chatmail's nginx then leaves out its [::] listeners.
func (s *settings) listenAddr(addr string) string {
	if s.DisableIPv6 && strings.HasPrefix(addr, ":") {
		return "0.0.0.0" + addr
	}
	return addr
}

func cmdConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 || args[0] != "describe" {
		return fmt.Errorf("%w: want `config describe`", errUsage)
	}
	fmt.Fprint(stdout, describeConfig())
	return nil
}

func flagWasSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
