package main

import (
	"fmt"
	"io"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/service"
)

// cmdUpgrade asks the running serve, through its control socket, to start
// the binary again with its listening sockets (see handoff.go): after the
// binary was replaced, to run the new one, or to apply settings that only
// a restart applies, without refusing a connection or dropping a session.
// The old process drains its sessions for up to [edge] drain_timeout.
func cmdUpgrade(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("upgrade", stderr, "upgrade [flags]")
	timeout := fs.Duration("timeout", service.UpgradeTimeout+30*time.Second, "how long to wait for the new process to be ready")
	s, err := parseConfigFlags(fs, args)
	if err != nil {
		return err
	}
	if s.ControlSocket == "" {
		return fmt.Errorf("%w: [edge] control_socket is empty: send SIGUSR2 to the running edge instead (systemctl kill -s USR2 chatmail-edge)", config.ErrConfig)
	}
	result, err := service.RequestUpgrade(s.ControlSocket, *timeout)
	if err != nil {
		return fmt.Errorf("not upgraded: %w", err) // exit status 1
	}
	fmt.Fprintln(stdout, "upgraded:", result)
	return nil
}
