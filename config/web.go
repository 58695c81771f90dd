package config

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"
)

// WebSettings are the keys of [web], [mta-sts] and [admin].
type WebSettings struct {
	SiteDir           string
	NewAccountCGI     string
	MXDelivUpstream   string
	IrohRelayUpstream string
	UpstreamTimeout   time.Duration
	HeaderTimeout     time.Duration
	SendTimeout       time.Duration
	AccessLog         bool
	MinTLS            uint16
	MTASTSMode        string
	MTASTSMaxAge      int
	AdminAddress      string
	ProbeInterval     time.Duration
}

func upstreamURL(p func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		if v != "" {
			if _, err := ParseUpstream(v); err != nil {
				return err
			}
		}
		*p(s) = v
		return nil
	}
}

func loopbackAddress(p func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		if v != "" {
			if err := CheckLoopback(v); err != nil {
				return err
			}
		}
		*p(s) = v
		return nil
	}
}

// webOptions document the keys of the web side; config.go lists them last.
var webOptions = []option{
	{"web", "site_dir", "/var/www/html", "The relay's website folder (index.html, $uri/ fallback, as chatmail's nginx). While it does not exist a small built-in page is served.",
		str(func(s *Settings) *string { return &s.SiteDir })},
	{"web", "new_account_cgi", "/usr/lib/cgi-bin/newemail.py", "chatmail's account creation script, run as a CGI script (RFC 3875) for POST /new and /cgi-bin/newemail.py; fcgiwrap is not needed.",
		str(func(s *Settings) *string { return &s.NewAccountCGI })},
	{"web", "mxdeliv_upstream", "http://127.0.0.1:10082", "filtermail's HTTP delivery port, the fixed target of /mxdeliv (bodies up to max_message_size of chatmail.ini). Empty disables the path.",
		upstreamURL(func(s *Settings) *string { return &s.MXDelivUpstream })},
	{"web", "iroh_relay_upstream", "http://127.0.0.1:3340", "iroh-relay, the fixed target of /relay (WebSocket and other Upgrades pass through), /ping and /generate_204. Empty disables them.",
		upstreamURL(func(s *Settings) *string { return &s.IrohRelayUpstream })},
	{"web", "upstream_timeout", "60s", "Longest wait for an upstream's response headers; connecting is bounded by backend_timeout. Then the client gets 502.",
		durationIn(time.Second, 10*time.Minute, func(s *Settings) *time.Duration { return &s.UpstreamTimeout })},
	{"web", "header_timeout", "10s", "Longest time to read an HTTP request's headers. Needs a restart.",
		durationIn(time.Second, 10*time.Minute, func(s *Settings) *time.Duration { return &s.HeaderTimeout })},
	{"web", "send_timeout", "60s", "Longest wait for an HTTP client to take the next 32 KiB of a response (nginx's send_timeout); a client that stops reading is cut. One response lasts at most an hour. Needs a restart.",
		durationIn(time.Second, time.Hour, func(s *Settings) *time.Duration { return &s.SendTimeout })},
	{"web", "min_tls", "1.2", "Lowest TLS version of web clients on the https listener (ALPN h2, http/1.1 or none): 1.2, as chatmail's nginx (older browsers and MTA-STS policy fetchers use it), or 1.3. A TLS 1.2 client never gets ECH, which needs 1.3. TLS agrees on the version before the protocol, so the edge takes the route, and with it the minimum, from the ClientHello's ALPN list: a TLS 1.2 hello that asks for imap gets [imap] min_tls.",
		tlsVersion(func(s *Settings) *uint16 { return &s.MinTLS })},
	{"web", "access_log", "off", "on: one line per HTTP request (HTTPS and the plain-HTTP redirect) in nginx's combined format ($remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"), as an info entry of the edge's log named \"access\" with the edge's connection id (conn), which systemd puts into the journal: journalctl -u chatmail-edge | grep access. Client-given fields are escaped as nginx does and cut at 2 KiB. off: none (chatmail's nginx logged to syslog, facility local7). A log_level above info drops them too.",
		func(s *Settings, v string) error {
			switch v {
			case "on":
				s.AccessLog = true
			case "off":
				s.AccessLog = false
			default:
				return fmt.Errorf("want on or off, got %q", v)
			}
			return nil
		}},
	{"mta-sts", "mode", "enforce", "Mode of the MTA-STS policy served at https://mta-sts.<mail_domain>/.well-known/mta-sts.txt: enforce, testing or none (RFC 8461 §5). `chatmail-edge dns` prints the matching _mta-sts record.",
		func(s *Settings, v string) error {
			if err := ValidMTASTSMode(v); err != nil {
				return err
			}
			s.MTASTSMode = v
			return nil
		}},
	{"mta-sts", "max_age", "2419200", "max_age of the MTA-STS policy in seconds (default 28 days, chatmail's; at most 31557600).",
		func(s *Settings, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > 31557600 {
				return fmt.Errorf("want seconds from 1 to 31557600, got %q", v)
			}
			s.MTASTSMaxAge = n
			return nil
		}},
	{"admin", "address", "127.0.0.1:8081", "Loopback listener of the detailed status page (/) and Prometheus metrics (/metrics). Only loopback addresses are accepted. Empty disables it.",
		loopbackAddress(func(s *Settings) *string { return &s.AdminAddress })},
	{"admin", "probe_interval", "30s", "How often Dovecot, Postfix (greeting plus CAPABILITY / EHLO), filtermail and iroh-relay are checked for the status page.",
		durationIn(time.Second, time.Hour, func(s *Settings) *time.Duration { return &s.ProbeInterval })},
}

// webConfig is the web server's part of the Settings.
// ParseUpstream parses an upstream's URL: http://host:port, nothing else
// (upstreams are fixed by the configuration, never taken from a request).
func ParseUpstream(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("want http://host:port, got %q", rawURL)
	}
	u.Path = ""
	return u, nil
}

// ValidMTASTSMode checks an MTA-STS policy mode (RFC 8461 §5).
func ValidMTASTSMode(mode string) error {
	switch mode {
	case "enforce", "testing", "none":
		return nil
	}
	return fmt.Errorf("MTA-STS mode %q: want enforce, testing or none", mode)
}

// CheckLoopback accepts host:port with a loopback IP (127.0.0.0/8, ::1) or
// "localhost"; anything else could expose the admin pages.
func CheckLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("want a loopback host:port like 127.0.0.1:8081, got %q", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address (127.0.0.1, ::1 or localhost): the admin pages must not be public", addr)
	}
	return nil
}
