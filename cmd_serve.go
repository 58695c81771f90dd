package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"chatmail-edge/config"
	"chatmail-edge/service"
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
	return service.Run(s, log, func() (*config.Settings, error) {
		return parseConfigFlags(newFlagSet("serve", io.Discard, "serve [flags]"), args)
	}, service.Signals{Reload: hup, Upgrade: usr2})
}

func cmdConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) != 1 || args[0] != "describe" {
		return fmt.Errorf("%w: want `config describe`", errUsage)
	}
	fmt.Fprint(stdout, config.Describe())
	return nil
}

func flagWasSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
