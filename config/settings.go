package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"chatmail-edge/internal/ini"

	"go.uber.org/zap/zapcore"

	"chatmail-edge/mail"
	"chatmail-edge/metadata"
)

// ErrConfig marks configuration errors (exit status exitConfig).
var ErrConfig = errors.New("configuration error")

const (
	DefaultFile        = "/etc/chatmail-edge/chatmail-edge.ini"
	DefaultChatmailINI = "/usr/local/lib/chatmaild/chatmail.ini"
)

// Settings is everything serve needs: the edge's own file on top of the
// relay's chatmail.ini.
type Settings struct {
	// [edge]
	ChatmailINI      string
	StateDir         string
	HTTPS            string
	IMAPS            string
	SMTPS            string
	HTTP             string
	HelloTimeout     time.Duration
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	BackendTimeout   time.Duration
	MaxConnections   int
	MaxHandshakes    int
	DrainTimeout     time.Duration
	ControlSocket    string
	LogLevel         string

	// Per-source limits, in [edge] too.
	MaxConnectionsPerAddress int
	MaxHandshakesPerAddress  int
	NewConnectionsPerAddress int
	ExemptNetworks           []netip.Prefix

	// setAt says where in the edge's file a key was set ("path:line"), for
	// errors that involve more than one key.
	setAt map[string]string

	// [ech]
	ECHPublicName   string
	ECHRetireGrace  time.Duration
	ECHMetadataFile string

	// [imap], [smtp]
	IMAPBackend BackendSettings
	SMTPBackend BackendSettings

	// [node]: see node.go.
	Node NodeSettings

	// [tls]
	TLSCert string
	TLSKey  string

	// [tls] and [acme]: see certs.go.
	Certs CertSettings

	// [web], [mta-sts], [admin]: see web_config.go.
	WebSettings

	// [store]: see store.go.
	Store StoreSettings

	// From chatmail.ini ([params]).
	MailDomain     string
	MaxMessageSize int64
	DisableIPv6    bool
	// MaxSMTPConnections is chatmail's limit of smtpd processes per
	// submission port, which full mode's Postfix PROXY service takes too.
	MaxSMTPConnections int
}

type BackendSettings struct {
	Mode    string // tls | proxy
	Address string
	MinTLS  uint16 // the lowest TLS version of its clients
}

// option is one documented key of the configuration file.
type option struct {
	section, key, def string
	doc               string
	set               func(s *Settings, v string) error
}

func str(p func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error { *p(s) = v; return nil }
}

// durationIn sets a duration from lo to hi. Every number in the file has
// bounds: a value far out of them is a typo, and would otherwise take the
// edge's memory (a huge limit) or its protection (a huge timeout).
func durationIn(lo, hi time.Duration, p func(*Settings) *time.Duration) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < lo || d > hi {
			return fmt.Errorf("want a duration from %v to %v (like 30s, 10m or 720h), got %q", lo, hi, v)
		}
		*p(s) = d
		return nil
	}
}

// intIn sets a whole number from lo to hi.
func intIn(lo, hi int, p func(*Settings) *int) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("want a whole number from %d to %d, got %q", lo, hi, v)
		}
		*p(s) = n
		return nil
	}
}

// networks sets a list of CIDR prefixes (or single addresses).
func networks(p func(*Settings) *[]netip.Prefix) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		list := []netip.Prefix{} // empty, not nil: no networks
		for _, f := range strings.Fields(v) {
			pfx, err := netip.ParsePrefix(f)
			if err != nil {
				a, aerr := netip.ParseAddr(f)
				if aerr != nil {
					return fmt.Errorf("want addresses or networks like 127.0.0.0/8 or 2001:db8::/48, got %q", f)
				}
				pfx = netip.PrefixFrom(a, a.BitLen())
			}
			list = append(list, pfx.Masked())
		}
		*p(s) = list
		return nil
	}
}

func address(p func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		if v != "" {
			if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
				return fmt.Errorf("want host:port (e.g. :443 or 127.0.0.1:993), got %q", v)
			}
		}
		*p(s) = v
		return nil
	}
}

