//go:build integration

package integration

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"chatmail-edge/mail"
)

// The suite runs the daemons with the proxy mode drop-ins of package mail
// (which docs/PROXY.md shows operators and `install --mode full` writes),
// only with test ports and without the chroot and filtermail that a relay
// has; TestProxyDocShowsTheTestedDropIns keeps the document in step.
const (
	proxyDovecotPort = 10993
	proxyPostfixPort = 10465

	dovecotProxyDropIn = mail.DovecotProxyDropIn
)

// postfixProxyService has the limits of chatmail.ini's default
// max_smtp_connections, as docs/PROXY.md shows it.
var postfixProxyService = mail.PostfixProxyService(mail.DefaultMaxSMTPConnections)

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
