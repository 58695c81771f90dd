package service

import (
	"context"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"chatmail-edge/config"
	"chatmail-edge/internal/runtimetune"
	"chatmail-edge/internal/sdnotify"

	"go.uber.org/zap"
)

// Signals are the signals serve reacts to besides SIGTERM and SIGINT. The
// command line catches them from its very start, before their default
// action (ending the process) can hit a starting edge; one that comes
// during the start is taken once the edge is ready.
type Signals struct {
	Reload  <-chan os.Signal // SIGHUP: read the configuration again
	Upgrade <-chan os.Signal // SIGUSR2: hand the sockets to a new process of the binary
}

// Run is `serve`: the edge on a relay, as systemd runs it, until SIGTERM or
// SIGINT or until an upgrade has handed it over. load reads the
// configuration again for a reload.
func Run(s *config.Settings, log *zap.Logger, load func() (*config.Settings, error), sig Signals) error {
	runtimetune.Processors(log)
	notify := sdnotify.New(os.Getenv)
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
	go upgradeOnSignal(ctx, log, sig.Upgrade, upgrades)
	go runtimetune.KeepHeapFloor(ctx, log)
	return serve(ctx, s, log, serveLoop{
		load:     load,
		reload:   sig.Reload,
		notify:   notify,
		sockets:  socks,
		upgrades: upgrades,
	})
}

// RunDemo is `demo`: everything on loopback with the in-process mail
// delivery, until SIGTERM or SIGINT. The banner, with a probe command and a
// demo account, goes to stdout.
func RunDemo(c DemoConfig, log *zap.Logger, stdout io.Writer) error {
	runtimetune.Processors(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go runtimetune.KeepHeapFloor(ctx, log)
	d, err := StartDemo(c, log)
	if err != nil {
		return err
	}
	d.PrintBanner(stdout)
	<-ctx.Done()
	log.Info("stopping")
	d.Shutdown()
	return nil
}
