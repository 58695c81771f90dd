package mail

import "strconv"

// The relay's side of nodes in proxy mode (docs/NODES.md): a Dovecot
// listener and a Postfix service that read a PROXY v2 header from a node
// and then make the TLS handshake with it, next to chatmail's own 993 and
// 465, which keep serving the clients that come directly (a listener with
// the header mandatory would refuse them). The integration suite runs the
// real daemons with these, and docs/NODES.md shows them word for word.
const (
	// NodeIMAPPort and NodeSMTPPort are their ports, [node] imap_port and
	// smtp_port's defaults with connect = proxy.
	NodeIMAPPort = 11993
	NodeSMTPPort = 11465

	// NodeAddressesExample stands for the nodes' addresses in the drop-ins:
	// an operator puts the real ones (RFC 5737 documentation addresses).
	NodeAddressesExample = "192.0.2.10 198.51.100.20"

	// DovecotNodeDropIn goes to /etc/dovecot/conf.d/91-chatmail-nodes.conf,
	// with `!include_try conf.d/91-chatmail-nodes.conf` at the end of
	// dovecot.conf. $haproxy_trusted_networks keeps what an earlier drop-in
	// (full mode's loopback) trusts.
	DovecotNodeDropIn = `# chatmail-edge nodes in proxy mode: a node sends a PROXY v2 header with
# its client's address, then makes the TLS handshake. Only the nodes may.
haproxy_trusted_networks = $haproxy_trusted_networks ` + NodeAddressesExample + `
service imap-login {
  inet_listener imaps_nodes {
    port = 11993
    ssl = yes
    haproxy = yes
  }
}
`
)

// PostfixNodeService is the master.cf entry (master(5)) next to chatmail's
// smtps: its options and limits (maxSMTPConnections is chatmail.ini's
// max_smtp_connections), plus the PROXY header.
func PostfixNodeService(maxSMTPConnections int) string {
	return `# chatmail-edge nodes in proxy mode: a node sends a PROXY v2 header with
# its client's address, then makes the TLS handshake. Postfix trusts
# whoever connects here: a firewall must let only the nodes reach it.
11465     inet  n       -       y       -       ` + strconv.Itoa(maxSMTPConnections) + `    smtpd
  -o syslog_name=postfix/smtps-nodes
  -o smtpd_upstream_proxy_protocol=haproxy
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_mandatory_protocols=>=TLSv1.3
` + ChatmailSubmissionOptions(maxSMTPConnections) + `  -o smtpd_proxy_filter=127.0.0.1:10080
`
}
