package mail

import "strconv"

// The proxy mode drop-ins for Dovecot and Postfix, as docs/PROXY.md gives
// them to operators, `install --mode full` writes them and the integration
// suite runs the real daemons with them.
const (
	// ProxyIMAPAddress and ProxySMTPAddress are the loopback listeners
	// that take the edge's PROXY v2 connections.
	ProxyIMAPAddress = "127.0.0.1:10993"
	ProxySMTPAddress = "127.0.0.1:10465"

	// DovecotProxyDropIn goes to /etc/dovecot/conf.d/90-chatmail-edge.conf.
	DovecotProxyDropIn = `# chatmail-edge proxy mode: the edge owns 993 and hands each client to
# a plaintext loopback listener, after a PROXY v2 header.
haproxy_trusted_networks = 127.0.0.0/8
service imap-login {
  inet_listener imaps {
    port = 0
  }
  inet_listener imap_edge {
    address = 127.0.0.1
    port = 10993
    haproxy = yes
  }
}
`

	// PostfixProxyServiceName is the service's name in master.cf.
	PostfixProxyServiceName = ProxySMTPAddress

	// DefaultMaxSMTPConnections is chatmail.ini's max_smtp_connections
	// when it is not set (chatmaild config.py).
	DefaultMaxSMTPConnections = 1000
)

// PostfixProxyService is the master.cf entry (master(5)) that takes over
// from chatmail's smtps service. Its limits are chatmail's since its commit
// fa5afada (master.cf.j2): at most maxSMTPConnections smtpd processes
// (chatmail.ini's max_smtp_connections) and a fifth of that per client.
func PostfixProxyService(maxSMTPConnections int) string {
	return `# chatmail-edge proxy mode: the edge owns 465 and hands each client to
# this loopback service, after a PROXY v2 header.
` + PostfixProxyServiceName + ` inet n       -       y       -       ` + strconv.Itoa(maxSMTPConnections) + `    smtpd
  -o syslog_name=postfix/smtps-edge
  -o smtpd_upstream_proxy_protocol=haproxy
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
` + ChatmailSubmissionOptions(maxSMTPConnections) + `  -o smtpd_proxy_filter=127.0.0.1:10080
`
}

// ChatmailSubmissionOptions are the options of chatmail's smtps entry
// (master.cf.j2) that have nothing to do with TLS: SASL through Dovecot,
// the MUA restrictions and the connection limit per client, a fifth of
// max_smtp_connections.
func ChatmailSubmissionOptions(maxSMTPConnections int) string {
	return `  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=private/auth
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=$mua_client_restrictions
  -o smtpd_helo_restrictions=$mua_helo_restrictions
  -o smtpd_sender_restrictions=$mua_sender_restrictions
  -o smtpd_recipient_restrictions=
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_client_connection_count_limit=` + strconv.Itoa(maxSMTPConnections/5) + `
`
}
