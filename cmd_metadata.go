package main

import (
	"errors"
	"fmt"
	"io"

	"chatmail-edge/config"
	"chatmail-edge/metadata"
	"chatmail-edge/service"
)

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
	log, err := service.NewLogger(stderr, *logLevel)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	defer log.Sync()
	log = log.Named("metadata")

	if err := metadata.Run(cfg, *socket, log); err != nil {
		if errors.Is(err, metadata.ErrConfig) {
			return fmt.Errorf("%w: %w", config.ErrConfig, err)
		}
		return err
	}
	return nil
}
