package dnszone

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/ech"
	"chatmail-edge/internal/acmetest"
	"chatmail-edge/web"

	"github.com/miekg/dns"
)

// testAccountURL stands for the relay's ACME account where a test has no
// CA: given, `dns` asks none.
const testAccountURL = "https://acme-v02.api.letsencrypt.org/acme/acct/4711"

// TestDNSCommand: `dns` prints the _mta-sts record, whose id changes
// exactly when the served policy does, and the HTTPS record with the same
// ECH config list as `ech show`.
func TestDNSCommand(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if _, _, err := ech.Ensure(ech.Dir(state), "chat.example", 32, time.Now()); err != nil {
		t.Fatal(err)
	}
	dns := func(domain, extra string) string {
		t.Helper()
		chatmailINI := filepath.Join(dir, "chatmail.ini")
		os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = "+domain+"\n"), 0o644)
		path := filepath.Join(dir, "edge.ini")
		os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\nstate_dir = "+state+"\n"+extra), 0o644)
		var out, stderr bytes.Buffer
		if code := runDNS([]string{"--config", path, "--account-url", testAccountURL, "--ipv4", "192.0.2.1"}, &out, &stderr); code != 0 {
			t.Fatalf("dns exit %d: %s", code, stderr.String())
		}
		return out.String()
	}
	idOf := regexp.MustCompile(`(?m)^_mta-sts\.chat\.example\. 3600 IN TXT "v=STSv1; id=([A-Za-z0-9]{1,32})"$`)

	out := dns("chat.example", "")
	m := idOf.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no _mta-sts record:\n%s", out)
	}
	served := "version: STSv1\nmode: enforce\nmx: chat.example\nmax_age: 2419200\n"
	if m[1] != web.MTASTSPolicyID(served) {
		t.Fatalf("id %s is not that of the served policy", m[1])
	}
	if !strings.Contains(out, "mta-sts.chat.example. 3600 IN CNAME chat.example.\n") {
		t.Errorf("no mta-sts CNAME:\n%s", out)
	}
	wantHTTPS := `chat.example. 3600 IN HTTPS 1 . alpn="h2,http/1.1" ech="` + echShow(t, state) + `"`
	if !strings.Contains(out, wantHTTPS+"\n") {
		t.Fatalf("no HTTPS record %s in:\n%s", wantHTTPS, out)
	}

	// Same policy, same id; another policy, another id.
	if again := idOf.FindStringSubmatch(dns("chat.example", "")); again == nil || again[1] != m[1] {
		t.Fatalf("id changed without a policy change: %v", again)
	}
	testingID := idOf.FindStringSubmatch(dns("chat.example", "[mta-sts]\nmode = testing\n"))
	if testingID == nil || testingID[1] == m[1] {
		t.Fatalf("id did not change with the mode: %v", testingID)
	}
	if shorter := idOf.FindStringSubmatch(dns("chat.example", "[mta-sts]\nmax_age = 86400\n")); shorter == nil || shorter[1] == m[1] || shorter[1] == testingID[1] {
		t.Fatalf("id did not change with max_age: %v", shorter)
	}

	// chatmail's self mode has no CA certificate, so no MTA-STS, no CAA
	// and no TLS reports; the rest of the zone is the same.
	self := dns("_chat.example", "")
	for _, absent := range []string{"_mta-sts", "mta-sts.", " CAA ", "_smtp._tls"} {
		if strings.Contains(self, absent) {
			t.Errorf("self mode has %q:\n%s", absent, self)
		}
	}
	for _, present := range []string{"_chat.example. 3600 IN HTTPS", "_chat.example. 3600 IN MX 10 _chat.example.", "www._chat.example. 3600 IN CNAME _chat.example.", "_imaps._tcp._chat.example. 3600 IN SRV 0 1 993 _chat.example."} {
		if !strings.Contains(self, present) {
			t.Errorf("self mode lacks %q:\n%s", present, self)
		}
	}
	// An address for a domain: no name, no records.
	if out := dns("192.0.2.7", ""); strings.Contains(out, " IN ") || !strings.Contains(out, "IP address") {
		t.Errorf("IP self mode:\n%s", out)
	}
}

// dnsRelay is a relay's configuration for `dns`: chatmail.ini, the edge's
// config, ECH keys and a DKIM key as dkim-milter's deployer makes it.
type dnsRelay struct {
	dir, config, state, dkimFile string
	dkimPub                      []byte // DER SubjectPublicKeyInfo
}

