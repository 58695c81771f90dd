package dnszone

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	"chatmail-edge/acme"

	"github.com/miekg/dns"
)

// dnsTTL is the TTL of every record, as cmdeploy's zone has it.
const dnsTTL = 3600

// dnsRecord is one record the relay's zone needs. A record whose value
// cannot be known here (no address given or found, DKIM key not readable,
// no ECH key yet) has no rr: it is printed as a comment saying why, and
// --check only looks for its presence.
type dnsRecord struct {
	name     string // owner, absolute
	rrtype   uint16
	rr       dns.RR // nil when the value is unknown
	required bool
	unknown  string // why the value is unknown
}

// text is the record in presentation form, space separated as an operator
// would type it.
func (r dnsRecord) text() string {
	if r.rr == nil {
		return fmt.Sprintf("%s %d IN %s", r.name, dnsTTL, dns.TypeToString[r.rrtype])
	}
	return strings.Join(strings.Fields(r.rr.Header().String()), " ") + " " + rdata(r.rr)
}

// rdata is the part of text after the type.
func rdata(rr dns.RR) string {
	return strings.TrimSpace(strings.TrimPrefix(rr.String(), rr.Header().String()))
}

// dnsGroup is records printed under one explanation.
type dnsGroup struct {
	title   string   // one line, also in --zonefile output
	notes   []string // further comment lines for the readable output
	records []dnsRecord
}

// zoneInputs is what the records are made from, gathered by cmdDNS.
type zoneInputs struct {
	domain     string
	ipv4, ipv6 []net.IP
	addrSource string // where the addresses came from, for the comment

	mtaSTS     string // web.MTASTSRecord, "" when the mode has no MTA-STS
	httpsRR    string // ech.HTTPSRecord, "" without an ECH key
	echNote    string // config id and rotation hint, or why there is no record
	dkim       dkimKey
	caa        []caaIssuer // empty outside acme mode
	caaNote    string
	tlsrptRUA  string
	selfSigned bool
}

// caaIssuer is one CA allowed to issue for the domain (RFC 8659 §4.2),
// bound to an account when the URL is known (RFC 8657 §3).
type caaIssuer struct {
	domain, accountURL string
}

// record parses one presentation-form line; every line built here is
// valid, so an error is a bug, reported with the line.
func record(required bool, line string) (dnsRecord, error) {
	rr, err := dns.NewRR(line)
	if err != nil || rr == nil {
		return dnsRecord{}, fmt.Errorf("DNS record %q: %v", line, err)
	}
	return dnsRecord{name: rr.Header().Name, rrtype: rr.Header().Rrtype, rr: rr, required: required}, nil
}

// relayZone builds every record a chatmail relay needs, in the groups of
// cmdeploy's zone (cmdeploy/dns.py), plus TLSRPT and the HTTPS record.
func relayZone(in zoneInputs) ([]dnsGroup, error) {
	d := strings.TrimSuffix(strings.ToLower(in.domain), ".") + "."
	var groups []dnsGroup
	var err error
	add := func(g *dnsGroup, required bool, format string, args ...any) {
		if err != nil {
			return
		}
		var r dnsRecord
		r, err = record(required, fmt.Sprintf(format, args...))
		g.records = append(g.records, r)
	}
	unknown := func(g *dnsGroup, name string, t uint16, required bool, why string) {
		g.records = append(g.records, dnsRecord{name: name, rrtype: t, required: required, unknown: why})
	}

	addrs := dnsGroup{title: "Addresses of the relay (required: at least one)", notes: []string{in.addrSource}}
	for _, ip := range in.ipv4 {
		add(&addrs, true, "%s %d IN A %s", d, dnsTTL, ip)
	}
	for _, ip := range in.ipv6 {
		add(&addrs, true, "%s %d IN AAAA %s", d, dnsTTL, ip)
	}
	if len(in.ipv4) == 0 {
		unknown(&addrs, d, dns.TypeA, len(in.ipv6) == 0, "no IPv4 address given or found (--ipv4)")
	}
	if len(in.ipv6) == 0 {
		unknown(&addrs, d, dns.TypeAAAA, false, "no IPv6 address given or found (--ipv6)")
	}
	groups = append(groups, addrs)

	mail := dnsGroup{title: "Mail exchanger (required): the relay receives its own domain's mail (RFC 5321 §5.1)"}
	add(&mail, true, "%s %d IN MX 10 %s", d, dnsTTL, d)
	groups = append(groups, mail)

	if in.mtaSTS != "" {
		sts := dnsGroup{title: "MTA-STS (required, RFC 8461 §3.1): the policy is served at https://mta-sts." + d[:len(d)-1] + "/.well-known/mta-sts.txt",
			notes: []string{"The id follows the served policy and changes whenever it does."}}
		add(&sts, true, "%s", in.mtaSTS)
		add(&sts, true, "mta-sts.%s %d IN CNAME %s", d, dnsTTL, d)
		groups = append(groups, sts)
	}

	www := dnsGroup{title: "The web site's second name (required; the certificate covers it)"}
	add(&www, true, "www.%s %d IN CNAME %s", d, dnsTTL, d)
	groups = append(groups, www)

	dkim := dnsGroup{title: "DKIM (required, RFC 6376 §3.6.1): the public half of the relay's signing key " + in.dkim.file}
	owner := in.dkim.selector + "._domainkey." + d
	if in.dkim.value != "" {
		add(&dkim, true, "%s %d IN TXT %s", owner, dnsTTL, txtStrings(in.dkim.value))
	} else {
		unknown(&dkim, owner, dns.TypeTXT, false, in.dkim.err)
	}
	groups = append(groups, dkim)

	policy := dnsGroup{title: "Sender policies (recommended): SPF (RFC 7208), DMARC (RFC 7489), ADSP (RFC 5617, historic; cmdeploy publishes it)"}
	add(&policy, false, `%s %d IN TXT "v=spf1 a ~all"`, d, dnsTTL)
	add(&policy, false, `_dmarc.%s %d IN TXT "v=DMARC1;p=reject;adkim=s;aspf=s"`, d, dnsTTL)
	add(&policy, false, `_adsp._domainkey.%s %d IN TXT "dkim=discardable"`, d, dnsTTL)
	groups = append(groups, policy)

	if len(in.caa) > 0 || in.caaNote != "" {
		caa := dnsGroup{title: "CAA (recommended, RFC 8659): the CAs that may issue for the domain; accounturi (RFC 8657) binds one to the relay's ACME account"}
		if in.caaNote != "" {
			caa.notes = append(caa.notes, in.caaNote)
		}
		for _, c := range in.caa {
			v := c.domain
			if c.accountURL != "" {
				v += ";accounturi=" + c.accountURL
			}
			add(&caa, false, `%s %d IN CAA 0 issue %q`, d, dnsTTL, v)
		}
		groups = append(groups, caa)
	}

	srv := dnsGroup{title: "Service records (recommended, RFC 6186, RFC 8314 §5.1): IMAP and submission for mail clients"}
	for _, s := range []struct {
		service string
		port    int
	}{{"_submission", 587}, {"_submissions", 465}, {"_imap", 143}, {"_imaps", 993}} {
		add(&srv, false, "%s._tcp.%s %d IN SRV 0 1 %d %s", s.service, d, dnsTTL, s.port, d)
	}
	groups = append(groups, srv)

	if in.tlsrptRUA != "" {
		rpt := dnsGroup{title: "SMTP TLS reporting (recommended, RFC 8460 §3): where senders report TLS failures",
			notes: []string{"Reports are unencrypted mail: list the address in chatmail.ini's passthrough_recipients, or give --tlsrpt-rua."}}
		add(&rpt, false, `_smtp._tls.%s %d IN TXT "v=TLSRPTv1; rua=%s"`, d, dnsTTL, in.tlsrptRUA)
		groups = append(groups, rpt)
	}

	ech := dnsGroup{title: "ECH (required for ECH, RFC 9460 + RFC 9848): the HTTPS record with the ECH config list"}
	if in.httpsRR != "" {
		ech.notes = []string{in.echNote}
		add(&ech, true, "%s", in.httpsRR)
	} else {
		unknown(&ech, d, dns.TypeHTTPS, false, in.echNote)
	}
	groups = append(groups, ech)
	return groups, err
}

