package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"chatmail-edge/config"
	"chatmail-edge/install"
)

// installFlags are the flags install and uninstall share.
type installFlags struct {
	root, config *string
	dryRun       *bool
}

func addInstallFlags(fs interface {
	String(string, string, string) *string
	Bool(string, bool, string) *bool
}) installFlags {
	return installFlags{
		root:   fs.String("root", "/", "install into this folder instead of the running system (for tests and packagers): files only, no services started"),
		config: fs.String("config", config.DefaultFile, "the edge's configuration file"),
		dryRun: fs.Bool("dry-run", false, "print every step without doing it"),
	}
}

func cmdInstall(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("install", stderr, "install [--mode default|full] [--root DIR] [--dry-run] [--config FILE]\n"+
		"    or: chatmail-edge install --reapply [--root DIR] [--dry-run] [--config FILE]\n"+
		"    or: chatmail-edge install --mode node --relay HOST --mail-domain D [--connect tls|proxy] [--node-name N] [--relay-ca FILE] [--root DIR] [--dry-run] [--config FILE]")
	f := addInstallFlags(fs)
	mode := fs.String("mode", "default", "default: the edge takes 80 and 443, as nginx did, and Dovecot and Postfix stay as they are; "+
		"full: it also takes 993 and 465 with ECH, and Dovecot and Postfix move to loopback PROXY v2 listeners; "+
		"node: on a machine that is not the relay, an edge in front of it (docs/NODES.md)")
	reapply := fs.Bool("reapply", false, "put back, in the mode of the install on record, what another program (cmdeploy run) undid, "+
		"and leave the edge running or stopped as it is: what chatmail-edge-reapply.path runs")
	var node install.NodeOptions
	fs.StringVar(&node.Relay, "relay", "", "node: the relay's host name or address as this machine reaches it (not the mail domain)")
	fs.StringVar(&node.MailDomain, "mail-domain", "", "node: the relay's mail_domain, for the node's chatmail.ini")
	fs.StringVar(&node.Connect, "connect", "", "node: tls (to the relay's 993 and 465, the default) or proxy (PROXY v2 with the client's address, then TLS, to the relay's listeners for nodes)")
	fs.StringVar(&node.Name, "node-name", "", "node: its name on the status page (default: the host name)")
	fs.StringVar(&node.RelayCA, "relay-ca", "", "node: PEM file to verify the relay's certificate with instead of the system's roots (a relay in self mode: its mailserver.pem)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	o := install.Options{Root: *f.root, DryRun: *f.dryRun, Config: *f.config, Out: stdout, Node: node}
	if *reapply {
		modeSet := false
		fs.Visit(func(fl *flag.Flag) { modeSet = modeSet || fl.Name == "mode" })
		if modeSet {
			return fmt.Errorf("%w: --reapply takes the mode of the install on record, not --mode", errUsage)
		}
		return usageError(install.Reapply(o))
	}
	return usageError(install.Install(o, *mode))
}

func cmdUninstall(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("uninstall", stderr, "uninstall [--root DIR] [--dry-run] [--config FILE]")
	f := addInstallFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return usageError(install.Uninstall(install.Options{Root: *f.root, DryRun: *f.dryRun, Config: *f.config, Out: stdout}))
}

// usageError marks install's complaints about its flags as usage errors.
func usageError(err error) error {
	if errors.Is(err, install.ErrBadMode) || errors.Is(err, install.ErrBadRoot) {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	return err
}
