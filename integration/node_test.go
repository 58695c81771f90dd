//go:build integration

package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/mail"
	"chatmail-edge/service"

	"go.uber.org/zap/zaptest"
)

// The relay's side of nodes in proxy mode, as docs/NODES.md shows it,
// adapted to the test instance (forNodeTest).
var (
	dovecotNodeDropIn  = mail.DovecotNodeDropIn
	postfixNodeService = mail.PostfixNodeService(mail.DefaultMaxSMTPConnections)
)

// forNodeTest adapts a drop-in for nodes: the test's port, and the nodes'
// addresses are loopback's (the node runs on 127.0.0.1).
func forNodeTest(dropIn string, prodPort, port int) string {
	return strings.ReplaceAll(forTest(dropIn, prodPort, port), mail.NodeAddressesExample, "127.0.0.0/8")
}

// nodeRelay is a relay's Postfix and Dovecot in tls mode (chatmail's own
// 993 and 465, here on test ports) with the listeners for nodes in proxy
// mode next to them.
type nodeRelay struct {
	*relay
	nodeIMAP, nodeSMTP int // the listeners for nodes
	// front is the relay's own edge (serve), if the test runs one: nodes
	// in tls mode then reach the daemons through it, at its 993 and 465,
	// and its 443, as on a relay.
	front *service.Service
}

func startNodeRelay(t *testing.T) *nodeRelay {
	t.Helper()
	imapPort, smtpPort := freePort(t), freePort(t)
	r, _ := startMailSide(t, mail.ModeTLS, forNodeTest(dovecotNodeDropIn, mail.NodeIMAPPort, imapPort),
		forNodeTest(postfixNodeService, mail.NodeSMTPPort, smtpPort))
	return &nodeRelay{relay: r, nodeIMAP: imapPort, nodeSMTP: smtpPort}
}

// startNode runs serve as a node in front of r, in-process, with the
// [node] section a node's file has (connect, the relay's ports, its CA),
// its own state folder (ECH keys) and the daemons' certificate to serve.
// extra are more sections for its file ([store], [acme]); with [acme] or
// [tls] among them the daemons' certificate is left out. The relay's
// HTTPS is not part of this suite unless r has a front: https_port points
// nowhere otherwise. It returns r as seen through the node (the relay helpers, submit
// and login, then go through it) and the node.
func startNode(t *testing.T, r *nodeRelay, connect, extra string) (*relay, *service.Service) {
	t.Helper()
	imapPort, smtpPort := strings.TrimPrefix(r.dovecot.Backend, "127.0.0.1:"), strings.TrimPrefix(r.postfix.Backend, "127.0.0.1:")
	httpsPort := freePort(t)
	switch {
	case connect == config.NodeConnectProxy:
		imapPort, smtpPort = strconv.Itoa(r.nodeIMAP), strconv.Itoa(r.nodeSMTP)
	case r.front != nil:
		imapPort, smtpPort = portOf(r.front.Addr("imaps")), portOf(r.front.Addr("smtps"))
		httpsPort, _ = strconv.Atoi(portOf(r.front.Addr("https")))
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "chatmail.ini"), "[params]\nmail_domain = "+domain+"\n", 0o644)
	file := filepath.Join(dir, "chatmail-edge.ini")
	if !strings.Contains(extra, "[acme]") && !strings.Contains(extra, "[tls]") {
		extra += fmt.Sprintf("[tls]\ncert = %s\nkey = %s\n", r.certFile, r.keyFile)
	}
	writeFile(t, file, fmt.Sprintf(`[edge]
chatmail_ini = %[1]s/chatmail.ini
state_dir = %[1]s/state
https = 127.0.0.1:0
imaps = 127.0.0.1:0
smtps = 127.0.0.1:0
http =
control_socket =
[ech]
metadata_file =
[admin]
address =
[node]
relay = 127.0.0.1
connect = %[3]s
imap_port = %[4]s
smtp_port = %[5]s
https_port = %[6]d
ca_file = %[2]s
name = node-%[3]s
%[7]s`, dir, r.certFile, connect, imapPort, smtpPort, httpsPort, extra), 0o644)
	node := serveFile(t, file)
	return throughEdge(r.relay, node, node.ECHConfigList()), node
}

// serveFile runs serve in-process from the configuration file, stopped at
// the end of the test.
func serveFile(t *testing.T, file string) *service.Service {
	t.Helper()
	s, err := config.Load(file, true)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	e, err := service.Start(ctx, s, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

func portOf(a net.Addr) string { return strconv.Itoa(a.(*net.TCPAddr).Port) }

// TestNodeBringsClientAddress: a node (serve with [node]) in front of the
// real Postfix and Dovecot carries mail both ways in both connect modes.
// With connect = tls the daemons see the node (127.0.0.1), as any client;
// with connect = proxy, through the listeners for nodes that docs/NODES.md
// gives, they see the client (127.0.0.2) in their logs, and Dovecot takes
// the login over the node's TLS.
func TestNodeBringsClientAddress(t *testing.T) {
	r := startNodeRelay(t)
	for _, connect := range []string{config.NodeConnectTLS, config.NodeConnectProxy} {
		t.Run(connect, func(t *testing.T) {
			node, _ := startNode(t, r, connect, "")
			postfixFrom, dovecotFrom := r.postfix.log.size(), r.dovecot.log.size()
			msg := newMessage(r.alice, r.bob)
			queueID := node.mustSubmit(t, submit443, msg)[0]
			c := node.login(t, read993, r.bob, nil)
			waitForMessage(t, c, msg.id)

			want := "127.0.0.1" // the node
			if connect == config.NodeConnectProxy {
				want = clientIP.String()
			}
			submitted := r.postfix.log.waitForLine(t, postfixFrom, queueID+": client=", 10*time.Second)
			if !strings.Contains(submitted, "["+want+"]") {
				t.Errorf("Postfix logged %q, want client address %s", submitted, want)
			}
			logins := r.dovecot.log.linesSince(dovecotFrom, "imap-login: Info: Login: ")
			if len(logins) == 0 {
				t.Fatal("Dovecot logged no login")
			}
			for _, l := range logins {
				if !strings.Contains(l, "rip="+want+",") || !strings.Contains(l, "TLS") {
					t.Errorf("Dovecot logged %q, want rip=%s over TLS", l, want)
				}
			}
			t.Logf("node in %s mode, client at %s:\n  Postfix: %s\n  Dovecot: %s", connect, clientIP, submitted, logins[0])
		})
	}
}

// TestNodeDocShowsTheTestedDropIns keeps docs/NODES.md in step with the
// relay's side the suite runs.
func TestNodeDocShowsTheTestedDropIns(t *testing.T) {
	doc, err := os.ReadFile("../docs/NODES.md")
	if err != nil {
		t.Fatal(err)
	}
	for name, dropIn := range map[string]string{"Dovecot": dovecotNodeDropIn, "Postfix": postfixNodeService} {
		if !strings.Contains(string(doc), dropIn) {
			t.Errorf("docs/NODES.md does not show the %s drop-in the suite runs with:\n%s", name, dropIn)
		}
	}
}
