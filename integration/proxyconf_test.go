//go:build integration

package integration

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// The proxy mode drop-ins exactly as docs/PROXY.md gives them to operators
// (and as the install's full mode writes them). The suite runs the daemons
// with these very lines, only with test ports and without the chroot and
// filtermail that a relay has; TestProxyDocShowsTheTestedDropIns keeps the
// document in step.
const (
	proxyDovecotPort = 10993
	proxyPostfixPort = 10465

	dovecotProxyDropIn = `# chatmail-edge proxy mode: the edge owns 993 and hands each client to
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

	postfixProxyService = `# chatmail-edge proxy mode: the edge owns 465 and hands each client to
# this loopback service, after a PROXY v2 header.
127.0.0.1:10465 inet n       -       y       -       5000    smtpd
  -o syslog_name=postfix/smtps-edge
  -o smtpd_upstream_proxy_protocol=haproxy
  -o smtpd_tls_security_level=none
  -o smtpd_tls_auth_only=no
` + chatmailSubmissionOptions + `  -o smtpd_proxy_filter=127.0.0.1:10080
`

	// chatmailSubmissionOptions are the options of chatmail's smtps entry
	// (master.cf.j2) that have nothing to do with TLS: SASL through
	// Dovecot and the MUA restrictions.
	chatmailSubmissionOptions = `  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=private/auth
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=$mua_client_restrictions
  -o smtpd_helo_restrictions=$mua_helo_restrictions
  -o smtpd_sender_restrictions=$mua_sender_restrictions
  -o smtpd_recipient_restrictions=
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_client_connection_count_limit=1000
`
)

// forTest adapts a drop-in to a test instance: the loopback port it got,
// and no chroot (a chroot needs a prepared copy of /etc and libraries
// inside the queue folder) or filtermail (not part of the suite).
func forTest(dropIn string, prodPort, port int) string {
	var b strings.Builder
	for line := range strings.Lines(dropIn) {
		if strings.Contains(line, "smtpd_proxy_filter=") {
			continue
		}
		line = strings.ReplaceAll(line, strconv.Itoa(prodPort), strconv.Itoa(port))
		line = strings.Replace(line, "n       -       y       -", "n       -       n       -", 1)
		b.WriteString(line)
	}
	return b.String()
}

func TestProxyDocShowsTheTestedDropIns(t *testing.T) {
	doc, err := os.ReadFile("../docs/PROXY.md")
	if err != nil {
		t.Fatal(err)
	}
	for name, dropIn := range map[string]string{"Dovecot": dovecotProxyDropIn, "Postfix": postfixProxyService} {
		if !strings.Contains(string(doc), dropIn) {
			t.Errorf("docs/PROXY.md does not show the %s drop-in the suite runs with:\n%s", name, dropIn)
		}
	}
}
