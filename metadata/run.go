package metadata

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"chatmail-edge/internal/sdnotify"

	"go.uber.org/zap"
)

// SocketMode lets Dovecot's mail processes (chatmail's vmail user and
// group, as the proxy's unit runs) connect, and nobody else.
const SocketMode = 0o660

// ErrConfig marks a configuration the proxy cannot run with.
var ErrConfig = errors.New("metadata proxy configuration")

// Run is `metadata-proxy`: it serves Dovecot on the unix socket at socket
// until SIGTERM or SIGINT, telling systemd when it is ready.
func Run(cfg Config, socket string, log *zap.Logger) error {
	p, err := New(cfg, log)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	ln, err := Listen(socket, SocketMode)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	log.Info("serving IMAP METADATA for Dovecot", zap.String("socket", socket), zap.String("upstream", cfg.Upstream),
		zap.String("ech_file", cfg.ECHFile), zap.String("entry", ECHEntry))
	if err := sdnotify.New(os.Getenv).Send("READY=1", sdnotify.Status("answering %s, the rest to %s", ECHEntry, cfg.Upstream)); err != nil {
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
