package main

import (
	"flag"
	"fmt"

	"chatmail-edge/config"
)

// parseConfigFlags adds --config and the ACME CA overrides to fs, parses
// args (no arguments left over) and loads the settings.
func parseConfigFlags(fs *flag.FlagSet, args []string) (*config.Settings, error) {
	configFile := fs.String("config", config.DefaultFile, "the edge's configuration `file` (every key: chatmail-edge config describe)")
	f := addACMEFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	s, err := config.Load(*configFile, flagWasSet(fs, "config"))
	if err != nil {
		return nil, err
	}
	if flagWasSet(fs, "acme-ca") {
		s.Certs.CA = *f.ca
	}
	if flagWasSet(fs, "acme-ca-root") {
		s.Certs.CARoot = *f.caRoot
	}
	return s, nil
}
