package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"chatmail-edge/internal/ini"
)

// errConfig marks configuration errors (exit status exitConfig).
var errConfig = errors.New("configuration error")

const (
	defaultConfigFile  = "/etc/chatmail-edge/chatmail-edge.ini"
	defaultChatmailINI = "/usr/local/lib/chatmaild/chatmail.ini"
)

// settings is everything serve needs: the edge's own file on top of the
// relay's chatmail.ini.
type settings struct {
	// [edge]
	ChatmailINI      string
	StateDir         string
	HTTPS            string
	IMAPS            string
	SMTPS            string
	HTTP             string
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	BackendTimeout   time.Duration
	MaxConnections   int
	MaxHandshakes    int
	DrainTimeout     time.Duration
	ControlSocket    string
	LogLevel         string

	// [ech]
	ECHPublicName   string
	ECHRetireGrace  time.Duration
	ECHMetadataFile string

	// [imap], [smtp]
	IMAPBackend backendSettings
	SMTPBackend backendSettings

	// [tls]
	TLSCert string
	TLSKey  string

	// [tls] and [acme]: see certs.go.
	Certs certSettings

	// [web], [mta-sts], [admin]: see web_config.go.
	webSettings

	// From chatmail.ini ([params]).
	MailDomain     string
	MaxMessageSize int64
	DisableIPv6    bool
}

type backendSettings struct {
	Mode    string // tls | proxy
	Address string
}

// option is one documented key of the configuration file.
type option struct {
	section, key, def string
	doc               string
	set               func(s *settings, v string) error
}

func str(p func(*settings) *string) func(*settings, string) error {
	return func(s *settings, v string) error { *p(s) = v; return nil }
}

func duration(p func(*settings) *time.Duration) func(*settings, string) error {
	return func(s *settings, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("want a positive duration like 30s, 10m or 720h, got %q", v)
		}
		*p(s) = d
		return nil
	}
}

func positive(p func(*settings) *int) func(*settings, string) error {
	return func(s *settings, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return fmt.Errorf("want a positive whole number, got %q", v)
		}
		*p(s) = n
		return nil
	}
}

func address(p func(*settings) *string) func(*settings, string) error {
	return func(s *settings, v string) error {
		if v != "" {
			if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
				return fmt.Errorf("want host:port (e.g. :443 or 127.0.0.1:993), got %q", v)
			}
		}
		*p(s) = v
		return nil
	}
}

func backendMode(p func(*settings) *string) func(*settings, string) error {
	return func(s *settings, v string) error {
		if v != "tls" && v != "proxy" {
			return fmt.Errorf("want tls or proxy, got %q", v)
		}
		*p(s) = v
		return nil
	}
}

// options lists every key of the configuration file, in the order
// `config describe` prints them: the core's, the certificates', the web's.
// It is static data, never modified.
var options = slices.Concat(coreOptions, certOptions, webOptions)

