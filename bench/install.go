package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
)

// labPackages are the Debian packages the baselines need, each with a file
// that shows it is installed.
var labPackages = []struct{ file, pkg string }{
	{"/usr/sbin/nginx", "nginx"},
	{nginxStreamModule, "libnginx-mod-stream"},
	{"/usr/sbin/dovecot", "dovecot-core"},
	{"/usr/lib/dovecot/imap-login", "dovecot-imapd"},
}

// ensurePackages installs missing packages with apt-get. The system
// services the packages start are not used (the lab runs its own instances
// on other ports); stopping them keeps the machine quieter.
func ensurePackages(ctx context.Context, log io.Writer) error {
	var missing []string
	for _, p := range labPackages {
		if _, err := os.Stat(p.file); err != nil {
			missing = append(missing, p.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing packages %s: run as root, or install them with apt-get install %s", strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	fmt.Fprintf(log, "installing %s\n", strings.Join(missing, " "))
	for _, args := range [][]string{
		{"apt-get", "update"},
		append([]string{"apt-get", "install", "-y", "--no-install-recommends"}, missing...),
	} {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
		}
	}
	return nil
}
