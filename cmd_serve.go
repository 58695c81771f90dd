package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
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
	// process exits, so one during shutdown is ignored.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	s, log, err := loadCommand(newFlagSet("serve", stderr, "serve [flags]"), args, stderr)
	if err != nil {
		return err
	}
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go keepGCFloor(ctx, log)
	return serve(ctx, s, log, serveLoop{
		load: func() (*settings, error) {
			return parseConfigFlags(newFlagSet("serve", io.Discard, "serve [flags]"), args)
		},
		reload: hup,
		notify: newNotifier(os.Getenv),
		ready:  func(e *servingEdge) { go keepProcs(ctx, log, e.edge.HandshakeBacklog) },
	})
}

// serveLoop is what serve reacts to besides the end of its context.
type serveLoop struct {
	load   func() (*settings, error) // reads the configuration again, for a reload
	reload <-chan os.Signal          // SIGHUP
	notify notifier
	// ready, if set, runs once the edge serves (tests reach the edge
	// through it).
	ready func(*servingEdge)
}

// statusInterval is how often the STATUS= line for systemd is refreshed.
const statusInterval = 30 * time.Second

// serve runs the edge until ctx ends and reloads it on every SIGHUP,
// telling systemd about each step (sd_notify(3)): READY=1 once the
// listeners accept and the certificates are loaded; RELOADING=1 then
// READY=1 around a reload, a refused one included; STOPPING=1 at the end.
func serve(ctx context.Context, s *settings, log *zap.Logger, loop serveLoop) error {
	notify := func(assignments ...string) {
		if err := loop.notify.send(assignments...); err != nil {
			log.Warn("cannot notify systemd", zap.Error(err))
		}
	}
	e, err := startServe(ctx, s, log, nil)
	if err != nil {
		notify(status("start failed: %v", err))
		return err
	}
	restart := []string(nil) // settings changed since the start that wait for a restart
	notify("READY=1", e.status(restart))
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
			log.Info("stopping")
			e.shutdown()
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
