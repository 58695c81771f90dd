package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/service"

	"go.uber.org/zap"
)

// acmeFlags override the CA of the configuration file, on serve and acme.
type acmeFlags struct {
	ca, caRoot *string
}

func addACMEFlags(fs *flag.FlagSet) acmeFlags {
	return acmeFlags{
		ca:     fs.String("acme-ca", "", "ACME directory URL, used for every attempt (overrides [acme] ca)"),
		caRoot: fs.String("acme-ca-root", "", "PEM file with the root the ACME CA's HTTPS server chains to (overrides [acme] ca_root)"),
	}
}

// loadCommand parses the flags serve and acme share (--config and the CA
// overrides), loads the settings and makes the logger they ask for.
func loadCommand(fs *flag.FlagSet, args []string, stderr io.Writer) (*config.Settings, *zap.Logger, error) {
	s, err := parseConfigFlags(fs, args)
	if err != nil {
		return nil, nil, err
	}
	log, err := service.NewLogger(stderr, s.LogLevel)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
	}
	return s, log, nil
}

// accountURLTimeout bounds `acme account-url` when it has to ask the CA.
const accountURLTimeout = 2 * time.Minute

func cmdACME(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "account-url" {
		return fmt.Errorf("%w: want `acme account-url`", errUsage)
	}
	s, log, err := loadCommand(newFlagSet("acme account-url", stderr, "acme account-url [flags]"), args[1:], stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	cfg := s.ACME()
	shared, err := service.OpenStore(context.Background(), s.Store, log)
	if err != nil {
		return err
	}
	if shared != nil {
		defer shared.Close()
		cfg.Storage = shared // the account the nodes share
	}
	m, err := acme.NewManager(cfg, log.Named("acme"))
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrConfig, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), accountURLTimeout)
	defer cancel()
	// The account acmetool had (taken over) or the edge's; for the CAA
	// record's accounturi (RFC 8657 §3), as `acmetool account-url` printed.
	url, err := m.AccountURL(ctx)
	if err != nil {
		return fmt.Errorf("account URL: %w", err)
	}
	fmt.Fprintln(stdout, url)
	return nil
}