var coreOptions = []option{
	{"edge", "chatmail_ini", defaultChatmailINI, "The relay's chatmail.ini; mail_domain, max_message_size and disable_ipv6 come from it.",
		str(func(s *settings) *string { return &s.ChatmailINI })},
	{"edge", "state_dir", "/var/lib/chatmail-edge", "Folder for ECH keys, TLS session ticket keys and certificates (created 0700).",
		str(func(s *settings) *string { return &s.StateDir })},
	{"edge", "https", ":443", "Listen address of HTTPS with IMAP and SMTP by ALPN. \":443\" is IPv4 and IPv6 (IPv4 only with disable_ipv6 in chatmail.ini).",
		address(func(s *settings) *string { return &s.HTTPS })},
	{"edge", "imaps", "", "Listen address for implicit-TLS IMAP with ECH (e.g. :993). Empty leaves the port to Dovecot.",
		address(func(s *settings) *string { return &s.IMAPS })},
	{"edge", "smtps", "", "Listen address for implicit-TLS submission with ECH (e.g. :465). Empty leaves the port to Postfix.",
		address(func(s *settings) *string { return &s.SMTPS })},
	{"edge", "http", ":80", "Listen address of plain HTTP: ACME HTTP-01 answers, everything else redirects to HTTPS. Empty disables it.",
		address(func(s *settings) *string { return &s.HTTP })},
	{"edge", "handshake_timeout", "15s", "Longest time from accepting a connection to the end of its TLS handshake.",
		duration(func(s *settings) *time.Duration { return &s.HandshakeTimeout })},
	{"edge", "idle_timeout", "30m", "A proxied IMAP/SMTP connection with no data either way for this long is closed. Dovecot's IDLE keepalive comes every 2m.",
		duration(func(s *settings) *time.Duration { return &s.IdleTimeout })},
	{"edge", "backend_timeout", "5s", "Longest time to reach Dovecot or Postfix; after it the client gets IMAP BYE or SMTP 421.",
		duration(func(s *settings) *time.Duration { return &s.BackendTimeout })},
	{"edge", "max_connections", "20000", "Connections in all stages together; more are refused. chatmail allows 10000 IMAP and 1000 SMTP connections.",
		positive(func(s *settings) *int { return &s.MaxConnections })},
	{"edge", "max_handshakes", "256", "TLS handshakes running at once; more wait in line, so a reconnect storm queues instead of thrashing.",
		positive(func(s *settings) *int { return &s.MaxHandshakes })},
	{"edge", "drain_timeout", "30s", "How long established IMAP and SMTP sessions may go on after the edge stopped accepting: in the old process after an upgrade (the new one accepts meanwhile) and at a stop or restart; what remains is closed then. At most 1h; a stop waits for it, so the unit's TimeoutStopSec (90s) must stay above it.",
		func(s *settings, v string) error {
			if err := duration(func(s *settings) *time.Duration { return &s.DrainTimeout })(s, v); err != nil {
				return err
			}
			if s.DrainTimeout > maxDrainTimeout {
				return fmt.Errorf("at most %v, got %v", maxDrainTimeout, s.DrainTimeout)
			}
			return nil
		}},
	{"edge", "control_socket", "/run/chatmail-edge/control", "Unix socket (0600) on which `chatmail-edge upgrade` asks the running edge to hand its sockets to a new process of the binary. Empty: no upgrades that way (SIGUSR2 still starts one).",
		str(func(s *settings) *string { return &s.ControlSocket })},
	{"edge", "log_level", "info", "debug, info, warn or error.",
		func(s *settings, v string) error {
			if _, err := newLogger(nil, v); err != nil {
				return errors.New("want debug, info, warn or error")
			}
			s.LogLevel = v
			return nil
		}},
	{"ech", "public_name", "", "The ECH public_name (outer SNI) of new keys; empty means the mail domain. It needs a certificate, which the edge gets for it.",
		str(func(s *settings) *string { return &s.ECHPublicName })},
	{"ech", "retire_grace", "720h", "`chatmail-edge ech retire` drops keys superseded longer ago than this. Clients holding an older config get retry configs while its key exists.",
		duration(func(s *settings) *time.Duration { return &s.ECHRetireGrace })},
	{"ech", "metadata_file", "/run/chatmail-edge/ech-config-list", "The published ECHConfigList, base64 on one line, rewritten atomically when the keys change: for chatmail's IMAP METADATA service (docs/AUTOCONFIG.md). Empty disables it.",
		str(func(s *settings) *string { return &s.ECHMetadataFile })},
	{"imap", "backend", "tls", "tls: re-encrypt to Dovecot's implicit-TLS port (no Dovecot change). proxy: plaintext with a PROXY v2 header to a haproxy=yes listener (see docs/PROXY.md).",
		backendMode(func(s *settings) *string { return &s.IMAPBackend.Mode })},
	{"imap", "address", "127.0.0.1:993", "Where Dovecot listens for the edge.",
		address(func(s *settings) *string { return &s.IMAPBackend.Address })},
	{"smtp", "backend", "tls", "tls: re-encrypt to Postfix's smtps port (no Postfix change). proxy: plaintext with a PROXY v2 header to a service with smtpd_upstream_proxy_protocol=haproxy.",
		backendMode(func(s *settings) *string { return &s.SMTPBackend.Mode })},
	{"smtp", "address", "127.0.0.1:465", "Where Postfix listens for the edge.",
		address(func(s *settings) *string { return &s.SMTPBackend.Address })},
	{"tls", "cert", "", "PEM certificate chain to serve (with key), renewed by another program (chatmail's external mode). Empty: tls_external_cert_and_key from chatmail.ini; without it, a self-signed certificate for a mail_domain starting with _ or an IP address, else ACME (see [acme]).",
		str(func(s *settings) *string { return &s.TLSCert })},
	{"tls", "key", "", "PEM private key of cert.",
		str(func(s *settings) *string { return &s.TLSKey })},
}

