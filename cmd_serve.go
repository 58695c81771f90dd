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

	"chatmail-edge/edge"
	"chatmail-edge/mail"
)

func cmdServe(args []string, stdout, stderr io.Writer) error {
	s, log, err := loadCommand(newFlagSet("serve", stderr, "serve [flags]"), args, stderr)
	if err != nil {
		return err
	}
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e, err := startServe(ctx, s, log, nil)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("stopping")
	e.shutdown()
	return nil
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
			Listeners:        listeners,
			HandshakeTimeout: s.HandshakeTimeout,
			IdleTimeout:      s.IdleTimeout,
			BackendTimeout:   s.BackendTimeout,
			MaxConnections:   s.MaxConnections,
			MaxHandshakes:    s.MaxHandshakes,
			Hostname:         s.MailDomain,
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
