package dnszone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// dnsQueryTimeout bounds one question to the resolver (UDP, then TCP when
// the answer was truncated).
const dnsQueryTimeout = 5 * time.Second

// systemResolver is the first nameserver of /etc/resolv.conf.
func systemResolver() (string, error) {
	cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return "", fmt.Errorf("read the system's resolver: %w", err)
	}
	if len(cfg.Servers) == 0 {
		return "", fmt.Errorf("no nameserver in /etc/resolv.conf: give --resolver")
	}
	return net.JoinHostPort(cfg.Servers[0], cfg.Port), nil
}

// lookup asks resolver for name's records of type t, recursively, with
// EDNS0 (RFC 6891) room for a DKIM key or an ECH config list, retrying
// over TCP if the answer was truncated (RFC 7766 §5). NXDOMAIN and an
// empty answer are both no records.
func lookup(ctx context.Context, resolver, name string, t uint16) ([]dns.RR, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), t)
	q.SetEdns0(4096, false)
	udp := &dns.Client{Net: "udp", Timeout: dnsQueryTimeout}
	in, _, err := udp.ExchangeContext(ctx, q, resolver)
	if err == nil && in.Truncated {
		tcp := &dns.Client{Net: "tcp", Timeout: dnsQueryTimeout}
		in, _, err = tcp.ExchangeContext(ctx, q, resolver)
	}
	if err != nil {
		return nil, fmt.Errorf("ask %s for %s %s: %w: %w", resolver, name, dns.TypeToString[t], errResolverUnreachable, err)
	}
	if in.Rcode != dns.RcodeSuccess && in.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("ask %s for %s %s: %s", resolver, name, dns.TypeToString[t], dns.RcodeToString[in.Rcode])
	}
	var rrs []dns.RR
	for _, rr := range in.Answer {
		if rr.Header().Rrtype == t && strings.EqualFold(rr.Header().Name, dns.Fqdn(name)) {
			rrs = append(rrs, rr)
		}
	}
	return rrs, nil
}

// errResolverUnreachable marks a question the resolver did not answer at
// all (as opposed to answering with an error code for one name).
var errResolverUnreachable = errors.New("no answer")

// dnsCheck is the verdict on one record.
type dnsCheck struct {
	status string   // ok, missing, differs, present, error
	found  []dns.RR // what was there instead, for differs and present
	err    error
}

// failed says whether the verdict fails --check: a required record that is
// missing, different or could not be asked for.
func (c dnsCheck) failed(r dnsRecord) bool {
	return r.required && c.status != "ok" && c.status != "present"
}

// checkRecord compares r with the resolver's answer. Records of one kind
// share a name and type with others (TXT at the domain: SPF and whatever
// else the owner publishes; CAA: one per CA), so r is compared only with
// those of its kind.
func checkRecord(ctx context.Context, resolver string, r dnsRecord) dnsCheck {
	rrs, err := lookup(ctx, resolver, r.name, r.rrtype)
	if err != nil {
		return dnsCheck{status: "error", err: err}
	}
	var same []dns.RR
	for _, rr := range rrs {
		if r.rr == nil || sameKind(r.rr, rr) {
			same = append(same, rr)
		}
	}
	switch {
	case len(same) == 0:
		return dnsCheck{status: "missing"}
	case r.rr == nil:
		return dnsCheck{status: "present", found: same}
	}
	for _, rr := range same {
		if equalRecords(r.rr, rr) {
			return dnsCheck{status: "ok"}
		}
	}
	return dnsCheck{status: "differs", found: same}
}

// sameKind says whether found is the kind of record want is: a TXT with
// the same version tag (v=spf1, v=DMARC1, v=STSv1, v=DKIM1, v=TLSRPTv1 are
// each the first tag, RFC 7208 §4.5, RFC 7489 §6.3, RFC 8461 §3.1, RFC 6376
// §3.6.1, RFC 8460 §3), a CAA for the same CA and tag (RFC 8659 §4.2);
// any other record of the type.
func sameKind(want, found dns.RR) bool {
	switch w := want.(type) {
	case *dns.TXT:
		f, ok := found.(*dns.TXT)
		return ok && txtTag(strings.Join(w.Txt, "")) == txtTag(strings.Join(f.Txt, ""))
	case *dns.CAA:
		f, ok := found.(*dns.CAA)
		return ok && strings.EqualFold(w.Tag, f.Tag) && caaIssuerOf(w.Value) == caaIssuerOf(f.Value)
	}
	return true
}

func txtTag(v string) string {
	tag, _, _ := strings.Cut(v, ";")
	tag, _, _ = strings.Cut(tag, " ")
	return strings.ToLower(strings.TrimSpace(tag))
}

func caaIssuerOf(v string) string {
	issuer, _, _ := strings.Cut(v, ";")
	return strings.ToLower(strings.TrimSpace(issuer))
}

// equalRecords compares the data of two records. TXT values are compared
// joined (how they are split into strings is the provider's choice) and
// with the spaces around tag separators ignored (RFC 6376 §3.2 and RFC
// 7489 §6.4 allow them).
func equalRecords(want, found dns.RR) bool {
	if w, ok := want.(*dns.TXT); ok {
		f, ok := found.(*dns.TXT)
		return ok && normalTXT(w.Txt) == normalTXT(f.Txt)
	}
	return dns.IsDuplicate(want, found)
}

func normalTXT(strs []string) string {
	parts := strings.Split(strings.Join(strs, ""), ";")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
	}
	return strings.TrimSuffix(strings.Join(parts, ";"), ";")
}

// checkZone asks resolver for every record of groups and prints one line
// per record. It returns how many required records failed.
func checkZone(ctx context.Context, w io.Writer, resolver string, groups []dnsGroup) int {
	failures := 0
	for _, g := range groups {
		for _, r := range g.records {
			c := checkRecord(ctx, resolver, r)
			kind := "recommended"
			if r.required {
				kind = "required"
			}
			if r.rr == nil {
				kind = "optional: " + r.unknown
			}
			switch c.status {
			case "ok":
				fmt.Fprintf(w, "ok        %s\n", r.text())
			case "present":
				fmt.Fprintf(w, "present   %s (not compared: %s)\n", r.text(), r.unknown)
			case "error":
				fmt.Fprintf(w, "error     %s [%s]: %v\n", r.text(), kind, c.err)
			default:
				fmt.Fprintf(w, "%-9s %s [%s]\n", c.status, r.text(), kind)
			}
			for _, rr := range c.found {
				if c.status == "differs" || c.status == "present" {
					fmt.Fprintf(w, "          found: %s\n", rdata(rr))
				}
			}
			if c.failed(r) {
				failures++
			}
			if errors.Is(c.err, errResolverUnreachable) {
				fmt.Fprintln(w, "; the resolver does not answer: the remaining records are not checked")
				return max(failures, 1)
			}
		}
	}
	return failures
}
