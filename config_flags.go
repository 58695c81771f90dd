package main

import (
	"flag"
	"fmt"
	"net"
	"strconv"
)

// parseConfigFlags adds --config and the ACME CA overrides to fs, parses
// args (no arguments left over) and loads the settings.
func parseConfigFlags(fs *flag.FlagSet, args []string) (*settings, error) {
	configFile := fs.String("config", defaultConfigFile, "the edge's configuration `file` (every key: chatmail-edge config describe)")
	f := addACMEFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	s, err := loadSettings(*configFile, flagWasSet(fs, "config"))
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

// httpsPort is the public HTTPS port, for redirects, URLs and DNS records.
func (s *settings) httpsPort() int {
	if _, port, err := net.SplitHostPort(s.HTTPS); err == nil {
		if n, err := strconv.Atoi(port); err == nil && n > 0 {
			return n
		}
	}
	return 443
}
