package config

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// NodeSettings are the keys of [node]: an edge that does not run on the
// relay but in front of it, elsewhere (docs/NODES.md).
type NodeSettings struct {
	Relay     string // host name or IP address; "" when this edge runs on the relay
	Connect   string // NodeConnectTLS or NodeConnectProxy
	IMAPPort  int    // 0: the default of Connect
	SMTPPort  int
	HTTPSPort int
	CAFile    string // "" trusts the system's roots
	Name      string // "" is the host name
}

// How a node reaches the relay's Dovecot and Postfix.
const (
	NodeConnectTLS   = "tls"
	NodeConnectProxy = "proxy"
)

// The relay's ports for nodes. In tls mode they are chatmail's own
// implicit-TLS ports; in proxy mode the listeners docs/NODES.md adds for
// nodes (a PROXY v2 header, then TLS), next to chatmail's, which keep
// serving clients that come directly.
const (
	NodeTLSIMAPPort   = 993
	NodeTLSSMTPPort   = 465
	NodeProxyIMAPPort = 11993
	NodeProxySMTPPort = 11465
)

// nodeOptions document [node]; settings.go lists them after the certificates'.
var nodeOptions = []option{
	{"node", "relay", "", "The relay this edge is a node of: a host name or IP address at which this machine reaches it. Not the mail domain, whose DNS records name the nodes. Empty: this edge runs on the relay. Set, IMAP and SMTP go on to the relay as connect says, and HTTPS requests to its https_port, both over TLS with its certificate verified for mail_domain, within backend_timeout (connect and handshake) and upstream_timeout (the answer); [imap], [smtp] and the [web] upstreams, site and CGI are not used. A node listens on imaps :993 and smtps :465 unless [edge] says otherwise, and exports no certificate ([acme] export_cert, export_key and reload default to empty). Whether relay is set needs a restart; the other [node] keys a reload applies. docs/NODES.md has the relay's side.",
		func(s *Settings, v string) error {
			if v != "" && !validHost(v) {
				return fmt.Errorf("want a host name or an IP address without a port, got %q", v)
			}
			s.Node.Relay = strings.ToLower(strings.TrimSuffix(v, "."))
			return nil
		}},
	{"node", "connect", NodeConnectTLS, "tls: to the relay's implicit-TLS ports (993, 465) as any client; Dovecot and Postfix see the node's address, and nothing on the relay changes. proxy: a PROXY v2 header with the client's address and then TLS, to listeners for nodes on the relay (11993, 11465, see docs/NODES.md); Dovecot and Postfix see the client's address.",
		func(s *Settings, v string) error {
			if v != NodeConnectTLS && v != NodeConnectProxy {
				return fmt.Errorf("want %s or %s, got %q", NodeConnectTLS, NodeConnectProxy, v)
			}
			s.Node.Connect = v
			return nil
		}},
	{"node", "imap_port", "", "The relay's IMAP port for this node. Empty: 993 with connect = tls, 11993 with proxy.",
		portOrEmpty(func(s *Settings) *int { return &s.Node.IMAPPort })},
	{"node", "smtp_port", "", "The relay's SMTP submission port for this node. Empty: 465 with connect = tls, 11465 with proxy.",
		portOrEmpty(func(s *Settings) *int { return &s.Node.SMTPPort })},
	{"node", "https_port", "443", "The relay's HTTPS port, to which the node passes every request it does not answer itself.",
		portOrEmpty(func(s *Settings) *int { return &s.Node.HTTPSPort })},
	{"node", "ca_file", "", "PEM file with the certificates to verify the relay's with, instead of the system's roots: for a relay in chatmail's self mode its /etc/ssl/certs/mailserver.pem, or a private CA. Read at start and reload.",
		str(func(s *Settings) *string { return &s.Node.CAFile })},
	{"node", "name", "", "This node's name on the status page and in the metrics. Empty: the machine's host name.",
		func(s *Settings, v string) error {
			if len(v) > 64 || strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }) {
				return fmt.Errorf("want at most 64 printable characters, got %q", v)
			}
			s.Node.Name = v
			return nil
		}},
}

// portOrEmpty sets a TCP port from 1 to 65535; empty is 0, the default.
func portOrEmpty(p func(*Settings) *int) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		if v == "" {
			*p(s) = 0
			return nil
		}
		return intIn(1, 65535, p)(s, v)
	}
}

// validHost accepts an IP address or a DNS name (RFC 1123 §2.1 labels).
func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// IsNode tells whether this edge is a node in front of a relay elsewhere.
func (s *Settings) IsNode() bool { return s.Node.Relay != "" }

// RelayIMAP, RelaySMTP and RelayHTTPS are where a node reaches the relay
// (host:port).
func (n NodeSettings) RelayIMAP() string {
	return n.relayAddr(n.IMAPPort, NodeTLSIMAPPort, NodeProxyIMAPPort)
}

func (n NodeSettings) RelaySMTP() string {
	return n.relayAddr(n.SMTPPort, NodeTLSSMTPPort, NodeProxySMTPPort)
}

func (n NodeSettings) RelayHTTPS() string { return n.relayAddr(n.HTTPSPort, 443, 443) }

func (n NodeSettings) relayAddr(port, tlsPort, proxyPort int) string {
	if port == 0 {
		port = tlsPort
		if n.Connect == NodeConnectProxy {
			port = proxyPort
		}
	}
	return net.JoinHostPort(n.Relay, strconv.Itoa(port))
}

// nodeDefaults checks [node] against the rest and gives a node what suits
// it where the file says nothing: the mail ports, and no certificate
// export (there is no Postfix or Dovecot on a node to read or reload it).
func (s *Settings) nodeDefaults() error {
	if !s.IsNode() {
		return nil
	}
	if s.Node.Relay == s.MailDomain {
		return fmt.Errorf("%s: relay = %s is the mail domain, whose addresses are the nodes' own: name the relay by an address or a name of its own",
			s.where("node.relay"), s.Node.Relay)
	}
	if !s.isSet("edge.imaps") {
		s.IMAPS = ":993"
	}
	if !s.isSet("edge.smtps") {
		s.SMTPS = ":465"
	}
	if !s.isSet("acme.export_cert") {
		s.Certs.ExportCert = ""
	}
	if !s.isSet("acme.export_key") {
		s.Certs.ExportKey = ""
	}
	if !s.isSet("acme.reload") {
		s.Certs.Reload = nil
	}
	return nil
}

// isSet tells whether the edge's file sets key ("section.key").
func (s *Settings) isSet(key string) bool {
	_, set := s.setAt[key]
	return set
}
