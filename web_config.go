package main

import (
	"fmt"
	"strconv"
	"time"

	"chatmail-edge/web"
)

// webSettings are the keys of [web], [mta-sts] and [admin].
type webSettings struct {
	SiteDir           string
	NewAccountCGI     string
	MXDelivUpstream   string
	IrohRelayUpstream string
	UpstreamTimeout   time.Duration
	HeaderTimeout     time.Duration
	SendTimeout       time.Duration
	MTASTSMode        string
	MTASTSMaxAge      int
	AdminAddress      string
	ProbeInterval     time.Duration
}

func upstreamURL(p func(*settings) *string) func(*settings, string) error {
	return func(s *settings, v string) error {
		if v != "" {
			if _, err := web.ParseUpstream(v); err != nil {
				return err
			}
		}
		*p(s) = v
		return nil
	}
}

func loopbackAddress(p func(*settings) *string) func(*settings, string) error {
	return func(s *settings, v string) error {
		if v != "" {
			if err := checkLoopback(v); err != nil {
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
		str(func(s *settings) *string { return &s.SiteDir })},
	{"web", "new_account_cgi", "/usr/lib/cgi-bin/newemail.py", "chatmail's account creation script, run as a CGI script (RFC 3875) for POST /new and /cgi-bin/newemail.py; fcgiwrap is not needed.",
		str(func(s *settings) *string { return &s.NewAccountCGI })},
	{"web", "mxdeliv_upstream", "http://127.0.0.1:10082", "filtermail's HTTP delivery port, the fixed target of /mxdeliv (bodies up to max_message_size of chatmail.ini). Empty disables the path.",
		upstreamURL(func(s *settings) *string { return &s.MXDelivUpstream })},
	{"web", "iroh_relay_upstream", "http://127.0.0.1:3340", "iroh-relay, the fixed target of /relay (WebSocket and other Upgrades pass through), /ping and /generate_204. Empty disables them.",
		upstreamURL(func(s *settings) *string { return &s.IrohRelayUpstream })},
	{"web", "upstream_timeout", "60s", "Longest wait for an upstream's response headers; connecting is bounded by backend_timeout. Then the client gets 502.",
		durationIn(time.Second, 10*time.Minute, func(s *settings) *time.Duration { return &s.UpstreamTimeout })},
	{"web", "header_timeout", "10s", "Longest time to read an HTTP request's headers. Needs a restart.",
		durationIn(time.Second, 10*time.Minute, func(s *settings) *time.Duration { return &s.HeaderTimeout })},
	{"web", "send_timeout", "60s", "Longest wait for an HTTP client to take the next 32 KiB of a response (nginx's send_timeout); a client that stops reading is cut. One response lasts at most an hour. Needs a restart.",
		durationIn(time.Second, time.Hour, func(s *settings) *time.Duration { return &s.SendTimeout })},
	{"mta-sts", "mode", "enforce", "Mode of the MTA-STS policy served at https://mta-sts.<mail_domain>/.well-known/mta-sts.txt: enforce, testing or none (RFC 8461 §5). `chatmail-edge dns` prints the matching _mta-sts record.",
		func(s *settings, v string) error {
			if err := web.ValidMTASTSMode(v); err != nil {
				return err
			}
			s.MTASTSMode = v
			return nil
		}},
	{"mta-sts", "max_age", "2419200", "max_age of the MTA-STS policy in seconds (default 28 days, chatmail's; at most 31557600).",
		func(s *settings, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > 31557600 {
				return fmt.Errorf("want seconds from 1 to 31557600, got %q", v)
			}
			s.MTASTSMaxAge = n
			return nil
		}},
	{"admin", "address", "127.0.0.1:8081", "Loopback listener of the detailed status page (/) and Prometheus metrics (/metrics). Only loopback addresses are accepted. Empty disables it.",
		loopbackAddress(func(s *settings) *string { return &s.AdminAddress })},
	{"admin", "probe_interval", "30s", "How often Dovecot, Postfix (greeting plus CAPABILITY / EHLO), filtermail and iroh-relay are checked for the status page.",
		durationIn(time.Second, time.Hour, func(s *settings) *time.Duration { return &s.ProbeInterval })},
}

// webConfig is the web server's part of the settings.
// httpLimits are the web servers' timeouts.
func (s *settings) httpLimits() web.ServerLimits {
	return web.ServerLimits{HeaderTimeout: s.HeaderTimeout, SendTimeout: s.SendTimeout}
}

func (s *settings) webConfig() web.Config {
	return web.Config{
		SiteDir:             s.SiteDir,
		NewAccountCGI:       s.NewAccountCGI,
		MXDeliv:             s.MXDelivUpstream,
		IrohRelay:           s.IrohRelayUpstream,
		MaxMessageSize:      s.MaxMessageSize,
		UpstreamDialTimeout: s.BackendTimeout,
		UpstreamTimeout:     s.UpstreamTimeout,
		MTASTS:              web.MTASTSConfig{Mode: s.MTASTSMode, MaxAge: int64(s.MTASTSMaxAge)},
		ProbeInterval:       s.ProbeInterval,
	}
}