// tlsVersion sets a lowest TLS version: 1.2 or 1.3 (what crypto/tls and
// ECH make sense of: ECH needs 1.3, RFC 9849 §4).
func tlsVersion(p func(*Settings) *uint16) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		switch v {
		case "1.2":
			*p(s) = tls.VersionTLS12
		case "1.3":
			*p(s) = tls.VersionTLS13
		default:
			return fmt.Errorf("want 1.2 or 1.3, got %q", v)
		}
		return nil
	}
}

func backendMode(p func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		if v != "tls" && v != "proxy" {
			return fmt.Errorf("want tls or proxy, got %q", v)
		}
		*p(s) = v
		return nil
	}
}

// options lists every key of the configuration file, in the order
// `config describe` prints them: the core's, the certificates', the
// node's, the web's.
// It is static data, never modified.
var options = slices.Concat(coreOptions, certOptions, nodeOptions, webOptions, storeOptions)

var coreOptions = []option{
	{"edge", "chatmail_ini", DefaultChatmailINI, "The relay's chatmail.ini; mail_domain, max_message_size and disable_ipv6 come from it.",
		str(func(s *Settings) *string { return &s.ChatmailINI })},
	{"edge", "state_dir", DefaultStateDir, "Folder for ECH keys, TLS session ticket keys and certificates (created 0700).",
		str(func(s *Settings) *string { return &s.StateDir })},
	{"edge", "https", ":443", "Listen address of HTTPS with IMAP and SMTP by ALPN. \":443\" is IPv4 and IPv6 (IPv4 only with disable_ipv6 in chatmail.ini).",
		address(func(s *Settings) *string { return &s.HTTPS })},
	{"edge", "imaps", "", "Listen address for implicit-TLS IMAP with ECH (e.g. :993). Empty leaves the port to Dovecot.",
		address(func(s *Settings) *string { return &s.IMAPS })},
	{"edge", "smtps", "", "Listen address for implicit-TLS submission with ECH (e.g. :465). Empty leaves the port to Postfix.",
		address(func(s *Settings) *string { return &s.SMTPS })},
	{"edge", "http", ":80", "Listen address of plain HTTP: ACME HTTP-01 answers, everything else redirects to HTTPS. Empty disables it.",
		address(func(s *Settings) *string { return &s.HTTP })},
	{"edge", "hello_timeout", "5s", "Longest time from accepting a connection until its whole TLS ClientHello has arrived. Until then it waits without a handshake slot; what cannot be TLS is refused from its first bytes (plaintext HTTP on the https port gets a 400).",
		durationIn(100*time.Millisecond, time.Minute, func(s *Settings) *time.Duration { return &s.HelloTimeout })},
	{"edge", "handshake_timeout", "15s", "Longest time from accepting a connection to the end of its TLS handshake, waiting for a slot included.",
		durationIn(time.Second, 5*time.Minute, func(s *Settings) *time.Duration { return &s.HandshakeTimeout })},
	{"edge", "idle_timeout", "30m", "A proxied IMAP/SMTP connection with no data either way for this long is closed. Dovecot's IDLE keepalive comes every 2m.",
		durationIn(10*time.Second, 24*time.Hour, func(s *Settings) *time.Duration { return &s.IdleTimeout })},
	{"edge", "backend_timeout", "5s", "Longest time to reach Dovecot or Postfix; after it the client gets IMAP BYE or SMTP 421.",
		durationIn(100*time.Millisecond, time.Minute, func(s *Settings) *time.Duration { return &s.BackendTimeout })},
	{"edge", "max_connections", "20000", "Connections in all stages together; more are refused. chatmail allows 10000 IMAP and 1000 SMTP connections. Each takes two open files (client and backend): the start fails if the open-file limit (LimitNOFILE) is too low for it.",
		intIn(1, 1_000_000, func(s *Settings) *int { return &s.MaxConnections })},
	{"edge", "max_handshakes", "256", "TLS handshakes computing at once; more wait in line, so a reconnect storm queues instead of thrashing. A handshake waiting for its client holds no slot.",
		intIn(1, 4096, func(s *Settings) *int { return &s.MaxHandshakes })},
	{"edge", "max_connections_per_address", "1000", "Connections one client address (IPv4, or IPv6 /64) may hold in all stages; more are refused with a reset, counted and logged (sampled). Room for a large NAT, far below Dovecot's limits.",
		intIn(1, 1_000_000, func(s *Settings) *int { return &s.MaxConnectionsPerAddress })},
	{"edge", "max_handshakes_per_address", "100", "Connections one address may have before their TLS handshake is done (sending their hello, in line, in the handshake); more are refused. Handshakes take turns between addresses, so one address cannot push others out of line.",
		intIn(1, 100_000, func(s *Settings) *int { return &s.MaxHandshakesPerAddress })},
	{"edge", "new_connections_per_address", "20", "New connections per second one address may open, with a burst of five seconds' worth; more are refused.",
		intIn(1, 100_000, func(s *Settings) *int { return &s.NewConnectionsPerAddress })},
	{"edge", "exempt_networks", "127.0.0.0/8 ::1", "Client networks the per-address limits do not apply to (space-separated CIDR prefixes). Empty exempts nothing.",
		networks(func(s *Settings) *[]netip.Prefix { return &s.ExemptNetworks })},
	{"edge", "drain_timeout", "30s", "How long established IMAP and SMTP sessions may go on after the edge stopped accepting. After an upgrade the old process keeps them for the first half untouched (the new one accepts meanwhile) and then says goodbye to them (IMAP BYE, SMTP 421 once no mail transaction is open), spread over the second half; at a stop or restart goodbyes start at once and wait only for transactions in progress. What remains at the end is closed. A stop waits for it, so the unit's TimeoutStopSec (90s) must stay above it.",
		durationIn(time.Second, MaxDrainTimeout, func(s *Settings) *time.Duration { return &s.DrainTimeout })},
	{"edge", "control_socket", "/run/chatmail-edge/control", "Unix socket (0600) on which `chatmail-edge upgrade` asks the running edge to hand its sockets to a new process of the binary. Empty: no upgrades that way (SIGUSR2 still starts one).",
		str(func(s *Settings) *string { return &s.ControlSocket })},
	{"edge", "log_level", "info", "debug, info, warn or error.",
		func(s *Settings, v string) error {
			if _, err := zapcore.ParseLevel(v); err != nil {
				return errors.New("want debug, info, warn or error")
			}
			s.LogLevel = v
			return nil
		}},
	{"ech", "public_name", "", "The ECH public_name (outer SNI) of new keys; empty means the mail domain. It needs a certificate, which the edge gets for it.",
		str(func(s *Settings) *string { return &s.ECHPublicName })},
	{"ech", "retire_grace", "720h", "`chatmail-edge ech retire` drops keys superseded longer ago than this. Clients holding an older config get retry configs while its key exists.",
		durationIn(time.Hour, 10*365*24*time.Hour, func(s *Settings) *time.Duration { return &s.ECHRetireGrace })},
	{"ech", "metadata_file", metadata.DefaultECHFile, "The published ECHConfigList, base64 on one line, rewritten atomically when the keys change: the metadata proxy answers the IMAP METADATA key /shared/vendor/deltachat/ech from it (docs/METADATA.md). Empty disables it.",
		str(func(s *Settings) *string { return &s.ECHMetadataFile })},
	{"imap", "backend", "tls", "tls: re-encrypt to Dovecot's implicit-TLS port (no Dovecot change). proxy: plaintext with a PROXY v2 header to a haproxy=yes listener (see docs/PROXY.md).",
		backendMode(func(s *Settings) *string { return &s.IMAPBackend.Mode })},
	{"imap", "address", "127.0.0.1:993", "Where Dovecot listens for the edge.",
		address(func(s *Settings) *string { return &s.IMAPBackend.Address })},
	{"imap", "min_tls", "1.3", "Lowest TLS version of IMAP clients, on imaps and on the https listener by ALPN: 1.3, as chatmail's Dovecot requires on 993, or 1.2. An older client gets a protocol_version alert.",
		tlsVersion(func(s *Settings) *uint16 { return &s.IMAPBackend.MinTLS })},
	{"smtp", "backend", "tls", "tls: re-encrypt to Postfix's smtps port (no Postfix change). proxy: plaintext with a PROXY v2 header to a service with smtpd_upstream_proxy_protocol=haproxy.",
		backendMode(func(s *Settings) *string { return &s.SMTPBackend.Mode })},
	{"smtp", "address", "127.0.0.1:465", "Where Postfix listens for the edge.",
		address(func(s *Settings) *string { return &s.SMTPBackend.Address })},
	{"smtp", "min_tls", "1.3", "Lowest TLS version of submission clients, on smtps and on the https listener by ALPN: 1.3, as chatmail's Postfix requires on 465, or 1.2. An older client gets a protocol_version alert.",
		tlsVersion(func(s *Settings) *uint16 { return &s.SMTPBackend.MinTLS })},
	{"tls", "cert", "", "PEM certificate chain to serve (with key), renewed by another program (chatmail's external mode). Empty: tls_external_cert_and_key from chatmail.ini; without it, a self-signed certificate for a mail_domain starting with _ or an IP address, else ACME (see [acme]).",
		str(func(s *Settings) *string { return &s.TLSCert })},
	{"tls", "key", "", "PEM private key of cert.",
		str(func(s *Settings) *string { return &s.TLSKey })},
}

