package main

import (
	"fmt"
	"io"

	"chatmail-edge/service"
)

func cmdDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", stderr, "demo [flags]")
	var c service.DemoConfig
	fs.StringVar(&c.StateDir, "state", service.DefaultDemoState(), "state folder: local CA, ECH keys, ticket keys")
	fs.StringVar(&c.Domain, "domain", "chatmail.localhost", "mail domain")
	fs.StringVar(&c.Host, "host", "127.0.0.1", "address to listen on")
	fs.IntVar(&c.HTTPSPort, "https-port", 8443, "HTTPS port (IMAP and SMTP by ALPN too)")
	fs.IntVar(&c.IMAPSPort, "imaps-port", 8993, "implicit-TLS IMAP port")
	fs.IntVar(&c.SMTPSPort, "smtps-port", 8465, "implicit-TLS SMTP submission port")
	fs.IntVar(&c.HTTPPort, "http-port", 8080, "plain HTTP port (redirects to HTTPS)")
	fs.IntVar(&c.AdminPort, "admin-port", 8081, "admin port on 127.0.0.1: detailed status page and /metrics")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	log, err := service.NewLogger(stderr, *logLevel)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	defer log.Sync()
	return service.RunDemo(c, log, stdout)
}
