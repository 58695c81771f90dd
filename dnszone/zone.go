package dnszone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/ech"
	"chatmail-edge/web"
)

// dnsAccountURLTimeout bounds asking the CA for the account URL of the CAA
// record; without an answer the record goes without accounturi.
const dnsAccountURLTimeout = 30 * time.Second

// dnsECHTimeout bounds reading the ECH keys from the shared store.
const dnsECHTimeout = time.Minute

// Defaults of Options.
const (
	DefaultDKIMKey      = defaultDKIMKey
	DefaultDKIMSelector = defaultDKIMSelector
)

// Options are what the records need beyond the settings.
type Options struct {
	StateDir string // folder with the ECH keys; "" is the settings' state_dir
	// Shared is the store several nodes share ([store]): the ECH keys and
	// the ACME account are read there unless StateDir names a folder.
	Shared certmagic.Storage
	// IPv4 and IPv6 are the relay's public addresses; with none of either,
	// the interfaces' public addresses.
	IPv4, IPv6   []net.IP
	DKIMKey      string // the relay's DKIM private key (PEM)
	DKIMSelector string
	// AccountURL is the ACME account for the CAA record's accounturi; ""
	// asks the edge's ACME account for it.
	AccountURL string
	TLSRPTRUA  string // "" is mailto:tlsrpt@<mail_domain>
	Log        *zap.Logger
}

// Zone is every record a chatmail relay's zone needs (cmdeploy's zone,
// docs/chatmail-frontend.md §3) plus TLSRPT and the HTTPS record with the
// ECH config list, grouped and explained.
type Zone struct {
	Domain string
	groups []dnsGroup
}

// ErrNoName is Build's answer for a relay whose mail_domain is an IP
// address (chatmail's self mode with an address): clients are given the
// address, there is no name to publish records under.
var ErrNoName = errors.New("mail_domain is an IP address (chatmail's self mode): there is no DNS name, so no records to publish")

// Build gathers the records from the settings and what o adds.
func Build(s *config.Settings, o Options) (*Zone, error) {
	d := s.MailDomain
	if net.ParseIP(strings.Trim(d, "[]")) != nil {
		return nil, ErrNoName
	}
	place := ech.InFolder(ech.Dir(o.StateDir))
	if o.StateDir == "" {
		o.StateDir = s.StateDir
		place = ech.InFolder(ech.Dir(s.StateDir))
		if o.Shared != nil {
			place = ech.InStorage(o.Shared)
		}
	}
	if o.DKIMKey == "" {
		o.DKIMKey = defaultDKIMKey
	}
	if o.DKIMSelector == "" {
		o.DKIMSelector = defaultDKIMSelector
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	in := zoneInputs{domain: d, selfSigned: acme.IsSelfSignedDomain(d), dkim: readDKIMKey(o.DKIMSelector, o.DKIMKey)}
	if err := in.addresses(o.IPv4, o.IPv6, s.DisableIPv6); err != nil {
		return nil, err
	}
	if err := in.ech(place, s.HTTPSPort()); err != nil {
		return nil, err
	}
	if !in.selfSigned {
		in.mtaSTS = web.MTASTSRecord(d, web.MTASTSConfig{Mode: s.MTASTSMode, MaxAge: int64(s.MTASTSMaxAge)})
		in.tlsrptRUA = o.TLSRPTRUA
		if in.tlsrptRUA == "" {
			in.tlsrptRUA = "mailto:tlsrpt@" + d
		}
	}
	switch s.CertMode() {
	case "acme":
		url := o.AccountURL
		var why error
		if url == "" {
			url, why = accountURL(s, o.Shared, o.Log)
		}
		in.caa, in.caaNote = caaIssuers(s.ACME(), url)
		if why != nil {
			in.caaNote = strings.TrimSpace(in.caaNote + fmt.Sprintf(" No accounturi: the account URL is not known (%v); give --account-url.", why))
		}
	case "external":
		in.caaNote = "The certificate comes from another program ([tls] cert): add a CAA record for its CA."
	}
	groups, err := relayZone(in)
	if err != nil {
		return nil, err
	}
	return &Zone{Domain: d, groups: groups}, nil
}

// Print writes the readable form.
func (z *Zone) Print(w io.Writer) { printRecords(w, z.Domain, z.groups) }

// PrintZonefile writes a BIND master file ($ORIGIN, $TTL, absolute names;
// no SOA or NS: to $INCLUDE into the zone).
func (z *Zone) PrintZonefile(w io.Writer) { printZonefile(w, z.Domain, z.groups) }

// Check asks resolver for every record, writes ok, missing or differs for
// each, and returns how many required ones are not ok.
func (z *Zone) Check(ctx context.Context, w io.Writer, resolver string) int {
	return checkZone(ctx, w, resolver, z.groups)
}

// SystemResolver is the first nameserver of /etc/resolv.conf.
func SystemResolver() (string, error) { return systemResolver() }

// addresses are the given ones, else the interfaces' public ones.
func (in *zoneInputs) addresses(v4, v6 []net.IP, disableIPv6 bool) error {
	in.ipv4, in.ipv6 = v4, v6
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
func (in *zoneInputs) ech(place ech.Place, port int) error {
	ctx, cancel := context.WithTimeout(context.Background(), dnsECHTimeout)
	defer cancel()
	keys, err := ech.LoadFrom(ctx, place)
	if err != nil {
		return err
	}
	if keys.Current() == nil {
		in.echNote = fmt.Sprintf("No ECH key in %s yet: the edge makes one when it starts.", place)
		return nil
	}
	in.httpsRR = ech.HTTPSRecord(in.domain, port, []string{"h2", "http/1.1"}, dnsTTL, keys.ConfigList())
	in.echNote = fmt.Sprintf("The config list of the current key, config_id %d. Update it after `chatmail-edge ech rotate`.", keys.Current().Parsed().ConfigID)
	return nil
}

// accountURL is the edge's ACME account URL, as `acme account-url` gets it:
// the stored one, else acmetool's account or a new one, which asks the CA.
func accountURL(s *config.Settings, shared certmagic.Storage, log *zap.Logger) (string, error) {
	cfg := s.ACME()
	cfg.Storage = shared
	m, err := acme.NewManager(cfg, log.Named("acme"))
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
