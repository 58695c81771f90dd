// Package probe is the operator's end-to-end check of a running edge: it
// connects like a client would, with ECH, to HTTPS, IMAP and SMTP on every
// port, and reports what worked.
package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"chatmail-edge/mail"
)

// Options say what to probe and how.
type Options struct {
	Domain    string // the relay's mail domain: SNI and certificate name
	Connect   string // host or IP to dial; "" dials Domain
	HTTPSPort int
	IMAPSPort int
	SMTPSPort int
	// ECH is "auto" (fetch the config from /.well-known/origin-svcb first),
	// "off", or a base64 ECHConfigList.
	ECH      string
	RootCAs  *x509.CertPool // nil: the system roots
	User     string         // with Password: also log in / authenticate
	Password string
	// Timeout bounds the whole run (default 10 s): the ECH config fetch,
	// then the checks, which run at once. It is set as a deadline on every
	// connection, so no server can hold a check past it.
	Timeout time.Duration
}

// Check is the outcome of one connection.
type Check struct {
	Name       string    `json:"name"`
	Address    string    `json:"address"`
	ECH        string    `json:"ech"` // accepted, rejected, off
	ServerName string    `json:"server_name,omitempty"`
	ALPN       string    `json:"alpn,omitempty"`
	TLSVersion string    `json:"tls_version,omitempty"`
	CertName   string    `json:"cert_name,omitempty"`
	CertExpiry time.Time `json:"cert_expiry,omitzero"`
	LatencyMS  float64   `json:"latency_ms"`
	Detail     string    `json:"detail,omitempty"`
	OK         bool      `json:"ok"`
	Error      string    `json:"error,omitempty"`
}

// Report is every check of one run.
type Report struct {
	Domain        string  `json:"domain"`
	ECHConfigList string  `json:"ech_config_list,omitempty"` // base64, as used
	ECHSource     string  `json:"ech_source"`                // origin-svcb, given, off
	Checks        []Check `json:"checks"`
	OK            bool    `json:"ok"`
}

func (o *Options) host() string {
	if o.Connect != "" {
		return o.Connect
	}
	return o.Domain
}

func (o *Options) addr(port int) string { return net.JoinHostPort(o.host(), strconv.Itoa(port)) }

// DefaultTimeout bounds a run whose Options give no Timeout.
const DefaultTimeout = 10 * time.Second

// Run performs all checks within opts.Timeout; it never stops at a failed
// check, so the report shows everything that does and does not work.
func Run(ctx context.Context, opts Options) Report {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	r := Report{Domain: opts.Domain}
	var echList []byte
	switch opts.ECH {
	case "off":
		r.ECHSource = "off"
	case "auto", "":
		r.ECHSource = "origin-svcb"
		check, list := fetchECHConfig(ctx, &opts)
		r.Checks = append(r.Checks, check)
		echList = list
	default:
		r.ECHSource = "given"
		list, err := base64.StdEncoding.DecodeString(opts.ECH)
		if err != nil {
			r.Checks = append(r.Checks, Check{Name: "ech-config", ECH: "off", Error: "--ech is not base64: " + err.Error()})
		}
		echList = list
	}
	if echList != nil {
		r.ECHConfigList = base64.StdEncoding.EncodeToString(echList)
	}
	var creds *mail.Credentials
	if opts.User != "" {
		creds = &mail.Credentials{User: opts.User, Password: opts.Password}
	}
	checks := []struct {
		name  string
		port  int
		alpn  []string
		speak func(context.Context, *tls.Conn) (string, error)
	}{
		{"https", opts.HTTPSPort, []string{"h2", "http/1.1"}, func(ctx context.Context, c *tls.Conn) (string, error) {
			return checkHTTPS(ctx, &opts, c, echList)
		}},
		{"imap:" + strconv.Itoa(opts.IMAPSPort), opts.IMAPSPort, nil, imapCheck(creds)},
		{"imap:" + strconv.Itoa(opts.HTTPSPort), opts.HTTPSPort, []string{"imap"}, imapCheck(creds)},
		{"smtp:" + strconv.Itoa(opts.SMTPSPort), opts.SMTPSPort, nil, smtpCheck(creds)},
		{"smtp:" + strconv.Itoa(opts.HTTPSPort), opts.HTTPSPort, []string{"smtp"}, smtpCheck(creds)},
	}
	// At once, so that each has the time left and a slow service does not
	// take it from the others; the report keeps their order.
	results := make([]Check, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() { results[i] = runCheck(ctx, &opts, c.name, c.port, c.alpn, echList, c.speak) })
	}
	wg.Wait()
	r.Checks = append(r.Checks, results...)
	r.OK = true
	for _, c := range r.Checks {
		r.OK = r.OK && c.OK
	}
	return r
}