// maxDrainTimeout bounds [edge] drain_timeout.
const maxDrainTimeout = time.Hour

// loadSettings reads the edge's file (missing is fine unless required) and
// then chatmail.ini. Errors name the file and line.
func loadSettings(path string, required bool) (*settings, error) {
	f, err := ini.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !required:
		f = nil
	case err != nil:
		return nil, fmt.Errorf("%w: read %s: %v", errConfig, path, err)
	}
	return settingsFrom(f, "/")
}

// settingsFrom applies the edge's file f (nil: all defaults) and reads
// chatmail.ini below root ("/", or the folder `install --root` fills).
func settingsFrom(f *ini.File, root string) (*settings, error) {
	s := &settings{}
	for _, o := range options {
		if err := o.set(s, o.def); err != nil && o.def != "" {
			panic(fmt.Sprintf("default of %s.%s: %v", o.section, o.key, err))
		}
	}
	if f != nil {
		if err := applyFile(s, f); err != nil {
			return nil, fmt.Errorf("%w: %v", errConfig, err)
		}
	}
	if err := s.readChatmailINI(filepath.Join(root, s.ChatmailINI)); err != nil {
		return nil, fmt.Errorf("%w: %v", errConfig, err)
	}
	return s, nil
}

func applyFile(s *settings, f *ini.File) error {
	for _, sec := range f.Sections {
		known := false
		for _, v := range sec.Keys {
			var opt *option
			for i := range options {
				if options[i].section == sec.Name && options[i].key == v.Key {
					opt = &options[i]
				}
				known = known || options[i].section == sec.Name
			}
			if opt == nil {
				if !known {
					return f.Errorf(v, "unknown section [%s] (see `chatmail-edge config describe`)", sec.Name)
				}
				return f.Errorf(v, "unknown key %q in [%s] (see `chatmail-edge config describe`)", v.Key, sec.Name)
			}
			if err := opt.set(s, v.Value); err != nil {
				return f.Errorf(v, "%s: %v", v.Key, err)
			}
		}
	}
	return nil
}

// readChatmailINI takes what the edge needs from the relay's chatmail.ini.
func (s *settings) readChatmailINI(path string) error {
	f, err := ini.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read chatmail.ini %s: %v", path, err)
	}
	get := func(key string) *ini.Value { return f.Get("params", key) }
	v := get("mail_domain")
	if v == nil || v.Value == "" {
		return fmt.Errorf("%s: mail_domain is missing in [params]", path)
	}
	s.MailDomain = strings.ToLower(v.Value)
	s.MaxMessageSize = 31457280 // chatmaild's default
	if v := get("max_message_size"); v != nil {
		n, err := strconv.ParseInt(v.Value, 10, 64)
		if err != nil || n <= 0 {
			return f.Errorf(v, "max_message_size: want a positive number, got %q", v.Value)
		}
		s.MaxMessageSize = n
	}
	if v := get("disable_ipv6"); v != nil {
		s.DisableIPv6 = strings.EqualFold(v.Value, "true") || v.Value == "1" || strings.EqualFold(v.Value, "yes")
	}
	if v := get("tls_external_cert_and_key"); v != nil && s.TLSCert == "" {
		fields := strings.Fields(v.Value)
		if len(fields) != 2 {
			return f.Errorf(v, "tls_external_cert_and_key: want \"CERT KEY\", got %q", v.Value)
		}
		s.TLSCert, s.TLSKey = fields[0], fields[1]
	}
	return nil
}

// describeConfig is the fully commented default configuration file.
func describeConfig() string {
	var b strings.Builder
	b.WriteString("# chatmail-edge configuration (" + defaultConfigFile + ").\n")
	b.WriteString("# Every key is optional; the values shown are the defaults. Lines starting\n")
	b.WriteString("# with # are comments. The relay's own settings come from chatmail.ini.\n")
	section := ""
	for _, o := range options {
		if o.section != section {
			section = o.section
			fmt.Fprintf(&b, "\n[%s]\n", section)
		}
		for _, line := range wrap(o.doc, 76) {
			fmt.Fprintf(&b, "# %s\n", line)
		}
		fmt.Fprintf(&b, "#%s = %s\n\n", o.key, o.def)
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	return append(lines, line)
}
