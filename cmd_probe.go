package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"

	"chatmail-edge/internal/filelimit"
	"chatmail-edge/probe"
)

// errChecksFailed makes probe exit with status 1 after printing its report.
var errChecksFailed = errors.New("checks failed")

func cmdProbe(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("probe", stderr, "probe [flags] DOMAIN")
	var o probe.Options
	fs.StringVar(&o.ECH, "ech", "auto", "auto (fetch the config from https://DOMAIN/.well-known/origin-svcb), off, or a base64 ECHConfigList")
	caFile := fs.String("ca", "", "PEM file of the CA to trust instead of the system roots (the demo's demo-ca.pem)")
	fs.StringVar(&o.Connect, "connect", "", "host or IP address to connect to (default: DOMAIN)")
	fs.IntVar(&o.HTTPSPort, "https-port", 443, "HTTPS port (IMAP and SMTP by ALPN are checked there too)")
	fs.IntVar(&o.IMAPSPort, "imaps-port", 993, "implicit-TLS IMAP port")
	fs.IntVar(&o.SMTPSPort, "smtps-port", 465, "implicit-TLS SMTP port")
	fs.StringVar(&o.User, "user", "", "account to log in with (IMAP LOGIN + SELECT INBOX, SMTP AUTH)")
	fs.StringVar(&o.Password, "password", "", "password of --user")
	fs.DurationVar(&o.Timeout, "timeout", probe.DefaultTimeout, "time limit of the whole probe (the checks run at once)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	positional, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return fmt.Errorf("%w: want exactly one DOMAIN", errUsage)
	}
	o.Domain = positional[0]
	if (o.User == "") != (o.Password == "") {
		return fmt.Errorf("%w: --user and --password go together", errUsage)
	}
	if *caFile != "" {
		pem, err := filelimit.ReadFile(*caFile, filelimit.PEM)
		if err != nil {
			return fmt.Errorf("read CA file: %w", err)
		}
		o.RootCAs = x509.NewCertPool()
		if !o.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s holds no PEM certificate", *caFile)
		}
	}
	report := probe.Run(context.Background(), o)
	if *asJSON {
		report.WriteJSON(stdout)
	} else {
		report.WriteTable(stdout)
	}
	if !report.OK {
		return errChecksFailed
	}
	return nil
}

// parseInterleaved parses flags that may come before or after positional
// arguments ("probe DOMAIN --json" as well as "probe --json DOMAIN").
func parseInterleaved(fs interface {
	Parse([]string) error
	Args() []string
}, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errFlagPrinted, err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}