// dial opens a TLS connection as a Delta Chat client would: SNI = domain,
// the given ALPN, and ECH when a config list is given. The deadline of ctx
// is set on the connection first: it bounds the handshake and everything
// after it, whatever the server does.
func dial(ctx context.Context, opts *Options, port int, alpn []string, echList []byte) (*tls.Conn, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return nil, errors.New("dial without a deadline") // a bug of ours: Run sets one
	}
	raw, err := (&net.Dialer{Deadline: deadline}).DialContext(ctx, "tcp", opts.addr(port))
	if err != nil {
		return nil, fmt.Errorf("connect: %w", mail.WithContextErr(ctx, err))
	}
	if err := raw.SetDeadline(deadline); err != nil {
		raw.Close()
		return nil, fmt.Errorf("connect: %w", mail.WithContextErr(ctx, err))
	}
	c := tls.Client(raw, &tls.Config{
		ServerName:                     opts.Domain,
		RootCAs:                        opts.RootCAs,
		NextProtos:                     alpn,
		EncryptedClientHelloConfigList: echList,
	})
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		if rej, ok := errors.AsType[*tls.ECHRejectionError](err); ok {
			return nil, fmt.Errorf("TLS handshake: ECH rejected by the server (it offered %d bytes of retry configs: the config used is stale)", len(rej.RetryConfigList))
		}
		return nil, fmt.Errorf("TLS handshake: %w", mail.WithContextErr(ctx, err))
	}
	return c, nil
}

func runCheck(ctx context.Context, opts *Options, name string, port int, alpn []string, echList []byte, speak func(context.Context, *tls.Conn) (string, error)) (check Check) {
	check = Check{Name: name, Address: opts.addr(port), ECH: "off", ServerName: opts.Domain}
	start := time.Now()
	defer func() { check.LatencyMS = float64(time.Since(start).Microseconds()) / 1000 }()
	conn, err := dial(ctx, opts, port, alpn, echList)
	if err != nil {
		check.Error = err.Error()
		return check
	}
	defer conn.Close()
	describeTLS(&check, conn.ConnectionState(), echList != nil)
	detail, err := speak(ctx, conn)
	check.Detail = detail
	if err != nil {
		check.Error = err.Error()
		return check
	}
	if echList != nil && check.ECH != "accepted" {
		check.Error = "ECH was not accepted"
		return check
	}
	check.OK = true
	return check
}

func describeTLS(c *Check, cs tls.ConnectionState, echOffered bool) {
	switch {
	case cs.ECHAccepted:
		c.ECH = "accepted"
	case echOffered:
		c.ECH = "rejected"
	}
	c.ALPN = cs.NegotiatedProtocol
	c.TLSVersion = tls.VersionName(cs.Version)
	if len(cs.PeerCertificates) > 0 {
		leaf := cs.PeerCertificates[0]
		c.CertName = leaf.Subject.CommonName
		if len(leaf.DNSNames) > 0 {
			c.CertName = leaf.DNSNames[0]
		}
		c.CertExpiry = leaf.NotAfter
	}
}

func imapCheck(creds *mail.Credentials) func(context.Context, *tls.Conn) (string, error) {
	return func(ctx context.Context, c *tls.Conn) (string, error) {
		res, err := mail.CheckIMAP(ctx, c, creds)
		return describeMailCheck(res, creds, "INBOX"), err
	}
}

