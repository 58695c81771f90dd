package main

import (
	"fmt"
	"io"

	"chatmail-edge/edge"
	"chatmail-edge/web"
)

// cmdDNS prints the DNS records that publish what the edge serves: the
// MTA-STS policy indicator and the HTTPS record with the ECH config.
// (The full zone of a relay comes with the install issue.)
func cmdDNS(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dns", stderr, "dns [flags]")
	stateDir := fs.String("state", "", "state folder with the ECH keys (default: state_dir of the configuration)")
	s, err := parseConfigFlags(fs, args)
	if err != nil {
		return err
	}
	if *stateDir == "" {
		*stateDir = s.StateDir
	}
	keys, err := edge.LoadECHKeys(echDir(*stateDir))
	if err != nil {
		return err
	}
	if keys.Current() == nil {
		return fmt.Errorf("no ECH keys in %s (the edge creates one when it starts)", echDir(*stateDir))
	}
	d := s.MailDomain
	fmt.Fprintf(stdout, "; DNS records for %s served by chatmail-edge; add them to the zone.\n", d)
	if selfSignedMode(d) {
		fmt.Fprintf(stdout, ";\n; No MTA-STS record: %s has no CA-signed certificate (chatmail's self mode).\n", d)
	} else {
		fmt.Fprintf(stdout, ";\n; MTA-STS (RFC 8461 §3.1): the id follows the policy served at\n; https://mta-sts.%s/.well-known/mta-sts.txt and changes whenever it does.\n", d)
		fmt.Fprintln(stdout, web.MTASTSRecord(d, s.webConfig().MTASTS))
		fmt.Fprintf(stdout, "mta-sts.%s. 3600 IN CNAME %s.\n", d, d)
	}
	fmt.Fprintf(stdout, ";\n; ECH (RFC 9848): the config list of the current key, config_id %d.\n; Update it after `chatmail-edge ech rotate`.\n", keys.Current().Parsed().ConfigID)
	fmt.Fprintln(stdout, edge.HTTPSRecord(d, s.httpsPort(), []string{"h2", "http/1.1"}, 3600, keys.ConfigList()))
	return nil
}
