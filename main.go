// Command chatmail-edge is the TLS front end of a chatmail relay: it
// terminates TLS with Encrypted Client Hello on 443 (and optionally 993 and
// 465), routes IMAP, SMTP and HTTPS by the inner ALPN, and serves the
// relay's web site, MTA-STS policy and ECH configuration.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"chatmail-edge/config"
	"chatmail-edge/internal/buildinfo"
)

const usage = `chatmail-edge: the TLS and ECH front end of a chatmail relay.

Usage:
  chatmail-edge demo [flags]          run everything on loopback with an in-process mail server
  chatmail-edge serve [flags]         run on a relay (reads chatmail.ini and the edge's config)
  chatmail-edge upgrade [flags]       hand the running serve's sockets to a new process of the binary
                                      (after replacing it), which then serves; the old one drains
  chatmail-edge probe [flags] DOMAIN  check a running edge over IMAP, SMTP and HTTPS with ECH
  chatmail-edge ech show|rotate|retire [flags]
                                      print or change the ECH keys in the state folder
  chatmail-edge install [--mode default|full] [--root DIR] [--dry-run]
                                      install on a chatmail relay, taking over from nginx and acmetool
  chatmail-edge uninstall [--root DIR] [--dry-run]
                                      remove the edge and give the relay back to nginx and acmetool
  chatmail-edge dns [--zonefile | --check] [flags]
                                      print the relay's DNS records (MX, DKIM, MTA-STS, CAA, HTTPS with
                                      ECH, ...), as a BIND zone file, or check them against a resolver
  chatmail-edge acme account-url [flags]
                                      print the ACME account URL (for the CAA record)
  chatmail-edge metadata-proxy [flags]
                                      serve IMAP METADATA for Dovecot: the ECH config list, the rest
                                      from chatmail's metadata service (its own unit)
  chatmail-edge config describe       print the configuration file with every key documented
  chatmail-edge version | --version   print the version and the commit it was built from

Run "chatmail-edge COMMAND -h" for a command's flags.
`

// exitConfig is the exit status for configuration errors; the systemd unit's
// RestartPreventExitStatus keeps such a start from looping.
const exitConfig = 78 // EX_CONFIG, sysexits.h

// errUsage marks errors that the command line caused.
var errUsage = errors.New("usage")

// errFlagPrinted marks a flag error that the flag set has printed already,
// with the command's usage: run adds nothing.
var errFlagPrinted = fmt.Errorf("%w: bad flag", errUsage)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	printVersion := func([]string, io.Writer, io.Writer) error {
		fmt.Fprintln(stdout, buildinfo.Read())
		return nil
	}
	commands := map[string]func([]string, io.Writer, io.Writer) error{
		"demo":           cmdDemo,
		"serve":          cmdServe,
		"upgrade":        cmdUpgrade,
		"probe":          cmdProbe,
		"ech":            cmdECH,
		"acme":           cmdACME,
		"config":         cmdConfig,
		"dns":            cmdDNS,
		"install":        cmdInstall,
		"uninstall":      cmdUninstall,
		"metadata-proxy": cmdMetadataProxy,
		"version":        printVersion,
		"--version":      printVersion,
		"-version":       printVersion,
	}
	cmd, ok := commands[args[0]]
	if !ok {
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprint(stdout, usage)
			return 0
		}
		fmt.Fprintf(stderr, "chatmail-edge: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	err := cmd(args[1:], stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errFlagPrinted):
		return 2
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "chatmail-edge %s: %v\n", args[0], err)
		return 2
	case errors.Is(err, config.ErrConfig):
		fmt.Fprintf(stderr, "chatmail-edge %s: %v\n", args[0], err)
		return exitConfig
	case errors.Is(err, errChecksFailed):
		return 1
	default:
		fmt.Fprintf(stderr, "chatmail-edge %s: %v\n", args[0], err)
		return 1
	}
}

// newFlagSet makes a flag set that reports errors to stderr and returns them.
func newFlagSet(name string, stderr io.Writer, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: chatmail-edge %s\n\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; a flag error, which fs has printed, becomes
// errFlagPrinted.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errFlagPrinted, err)
	}
	return nil
}