func newDNSRelay(t *testing.T, domain, extra string) *dnsRelay {
	t.Helper()
	dir := t.TempDir()
	r := &dnsRelay{dir: dir, config: filepath.Join(dir, "edge.ini"), state: filepath.Join(dir, "state"), dkimFile: filepath.Join(dir, "opendkim.private")}
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	mustWrite(t, chatmailINI, "[params]\nmail_domain = "+domain+"\n")
	mustWrite(t, r.config, "[edge]\nchatmail_ini = "+chatmailINI+"\nstate_dir = "+r.state+"\n"+extra)
	if _, _, err := ech.Ensure(ech.Dir(r.state), domain, 32, time.Now()); err != nil {
		t.Fatal(err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	mustWrite(t, r.dkimFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	r.dkimPub, _ = x509.MarshalPKIXPublicKey(&key.PublicKey)
	return r
}

func mustWrite(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// dns runs the command with the relay's config and key; code is its exit
// status.
func (r *dnsRelay) dns(t *testing.T, args ...string) (out string, code int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code = runDNS(append([]string{"--config", r.config, "--dkim-key", r.dkimFile}, args...), &stdout, &stderr)
	if code != 0 && code != 1 {
		t.Fatalf("dns %v: exit %d: %s", args, code, stderr.String())
	}
	return stdout.String(), code
}

// records parses the record lines of out (comment and directive lines
// left out), one presentation-form line each.
func records(t *testing.T, out string) []dns.RR {
	t.Helper()
	var rrs []dns.RR
	for line := range strings.Lines(out) {
		if line = strings.TrimSpace(line); line == "" || line[0] == ';' || line[0] == '$' {
			continue
		}
		rr, err := dns.NewRR(line)
		if err != nil {
			t.Fatalf("record line %q: %v", line, err)
		}
		rrs = append(rrs, rr)
	}
	return rrs
}

// TestDNSRecords: the zone of a relay in acme mode whose account acmetool
// made: every record of cmdeploy's zone, TLSRPT and HTTPS, with the DKIM
// key derived from the relay's key and the account URL the CA gave.
func TestDNSRecords(t *testing.T) {
	const d = "chat.example"
	pebble := acmetest.Start(t, acmetest.Options{})
	pebble.Validate(acmetest.StartDNS(t), 80, 443) // it validates nothing here
	r := newDNSRelay(t, d, "")
	relay := acmetest.NewRelay(t, filepath.Join(r.dir, "acmetool"), pebble.URL, d)
	accountURL := pebble.RegisterAccount(t, relay.AccountKey)
	os.WriteFile(r.config, []byte(mustRead(t, r.config)+"[acme]\nacmetool = "+relay.Dir+"\n"), 0o600) // fallback_ca: ZeroSSL

	out, code := r.dns(t, "--ipv4", "192.0.2.1,192.0.2.2", "--ipv6", "2001:db8::1", "--acme-ca", pebble.URL, "--acme-ca-root", pebble.RootFile)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	show := echShow(t, r.state)
	dkim := "v=DKIM1;k=rsa;p=" + base64.StdEncoding.EncodeToString(r.dkimPub) + ";s=email;t=s"
	pebbleURL, err := url.Parse(pebble.URL)
	if err != nil {
		t.Fatal(err)
	}
	pebbleHost := pebbleURL.Hostname() // no CAA issuer domain is known for it
	want := []string{
		"chat.example. 3600 IN A 192.0.2.1",
		"chat.example. 3600 IN A 192.0.2.2",
		"chat.example. 3600 IN AAAA 2001:db8::1",
		"chat.example. 3600 IN MX 10 chat.example.",
		"mta-sts.chat.example. 3600 IN CNAME chat.example.",
		"www.chat.example. 3600 IN CNAME chat.example.",
		`chat.example. 3600 IN TXT "v=spf1 a ~all"`,
		`_dmarc.chat.example. 3600 IN TXT "v=DMARC1;p=reject;adkim=s;aspf=s"`,
		`_adsp._domainkey.chat.example. 3600 IN TXT "dkim=discardable"`,
		`chat.example. 3600 IN CAA 0 issue "` + pebbleHost + `;accounturi=` + accountURL + `"`,
		`chat.example. 3600 IN CAA 0 issue "sectigo.com"`,
		"_submission._tcp.chat.example. 3600 IN SRV 0 1 587 chat.example.",
		"_submissions._tcp.chat.example. 3600 IN SRV 0 1 465 chat.example.",
		"_imap._tcp.chat.example. 3600 IN SRV 0 1 143 chat.example.",
		"_imaps._tcp.chat.example. 3600 IN SRV 0 1 993 chat.example.",
		`_smtp._tls.chat.example. 3600 IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@chat.example"`,
		`chat.example. 3600 IN HTTPS 1 . alpn="h2,http/1.1" ech="` + show + `"`,
	}
	var got []string
	for _, rr := range records(t, out) {
		switch rr := rr.(type) {
		case *dns.TXT:
			if strings.HasPrefix(rr.Txt[0], "v=STSv1; id=") && rr.Hdr.Name == "_mta-sts.chat.example." {
				continue // TestDNSCommand checks the id
			}
			if rr.Hdr.Name == "opendkim._domainkey.chat.example." {
				if strings.Join(rr.Txt, "") != dkim {
					t.Errorf("DKIM record %v, want %s", rr.Txt, dkim)
				}
				for _, s := range rr.Txt {
					if len(s) > 255 {
						t.Errorf("DKIM string of %d bytes (at most 255)", len(s))
					}
				}
				continue
			}
		}
		got = append(got, strings.Join(strings.Fields(rr.Header().String()), " ")+" "+rdata(rr))
	}
	// miekg/dns prints CAA values and TXT strings as we do; compare sets.
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("records:\n%s\nwant:\n%s\noutput:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"), out)
	}
	if !strings.Contains(out, "\nopendkim._domainkey.chat.example. 3600 IN TXT") || !strings.Contains(out, "_mta-sts.chat.example. 3600 IN TXT") {
		t.Errorf("no DKIM or MTA-STS record:\n%s", out)
	}
	if !strings.Contains(out, "; The CAA issuer domain of "+pebble.URL+" is not known here") {
		t.Errorf("no note on the unknown CA:\n%s", out)
	}
}

// TestDNSZonefile: --zonefile is a master file that miekg/dns's zone
// parser reads back into exactly the records of the readable output.
func TestDNSZonefile(t *testing.T) {
	r := newDNSRelay(t, "chat.example", "")
	args := []string{"--ipv4", "192.0.2.1", "--ipv6", "2001:db8::1", "--account-url", testAccountURL}
	readable, _ := r.dns(t, args...)
	zone, code := r.dns(t, append(args, "--zonefile")...)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, directive := range []string{"\n$ORIGIN chat.example.\n", "\n$TTL 3600\n"} {
		if !strings.Contains(zone, directive) {
			t.Errorf("no %q in:\n%s", directive, zone)
		}
	}
	parsed := parseZone(t, zone)
	want := records(t, readable)
	if len(parsed) != len(want) || len(want) < 17 {
		t.Fatalf("zone file has %d records, the readable output %d:\n%s", len(parsed), len(want), zone)
	}
	for i := range want {
		if !dns.IsDuplicate(parsed[i], want[i]) {
			t.Errorf("record %d: zone file %s, readable output %s", i, parsed[i], want[i])
		}
	}
	// Absolute names: the records mean the same under any $ORIGIN.
	for line := range strings.Lines(zone) {
		if f := strings.Fields(line); len(f) > 0 && f[0][0] != ';' && f[0][0] != '$' && !strings.HasSuffix(f[0], ".") {
			t.Errorf("relative name in %q", line)
		}
	}
}

// parseZone reads a master file with miekg/dns's zone parser.
func parseZone(t *testing.T, zone string) []dns.RR {
	t.Helper()
	zp := dns.NewZoneParser(strings.NewReader(zone), "", "")
	var rrs []dns.RR
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		rrs = append(rrs, rr)
	}
	if err := zp.Err(); err != nil {
		t.Fatalf("zone parser: %v\n%s", err, zone)
	}
	return rrs
}

// serveZone answers queries from rrs over UDP on 127.0.0.1, as an
// authoritative server would (NXDOMAIN for a name it does not have).
func serveZone(t *testing.T, rrs []dns.RR) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		m.Rcode = dns.RcodeNameError
		for _, rr := range rrs {
			if strings.EqualFold(rr.Header().Name, q.Question[0].Name) {
				m.Rcode = dns.RcodeSuccess
				if rr.Header().Rrtype == q.Question[0].Qtype {
					m.Answer = append(m.Answer, rr)
				}
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// TestDNSCheck: --check against a server with exactly the printed zone
// finds every record; with a stale ech= and no MX it names both and
// fails; a DKIM key it cannot read makes DKIM optional.
func TestDNSCheck(t *testing.T) {
	r := newDNSRelay(t, "chat.example", "")
	args := []string{"--ipv4", "192.0.2.1", "--ipv6", "2001:db8::1", "--account-url", testAccountURL}
	zone, _ := r.dns(t, append(args, "--zonefile")...)
	rrs := parseZone(t, zone)

	out, code := r.dns(t, append(args, "--check", "--resolver", serveZone(t, rrs))...)
	if code != 0 {
		t.Fatalf("check of the printed zone: exit %d:\n%s", code, out)
	}
	if n := strings.Count(out, "\nok "); n != len(rrs) || strings.Contains(out, "\nmissing") || strings.Contains(out, "\ndiffers") {
		t.Fatalf("%d of %d records ok:\n%s", n, len(rrs), out)
	}

	// Another ECH key's config list, and no MX.
	other := t.TempDir()
	keys, _, err := ech.Ensure(filepath.Join(other, "ech"), "chat.example", 32, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	staleHTTPS := ech.HTTPSRecord("chat.example", 443, []string{"h2", "http/1.1"}, 3600, keys.ConfigList())
	var broken []dns.RR
	for _, rr := range rrs {
		switch rr.Header().Rrtype {
		case dns.TypeMX:
			continue
		case dns.TypeHTTPS:
			if rr, err = dns.NewRR(staleHTTPS); err != nil {
				t.Fatal(err)
			}
		}
		broken = append(broken, rr)
	}
	out, code = r.dns(t, append(args, "--check", "--resolver", serveZone(t, broken))...)
	if code != 1 {
		t.Fatalf("check of a broken zone: exit %d, want 1:\n%s", code, out)
	}
	wantLines := []string{
		"\nmissing   chat.example. 3600 IN MX 10 chat.example. [required]\n",
		"\ndiffers   chat.example. 3600 IN HTTPS 1 . alpn=\"h2,http/1.1\" ech=\"",
		"\n          found: 1 . alpn=\"h2,http/1.1\" ech=\"" + base64.StdEncoding.EncodeToString(keys.ConfigList()) + "\"\n",
		"\n; 2 required record(s) missing or wrong\n",
	}
	for _, want := range wantLines {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}

	// A resolver that does not answer: one error, not one per record.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	out, code = r.dns(t, append(args, "--check", "--resolver", closed)...)
	if code != 1 || strings.Count(out, "\nerror ") != 1 || !strings.Contains(out, "; the resolver does not answer") {
		t.Fatalf("check without a resolver: exit %d:\n%s", code, out)
	}

	// The DKIM key not readable and no DKIM record: reported, not failed.
	var noDKIM []dns.RR
	for _, rr := range rrs {
		if !strings.HasPrefix(rr.Header().Name, "opendkim._domainkey.") {
			noDKIM = append(noDKIM, rr)
		}
	}
	r.dkimFile = filepath.Join(r.dir, "absent.private")
	out, code = r.dns(t, append(args, "--check", "--resolver", serveZone(t, noDKIM))...)
	if code != 0 || !strings.Contains(out, "\nmissing   opendkim._domainkey.chat.example. 3600 IN TXT [optional: DKIM key not readable") {
		t.Fatalf("unreadable DKIM key: exit %d:\n%s", code, out)
	}
}

// echShow is what `ech show --state state` prints, without its newline.
func echShow(t *testing.T, state string) string {
	t.Helper()
	set, err := ech.Load(ech.Dir(state))
	if err != nil || set.Current() == nil {
		t.Fatalf("ECH keys in %s: %v", state, err)
	}
	return set.Base64()
}

// runDNS is `chatmail-edge dns` with the flags the tests use, and its exit
// status: 1 when a --check finds a required record not ok.
func runDNS(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dns", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFile := fs.String("config", config.DefaultFile, "")
	var o Options
	fs.StringVar(&o.StateDir, "state", "", "")
	fs.StringVar(&o.DKIMKey, "dkim-key", DefaultDKIMKey, "")
	fs.StringVar(&o.AccountURL, "account-url", "", "")
	ipv4 := fs.String("ipv4", "", "")
	ipv6 := fs.String("ipv6", "", "")
	ca, caRoot := fs.String("acme-ca", "", ""), fs.String("acme-ca-root", "", "")
	zonefile, check := fs.Bool("zonefile", false, ""), fs.Bool("check", false, "")
	resolver := fs.String("resolver", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for _, a := range strings.FieldsFunc(*ipv4, func(r rune) bool { return r == ',' }) {
		o.IPv4 = append(o.IPv4, net.ParseIP(a))
	}
	for _, a := range strings.FieldsFunc(*ipv6, func(r rune) bool { return r == ',' }) {
		o.IPv6 = append(o.IPv6, net.ParseIP(a))
	}
	s, err := config.Load(*cfgFile, true)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 78
	}
	if *ca != "" {
		s.Certs.CA, s.Certs.CARoot = *ca, *caRoot
	}
	zone, err := Build(s, o)
	if errors.Is(err, ErrNoName) {
		fmt.Fprintf(stdout, "; mail_domain %s: %v.\n", s.MailDomain, err)
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	switch {
	case *check:
		fmt.Fprintf(stdout, "; DNS records for %s as %s answers\n", zone.Domain, *resolver)
		if n := zone.Check(context.Background(), stdout, *resolver); n > 0 {
			fmt.Fprintf(stdout, "; %d required record(s) missing or wrong\n", n)
			return 1
		}
	case *zonefile:
		zone.PrintZonefile(stdout)
	default:
		zone.Print(stdout)
	}
	return 0
}
func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
