package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"chatmail-edge/metadata"

	"go.uber.org/zap"
)

// metadataSocketMode lets Dovecot's mail processes (chatmail's vmail user
// and group, as the proxy's unit runs) connect, and nobody else.
const metadataSocketMode = 0o660

// cmdMetadataProxy runs the IMAP METADATA proxy (docs/METADATA.md) until
// SIGTERM or SIGINT.
func cmdMetadataProxy(args []string, _, stderr io.Writer) error {
	fs := newFlagSet("metadata-proxy", stderr, "metadata-proxy [flags]")
	socket := fs.String("socket", metadata.DefaultSocket, "unix socket for Dovecot (its mail_attribute_dict)")
	var cfg metadata.Config
	fs.StringVar(&cfg.Upstream, "upstream", metadata.ChatmailSocket, "chatmail's metadata service, which answers every other entry")
	fs.StringVar(&cfg.ECHFile, "ech-file", metadata.DefaultECHFile, "the ECH config list the edge publishes (its [ech] metadata_file)")
	fs.IntVar(&cfg.MaxConnections, "max-connections", metadata.DefaultMaxConnections, "connections from Dovecot at once")
	fs.DurationVar(&cfg.UpstreamTimeout, "upstream-timeout", metadata.DefaultUpstreamTimeout, "connecting to chatmail's service, and each wait for its reply")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", metadata.DefaultIdleTimeout, "a connection from Dovecot with nothing waiting is closed after this")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", metadata.DefaultWriteTimeout, "each write to either socket")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if cfg.MaxConnections <= 0 || cfg.UpstreamTimeout <= 0 || cfg.IdleTimeout <= 0 || cfg.WriteTimeout <= 0 {
		return fmt.Errorf("%w: limits and timeouts must be positive", errUsage)
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	defer log.Sync()
	log = log.Named("metadata")

	p, err := metadata.New(cfg, log)
	if err != nil {
		return fmt.Errorf("%w: %v", errConfig, err)
	}
	ln, err := metadata.Listen(*socket, metadataSocketMode)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	log.Info("serving IMAP METADATA for Dovecot", zap.String("socket", *socket), zap.String("upstream", cfg.Upstream),
		zap.String("ech_file", cfg.ECHFile), zap.String("entry", metadata.ECHEntry))
	if err := newNotifier(os.Getenv).send("READY=1", status("answering %s, the rest to %s", metadata.ECHEntry, cfg.Upstream)); err != nil {
		log.Warn("cannot tell systemd", zap.Error(err))
	}
	select {
	case <-ctx.Done():
		log.Info("stopping")
		p.Close()
		return <-served
	case err := <-served:
		p.Close()
		return err
	}
}
