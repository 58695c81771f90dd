package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/edge"
	"chatmail-edge/web"

	"go.uber.org/zap"
)

// dnsAccountURLTimeout bounds asking the CA for the account URL of the CAA
// record; without an answer the record goes without accounturi.
const dnsAccountURLTimeout = 30 * time.Second

// cmdDNS prints every record a chatmail relay's zone needs (cmdeploy's
// zone, docs/chatmail-frontend.md §3) plus TLSRPT and the HTTPS record with
// the ECH config list; --zonefile as a BIND master file, --check compared
// with what a resolver answers.
func cmdDNS(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dns", stderr, "dns [flags]")
	stateDir := fs.String("state", "", "state folder with the ECH keys (default: state_dir of the configuration)")
	var ipv4, ipv6 ipList
	fs.Var(&ipv4, "ipv4", "the relay's public IPv4 address (repeat or comma-separate for several; default: the interfaces' public addresses)")
	fs.Var(&ipv6, "ipv6", "the relay's public IPv6 address (likewise; none with disable_ipv6 in chatmail.ini)")
	dkimFile := fs.String("dkim-key", defaultDKIMKey, "the relay's DKIM private key (PEM), whose public half is published")
	dkimSelector := fs.String("dkim-selector", defaultDKIMSelector, "the DKIM selector")
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
	if *stateDir == "" {
		*stateDir = s.StateDir
	}
	d := s.MailDomain
	if net.ParseIP(strings.Trim(d, "[]")) != nil {
		// chatmail's self mode with an address for a domain: clients are
		// given the address, there is no name to publish records under.
		fmt.Fprintf(stdout, "; mail_domain %s is an IP address (chatmail's self mode): there is no DNS name, so no records to publish.\n", d)
		return nil
	}

	in := zoneInputs{domain: d, selfSigned: selfSignedMode(d), dkim: readDKIMKey(*dkimSelector, *dkimFile)}
	if err := in.addresses(ipv4, ipv6, s.DisableIPv6); err != nil {
		return err
	}
	if err := in.ech(*stateDir, s.httpsPort()); err != nil {
		return err
	}
	if !in.selfSigned {
		in.mtaSTS = web.MTASTSRecord(d, s.webConfig().MTASTS)
		in.tlsrptRUA = *tlsrptRUA
		if in.tlsrptRUA == "" {
			in.tlsrptRUA = "mailto:tlsrpt@" + d
		}
	}
	switch s.certMode() {
	case "acme":
		url := *accountURL
		var why error
		if url == "" {
			url, why = dnsAccountURL(s, stderr)
		}
		in.caa, in.caaNote = caaIssuers(s.acmeConfig(), url)
		if why != nil {
			in.caaNote = strings.TrimSpace(in.caaNote + fmt.Sprintf(" No accounturi: the account URL is not known (%v); give --account-url.", why))
		}
	case "external":
		in.caaNote = "The certificate comes from another program ([tls] cert): add a CAA record for its CA."
	}
	groups, err := relayZone(in)
	if err != nil {
		return err
	}

	switch {
	case *check:
		if *resolver == "" {
			if *resolver, err = systemResolver(); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "; DNS records for %s as %s answers\n", d, *resolver)
		if n := checkZone(context.Background(), stdout, *resolver, groups); n > 0 {
			fmt.Fprintf(stdout, "; %d required record(s) missing or wrong\n", n)
			return errChecksFailed
		}
		fmt.Fprintln(stdout, "; every required record is there")
	case *zonefile:
		printZonefile(stdout, d, groups)
	default:
		printRecords(stdout, d, groups)
	}
	return nil
}

// addresses are the flags' if given, else the interfaces' public ones.
func (in *zoneInputs) addresses(v4, v6 ipList, disableIPv6 bool) error {
	in.ipv4, in.ipv6 = v4.family(false), v6.family(true)
	if len(v4) > len(in.ipv4) || len(v6) > len(in.ipv6) {
		return fmt.Errorf("%w: an address of the other family in --ipv4 or --ipv6", errUsage)
	}
	if len(v4)+len(v6) > 0 {
		in.addrSource = "From --ipv4 and --ipv6."
		return nil
	}
	var err error
	in.ipv4, in.ipv6, err = publicAddresses(!disableIPv6)
	in.addrSource = "The public addresses of this machine's interfaces; behind NAT, give --ipv4/--ipv6."
	if disableIPv6 {
		in.addrSource += " No IPv6: chatmail.ini has disable_ipv6."
	}
	return err
}

// ech loads the current ECH key's config list for the HTTPS record; before
// the edge made a key there is none (which the output says).
func (in *zoneInputs) ech(stateDir string, port int) error {
	keys, err := edge.LoadECHKeys(echDir(stateDir))
	if err != nil {
		return err
	}
	if keys.Current() == nil {
		in.echNote = fmt.Sprintf("No ECH key in %s yet: the edge makes one when it starts.", echDir(stateDir))
		return nil
	}
	in.httpsRR = edge.HTTPSRecord(in.domain, port, []string{"h2", "http/1.1"}, dnsTTL, keys.ConfigList())
	in.echNote = fmt.Sprintf("The config list of the current key, config_id %d. Update it after `chatmail-edge ech rotate`.", keys.Current().Parsed().ConfigID)
	return nil
}

// dnsAccountURL is the edge's ACME account URL, as `acme account-url`
// gets it: the stored one, else acmetool's account or a new one, which
// asks the CA.
func dnsAccountURL(s *settings, stderr io.Writer) (string, error) {
	log, err := newLogger(stderr, "warn")
	if err != nil {
		return "", err
	}
	defer log.Sync()
	m, err := acme.NewManager(s.acmeConfig(), log.Named("acme"))
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), dnsAccountURLTimeout)
	defer cancel()
	url, err := m.AccountURL(ctx)
	if err != nil {
		log.Warn("no ACME account URL for the CAA record", zap.Error(err))
	}
	return url, err
}

// printRecords is the readable form: each group under comment lines that
// say what it is for.
func printRecords(w io.Writer, domain string, groups []dnsGroup) {
	fmt.Fprintf(w, "; DNS records for %s served by chatmail-edge; add them to the zone.\n", domain)
	for _, g := range groups {
		fmt.Fprintf(w, ";\n; %s\n", g.title)
		for _, n := range g.notes {
			if n != "" {
				fmt.Fprintf(w, "; %s\n", n)
			}
		}
		printGroupRecords(w, g)
	}
}

// printZonefile is a BIND master file (RFC 1035 §5) of the records. It has
// no SOA and NS: those belong to the zone, which the operator's DNS host
// has; the file is $INCLUDEd into it, or its records pasted.
func printZonefile(w io.Writer, domain string, groups []dnsGroup) {
	fmt.Fprintf(w, "; DNS records for %s served by chatmail-edge.\n; No SOA and NS: $INCLUDE this file into the zone, or add the records to it.\n", domain)
	fmt.Fprintf(w, "$ORIGIN %s.\n$TTL %d\n", strings.TrimSuffix(domain, "."), dnsTTL)
	for _, g := range groups {
		fmt.Fprintf(w, "\n; %s\n", g.title)
		printGroupRecords(w, g)
	}
}

func printGroupRecords(w io.Writer, g dnsGroup) {
	for _, r := range g.records {
		if r.rr == nil {
			fmt.Fprintf(w, "; %s ... (%s)\n", r.text(), r.unknown)
			continue
		}
		fmt.Fprintln(w, r.text())
	}
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