// txtStrings quotes a TXT value as character-strings of at most 255 bytes
// each (RFC 1035 §3.3.14; RFC 6376 §3.6.2.2 joins them again).
func txtStrings(v string) string {
	var parts []string
	for len(v) > 255 {
		parts = append(parts, `"`+v[:255]+`"`)
		v = v[255:]
	}
	return strings.Join(append(parts, `"`+v+`"`), " ")
}

// caaIssuerDomain is the issuer domain a CA documents for CAA (RFC 8659
// §4.2) for its ACME directory URL; for a CA not known here, the
// directory's host, with a note saying so.
func caaIssuerDomain(directory string) (domain string, known bool) {
	for _, ca := range []struct{ host, issuer string }{
		{"letsencrypt.org", "letsencrypt.org"},
		{"zerossl.com", "sectigo.com"},
		{"pki.goog", "pki.goog"},
		{"buypass.com", "buypass.com"},
		{"ssl.com", "ssl.com"},
	} {
		u, err := url.Parse(directory)
		if err == nil && (u.Hostname() == ca.host || strings.HasSuffix(u.Hostname(), "."+ca.host)) {
			return ca.issuer, true
		}
	}
	if u, err := url.Parse(directory); err == nil && u.Hostname() != "" {
		return u.Hostname(), false
	}
	return directory, false
}

// caaIssuers are the CAs of the acme settings: the first bound to the
// account (accountURL, "" if unknown), the fallback without (its account is
// made only when it is first needed).
func caaIssuers(cfg acme.Config, accountURL string) (issuers []caaIssuer, note string) {
	ca := cfg.CA
	if ca == "" {
		ca = acme.LetsEncrypt
	}
	var unknownCAs []string
	for i, dir := range []string{ca, cfg.FallbackCA} {
		if dir == "" || (i == 1 && dir == ca) {
			continue
		}
		domain, known := caaIssuerDomain(dir)
		if !known {
			unknownCAs = append(unknownCAs, dir)
		}
		c := caaIssuer{domain: domain}
		if i == 0 {
			c.accountURL = accountURL
		}
		issuers = append(issuers, c)
	}
	if len(unknownCAs) > 0 {
		note = fmt.Sprintf("The CAA issuer domain of %s is not known here; its host is used: check your CA's documentation.", strings.Join(unknownCAs, " and "))
	}
	return issuers, note
}

// publicAddresses are the global unicast, non-private addresses of this
// machine's interfaces: what the relay is reached at when it is not behind
// NAT.
func publicAddresses(ipv6 bool) (v4, v6 []net.IP, err error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, nil, fmt.Errorf("list the interfaces' addresses: %w", err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || !n.IP.IsGlobalUnicast() || n.IP.IsPrivate() {
			continue
		}
		if ip4 := n.IP.To4(); ip4 != nil {
			// 100.64.0.0/10 is carrier-grade NAT (RFC 6598), never public.
			if !(ip4[0] == 100 && ip4[1]&0xc0 == 64) {
				v4 = append(v4, ip4)
			}
		} else if ipv6 {
			v6 = append(v6, n.IP)
		}
	}
	return v4, v6, nil
}
