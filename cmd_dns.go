package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"chatmail-edge/dnszone"
	"chatmail-edge/service"
)

// cmdDNS prints every record a chatmail relay's zone needs (cmdeploy's
// zone, docs/chatmail-frontend.md §3) plus TLSRPT and the HTTPS record with
// the ECH config list; --zonefile as a BIND master file, --check compared
// with what a resolver answers.
func cmdDNS(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dns", stderr, "dns [flags]")
	stateDir := fs.String("state", "", "state folder with the ECH keys (default: the shared store of [store], else state_dir of the configuration)")
	var ipv4, ipv6 ipList
	fs.Var(&ipv4, "ipv4", "the relay's public IPv4 address (repeat or comma-separate for several; default: the interfaces' public addresses)")
	fs.Var(&ipv6, "ipv6", "the relay's public IPv6 address (likewise; none with disable_ipv6 in chatmail.ini)")
	dkimFile := fs.String("dkim-key", dnszone.DefaultDKIMKey, "the relay's DKIM private key (PEM), whose public half is published")
	dkimSelector := fs.String("dkim-selector", dnszone.DefaultDKIMSelector, "the DKIM selector")
	accountURL := fs.String("account-url", "", "ACME account `URL` for the CAA record's accounturi (default: the edge's account, as chatmail-edge acme account-url prints it)")
	tlsrptRUA := fs.String("tlsrpt-rua", "", "where TLS reports go (RFC 8460 rua; default mailto:tlsrpt@<mail_domain>)")
	zonefile := fs.Bool("zonefile", false, "print a BIND master file ($ORIGIN, $TTL, absolute names; no SOA/NS: $INCLUDE it into the zone)")
	check := fs.Bool("check", false, "ask a resolver for every record and say which are ok, missing or different; exit 1 if a required one is not ok")
	resolver := fs.String("resolver", "", "resolver for --check, host:port (default: the first nameserver in /etc/resolv.conf)")
	s, err := parseConfigFlags(fs, args)
	if err != nil {
		return err
	}
	if *zonefile && *check {
		return fmt.Errorf("%w: --zonefile and --check exclude each other", errUsage)
	}
	v4, v6 := ipv4.family(false), ipv6.family(true)
	if len(v4) < len(ipv4) || len(v6) < len(ipv6) {
		return fmt.Errorf("%w: an address of the other family in --ipv4 or --ipv6", errUsage)
	}
	log, err := service.NewLogger(stderr, "warn")
	if err != nil {
		return err
	}
	defer log.Sync()
	opts := dnszone.Options{
		StateDir: *stateDir, IPv4: v4, IPv6: v6, DKIMKey: *dkimFile, DKIMSelector: *dkimSelector,
		AccountURL: *accountURL, TLSRPTRUA: *tlsrptRUA, Log: log,
	}
	if *stateDir == "" {
		// The ECH keys and the ACME account are in the shared store, if any.
		shared, err := service.OpenStore(context.Background(), s.Store, log)
		if err != nil {
			return err
		}
		if shared != nil {
			defer shared.Close()
			opts.Shared = shared
		}
	}
	zone, err := dnszone.Build(s, opts)
	if errors.Is(err, dnszone.ErrNoName) {
		fmt.Fprintf(stdout, "; mail_domain %s: %v.\n", s.MailDomain, err)
		return nil
	}
	if err != nil {
		return err
	}
	switch {
	case *check:
		if *resolver == "" {
			if *resolver, err = dnszone.SystemResolver(); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "; DNS records for %s as %s answers\n", zone.Domain, *resolver)
		if n := zone.Check(context.Background(), stdout, *resolver); n > 0 {
			fmt.Fprintf(stdout, "; %d required record(s) missing or wrong\n", n)
			return errChecksFailed
		}
		fmt.Fprintln(stdout, "; every required record is there")
	case *zonefile:
		zone.PrintZonefile(stdout)
	default:
		zone.Print(stdout)
	}
	return nil
}

// ipList is a repeatable flag of IP addresses, each also comma-separated.
type ipList []net.IP

func (l *ipList) String() string {
	var s []string
	for _, ip := range *l {
		s = append(s, ip.String())
	}
	return strings.Join(s, ",")
}

func (l *ipList) Set(v string) error {
	for f := range strings.SplitSeq(v, ",") {
		ip := net.ParseIP(strings.TrimSpace(f))
		if ip == nil {
			return fmt.Errorf("not an IP address: %q", f)
		}
		*l = append(*l, ip)
	}
	return nil
}

// family is the addresses of one family, IPv4 ones in 4-byte form.
func (l ipList) family(v6 bool) []net.IP {
	var out []net.IP
	for _, ip := range l {
		if ip4 := ip.To4(); ip4 != nil && !v6 {
			out = append(out, ip4)
		} else if ip4 == nil && v6 {
			out = append(out, ip)
		}
	}
	return out
}