// MaxDrainTimeout bounds [edge] drain_timeout.
const MaxDrainTimeout = time.Hour

// Load reads the edge's file (missing is fine unless required) and
// then chatmail.ini. Errors name the file and line.
func Load(path string, required bool) (*Settings, error) {
	f, err := ini.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !required:
		f = nil
	case err != nil:
		return nil, fmt.Errorf("%w: read %s: %v", ErrConfig, path, err)
	}
	return FromFile(f, "/")
}

// FromFile applies the edge's file f (nil: all defaults) and reads
// chatmail.ini below root ("/", or the folder `install --root` fills).
func FromFile(f *ini.File, root string) (*Settings, error) {
	return fromFiles(f, func(s *Settings) (*ini.File, error) {
		path := filepath.Join(root, s.ChatmailINI)
		cf, err := ini.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read chatmail.ini %s: %v", path, err)
		}
		return cf, nil
	})
}

// FromFiles is FromFile with chatmail.ini given (parsed): `install --mode
// node` checks the two files it is about to write.
func FromFiles(f, chatmailINI *ini.File) (*Settings, error) {
	return fromFiles(f, func(*Settings) (*ini.File, error) { return chatmailINI, nil })
}

func fromFiles(f *ini.File, chatmailINI func(*Settings) (*ini.File, error)) (*Settings, error) {
	s := &Settings{}
	setDefaults(s, options)
	if f != nil {
		if err := applyFile(s, f); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	cf, err := chatmailINI(s)
	if err == nil {
		err = s.applyChatmailINI(cf)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := s.nodeDefaults(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := s.checkStore(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if s.HelloTimeout > s.HandshakeTimeout {
		return nil, fmt.Errorf("%w: %s: hello_timeout %v is longer than handshake_timeout %v (%s)", ErrConfig,
			s.where("edge.hello_timeout"), s.HelloTimeout, s.HandshakeTimeout, s.where("edge.handshake_timeout"))
	}
	return s, nil
}

// setDefaults sets the default of each of opts.
func setDefaults(s *Settings, opts []option) {
	for _, o := range opts {
		if err := o.set(s, o.def); err != nil && o.def != "" {
			panic(fmt.Sprintf("default of %s.%s: %v", o.section, o.key, err))
		}
	}
}

// where is the place in the edge's file where key ("section.key") was
// set, or "default" when it was not.
func (s *Settings) where(key string) string {
	if at, ok := s.setAt[key]; ok {
		return at
	}
	return "default"
}

// fdReserve are the open files the edge needs besides its connections:
// listeners (up to five), the poller and its eventfd, the log, state and
// certificate files while they are read, the web side's upstream
// connections (per request, bounded by the HTTP connections, which count
// as connections) and the health probes: a few dozen.
const fdReserve = 64

// FitOpenFileLimit makes max_connections fit the open-file limit: every
// proxied connection takes two descriptors (client and backend), and past
// the limit accept fails for everyone. A value set in the file that does
// not fit fails the start; the default is lowered to fit, and the returned
// note says so.
func (s *Settings) FitOpenFileLimit(limit uint64) (note string, err error) {
	need := 2*uint64(s.MaxConnections) + fdReserve
	if need <= limit {
		return "", nil
	}
	if where, set := s.setAt["edge.max_connections"]; set {
		return "", fmt.Errorf("%w: %s: max_connections = %d needs %d open files (two per connection and %d more), but the open-file limit is %d: raise LimitNOFILE in the unit, or lower max_connections",
			ErrConfig, where, s.MaxConnections, need, fdReserve, limit)
	}
	if limit < 2+fdReserve {
		return "", fmt.Errorf("%w: the open-file limit %d leaves no room for connections: raise LimitNOFILE in the unit", ErrConfig, limit)
	}
	fit := int((limit - fdReserve) / 2)
	note = fmt.Sprintf("the open-file limit %d holds %d connections, not the default max_connections %d: using %d (raise LimitNOFILE or set max_connections)", limit, fit, s.MaxConnections, fit)
	s.MaxConnections = fit
	return note, nil
}

func applyFile(s *Settings, f *ini.File) error {
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
			if s.setAt == nil {
				s.setAt = map[string]string{}
			}
			s.setAt[sec.Name+"."+v.Key] = fmt.Sprintf("%s:%d", f.Path, v.Line)
		}
	}
	return nil
}

// maxMessageSizeLimit bounds chatmail.ini's max_message_size for the edge
// (bodies of /mxdeliv): 4 GiB, far above any mail server's limit.
const maxMessageSizeLimit = 4 << 30

// maxSMTPConnectionsLimit bounds chatmail.ini's max_smtp_connections (Postfix
// processes per port): far above what one machine runs.
const maxSMTPConnectionsLimit = 1_000_000

// applyChatmailINI takes what the edge needs from the relay's chatmail.ini.
func (s *Settings) applyChatmailINI(f *ini.File) error {
	path := f.Path
	get := func(key string) *ini.Value { return f.Get("params", key) }
	v := get("mail_domain")
	if v == nil || v.Value == "" {
		return fmt.Errorf("%s: mail_domain is missing in [params]", path)
	}
	s.MailDomain = strings.ToLower(v.Value)
	s.MaxMessageSize = 31457280 // chatmaild's default
	if v := get("max_message_size"); v != nil {
		n, err := strconv.ParseInt(v.Value, 10, 64)
		if err != nil || n <= 0 || n > maxMessageSizeLimit {
			return f.Errorf(v, "max_message_size: want a number of bytes from 1 to %d, got %q", maxMessageSizeLimit, v.Value)
		}
		s.MaxMessageSize = n
	}
	s.MaxSMTPConnections = mail.DefaultMaxSMTPConnections
	if v := get("max_smtp_connections"); v != nil {
		n, err := strconv.Atoi(v.Value)
		if err != nil || n < 1 || n > maxSMTPConnectionsLimit {
			return f.Errorf(v, "max_smtp_connections: want a whole number from 1 to %d, got %q", maxSMTPConnectionsLimit, v.Value)
		}
		s.MaxSMTPConnections = n
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

// Describe is the fully commented default configuration file.
func Describe() string {
	var b strings.Builder
	b.WriteString("# chatmail-edge configuration (" + DefaultFile + ").\n")
	b.WriteString("# Every key is optional; the values shown are the defaults. Lines starting\n")
	b.WriteString("# with # are comments. The relay's own Settings come from chatmail.ini.\n")
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

// ListenAddr keeps a wildcard listener on IPv4 only when chatmail.ini says
// disable_ipv6, as chatmail's nginx then leaves out its [::] listeners.
func (s *Settings) ListenAddr(addr string) string {
	if s.DisableIPv6 && strings.HasPrefix(addr, ":") {
		return "0.0.0.0" + addr
	}
	return addr
}

// HTTPSPort is the public HTTPS port, for redirects, URLs and DNS records.
func (s *Settings) HTTPSPort() int {
	if _, port, err := net.SplitHostPort(s.HTTPS); err == nil {
		if n, err := strconv.Atoi(port); err == nil && n > 0 {
			return n
		}
	}
	return 443
}

// DefaultStateDir is state_dir's default.
const DefaultStateDir = "/var/lib/chatmail-edge"

// StateDirOf reads just state_dir from the edge's configuration file at
// path, so that the `ech` commands work without chatmail.ini; without one,
// the default.
func StateDirOf(path string) string {
	if f, err := ini.ReadFile(path); err == nil {
		if v := f.Get("edge", "state_dir"); v != nil && v.Value != "" {
			return v.Value
		}
	}
	return DefaultStateDir
}

// Default is the default value of the key in section, as `config describe`
// shows it.
func Default(section, key string) (string, bool) {
	for _, o := range options {
		if o.section == section && o.key == key {
			return o.def, true
		}
	}
	return "", false
}