func smtpCheck(creds *mail.Credentials) func(context.Context, *tls.Conn) (string, error) {
	return func(ctx context.Context, c *tls.Conn) (string, error) {
		res, err := mail.CheckSMTP(ctx, c, "chatmail-edge-probe", creds)
		return describeMailCheck(res, creds, ""), err
	}
}

// maxGreetingShown bounds the greeting shown as a check's detail.
const maxGreetingShown = 60

func describeMailCheck(res mail.CheckResult, creds *mail.Credentials, mailbox string) string {
	d := printable(res.Greeting)
	if len(d) > maxGreetingShown {
		d = d[:maxGreetingShown] + "..."
	}
	if creds != nil && res.LoggedIn {
		d = "logged in as " + creds.User
		if mailbox != "" {
			d += fmt.Sprintf(", %s has %d messages", mailbox, res.Messages)
		}
	}
	return d
}

// fetchECHConfig gets the ECHConfigList from /.well-known/origin-svcb over
// plain TLS (there is no config yet to encrypt the hello with).
func fetchECHConfig(ctx context.Context, opts *Options) (Check, []byte) {
	var list []byte
	check := runCheck(ctx, opts, "ech-config", opts.HTTPSPort, []string{"http/1.1"}, nil, func(ctx context.Context, c *tls.Conn) (string, error) {
		doc, err := getOriginSVCB(ctx, opts, c)
		if err != nil {
			return "", err
		}
		list = doc
		return fmt.Sprintf("fetched %d-byte ECHConfigList from /.well-known/origin-svcb", len(doc)), nil
	})
	check.ECH = "off"
	return check, list
}

// checkHTTPS fetches the origin-svcb document through an ECH connection
// and checks it publishes the config the client used.
func checkHTTPS(ctx context.Context, opts *Options, c *tls.Conn, echList []byte) (string, error) {
	got, err := getOriginSVCB(ctx, opts, c)
	if err != nil {
		return "", err
	}
	if echList != nil && string(got) != string(echList) {
		return "", errors.New("/.well-known/origin-svcb publishes another ECH config than the one used")
	}
	return "GET /.well-known/origin-svcb: 200", nil
}

// getOriginSVCB does one HTTP request on c and returns the first endpoint's
// ech parameter (draft-ietf-tls-wkech §5).
func getOriginSVCB(ctx context.Context, opts *Options, c *tls.Conn) ([]byte, error) {
	tr := &http.Transport{
		DialTLSContext:    func(context.Context, string, string) (net.Conn, error) { return c, nil },
		ForceAttemptHTTP2: true,
	}
	defer tr.CloseIdleConnections()
	url := "https://" + net.JoinHostPort(opts.Domain, strconv.Itoa(opts.HTTPSPort)) + "/.well-known/origin-svcb"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("GET /.well-known/origin-svcb: %w", mail.WithContextErr(ctx, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /.well-known/origin-svcb: %s", resp.Status)
	}
	var doc struct {
		Endpoints []struct {
			Params struct {
				ECH string `json:"ech"`
			} `json:"params"`
		} `json:"endpoints"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 64<<10)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("parse /.well-known/origin-svcb: %w", mail.WithContextErr(ctx, err))
	}
	if len(doc.Endpoints) == 0 || doc.Endpoints[0].Params.ECH == "" {
		return nil, errors.New("/.well-known/origin-svcb has no ech parameter")
	}
	list, err := base64.StdEncoding.DecodeString(doc.Endpoints[0].Params.ECH)
	if err != nil {
		return nil, fmt.Errorf("/.well-known/origin-svcb: ech is not base64: %w", err)
	}
	return list, nil
}

// printable makes a server's text safe for a terminal: the line breaks of a
// multi-line reply become spaces, and what could start a control sequence
// (every other byte outside printable ASCII) becomes "?".
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n':
			return ' '
		case r < ' ' || r > '~':
			return '?'
		}
		return r
	}, s)
}
