package service

// Nodes (docs/NODES.md): serve with [node] in front of serve as the relay,
// both in-process on loopback, the relay in front of the local delivery.
// Clients use ECH with the node's own keys; the node verifies the relay's
// certificate with the relay's CA (ca_file).

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"chatmail-edge/internal/testcert"
	"chatmail-edge/internal/testserver"
	"chatmail-edge/mail"

	"github.com/pires/go-proxyproto"
)

// testRelay is serve as a relay for nodes: 443, 993 and 465 with ECH in
// front of the local delivery, and an account script that writes what it
// got from the web server (the headers a node sent, as RFC 3875 passes
// them) into its answer and each run into runs.
type testRelay struct {
	*catalogueEnv
	runs string // the script's record of its runs, one line each
}

// startTestRelay starts a relay for nodes; extra adds or replaces keys.
func startTestRelay(t *testing.T, extra string) *testRelay {
	t.Helper()
	dir := t.TempDir()
	r := &testRelay{runs: filepath.Join(dir, "runs")}
	script := filepath.Join(dir, "newemail.py")
	err := os.WriteFile(script, []byte(`#!/bin/sh
echo "$REQUEST_METHOD $REQUEST_URI" >> `+r.runs+`
printf 'Content-Type: text/plain\r\n\r\n'
printf 'email=node@%s\npassword=from-the-relay\nmethod=%s\nuri=%s\n' "$SERVER_NAME" "$REQUEST_METHOD" "$REQUEST_URI"
printf 'host=%s\nx-forwarded-for=%s\nforwarded=%s\nremote=%s\n' "$HTTP_HOST" "$HTTP_X_FORWARDED_FOR" "$HTTP_FORWARDED" "$REMOTE_ADDR"
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	r.catalogueEnv = startCatalogue(t, mergeINI("[edge]\nsmtps = 127.0.0.1:0\n[web]\nnew_account_cgi = "+script+"\n", extra))
	return r
}

// scriptRuns are the requests the relay's account script ran for.
func (r *testRelay) scriptRuns() []string {
	data, _ := os.ReadFile(r.runs)
	return strings.Fields(strings.ReplaceAll(string(data), " ", "_"))
}

func (env *catalogueEnv) port(listener string) int {
	return env.edge.edge.Addr(listener).(*net.TCPAddr).Port
}

// startTestNode starts a node in front of relay: relay = 127.0.0.1 at the
// ports relay listens on, the relay's certificate verified with its CA,
// named node-1, on loopback ports of its own (443, 993, 465 and the admin
// listener). extra adds or replaces keys, [node] connect and the ports
// among them.
func startTestNode(t *testing.T, relay *catalogueEnv, extra string) *catalogueEnv {
	t.Helper()
	env, roots := newReloadFiles(t)
	node := newCatalogue(t, env, roots)
	env.writeConfig(t, nodeConfig(relay, extra))
	node.start(t)
	return node
}

// nodeConfig is startTestNode's configuration file, extra on top.
func nodeConfig(relay *catalogueEnv, extra string) string {
	conf := fmt.Sprintf("[edge]\nsmtps = 127.0.0.1:0\n[node]\nrelay = 127.0.0.1\nimap_port = %d\nsmtp_port = %d\nhttps_port = %d\nca_file = %s\nname = node-1\n",
		relay.port("imaps"), relay.port("smtps"), relay.port("https"), relay.certFile)
	return mergeINI(catalogueConfig, mergeINI(conf, extra))
}

// fromClientAddress is the address clients dial from, so that the tests
// can tell the client's address from the node's (127.0.0.1).
var fromClientAddress = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}

// dialECH connects to env's listener from local (nil: any address) with
// ECH, as a mail client does; the greeting is left to the client.
func (env *catalogueEnv) dialECH(t *testing.T, listener string, local *net.TCPAddr, alpn ...string) *tls.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 10 * time.Second}
	if local != nil {
		d.LocalAddr = local
	}
	c, err := tls.DialWithDialer(d, "tcp", env.addr(listener), env.tlsConfig(alpn...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute)) // a safety net
	if !c.ConnectionState().ECHAccepted {
		t.Fatalf("%s: ECH not accepted", listener)
	}
	return c
}

// httpClientFrom is env's HTTPS client, dialing from 127.0.0.2.
func (env *catalogueEnv) httpClientFrom() *http.Client {
	c := env.httpClient()
	c.Transport.(*http.Transport).DialContext = (&net.Dialer{LocalAddr: fromClientAddress, Timeout: 10 * time.Second}).DialContext
	return c
}

// request sends method for path to env's 443 with Host host, and returns
// the response and its body.
func (env *catalogueEnv) request(t *testing.T, client *http.Client, method, host, path string, header http.Header) (*http.Response, string) {
	t.Helper()
	resp, body := sendRequest(t, client, method, env.url(path), host, header, nil)
	return resp, string(body)
}

// scriptAnswer is the relay's account script's answer, by key.
func scriptAnswer(body string) map[string]string {
	m := map[string]string{}
	for line := range strings.Lines(body) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			m[k] = v
		}
	}
	return m
}

// TestNodeServesThroughRelay is the chatmail flow through a node: mail
// submitted over SMTP and read back over IMAP on the node's 465, 993 and
// 443, an account from POST /new, the site, each as the relay answers it;
// the client's address reaches the relay in X-Forwarded-For and Forwarded,
// and what the client claimed there does not.
func TestNodeServesThroughRelay(t *testing.T) {
	relay := startTestRelay(t, "")
	node := startTestNode(t, relay.catalogueEnv, "")

	for _, r := range mailRoutes {
		t.Run(r.name, func(t *testing.T) {
			email, password, err := relay.delivery.CreateAccount()
			if err != nil {
				t.Fatal(err)
			}
			token := randomToken()
			sent := sendToSelf(t, node.dialECH(t, r.submit, nil, r.submitALPN...), email, password, token)
			bodies := fetchInbox(t, node.dialECH(t, r.read, nil, r.rALPN...), email, password)
			if len(bodies) != 1 || !strings.HasSuffix(bodies[0], sent) {
				t.Fatalf("INBOX through the node: %q, want the message sent through it", bodies)
			}
		})
	}

	t.Run("POST /new", func(t *testing.T) {
		forged := http.Header{"X-Forwarded-For": {"6.6.6.6"}, "Forwarded": {"for=6.6.6.6"}, "X-Forwarded-Host": {"evil.example"}}
		_, direct := relay.request(t, relay.httpClient(), "POST", reloadDomain, "/new", nil)
		resp, through := node.request(t, node.httpClientFrom(), "POST", reloadDomain, "/new", forged)
		want, got := scriptAnswer(direct), scriptAnswer(through)
		for _, k := range []string{"email", "password", "method", "uri", "host"} {
			if got[k] != want[k] || got[k] == "" {
				t.Errorf("%s: through the node %q, from the relay %q", k, got[k], want[k])
			}
		}
		if resp.StatusCode != 200 || got["x-forwarded-for"] != "127.0.0.2" || got["forwarded"] != `for=127.0.0.2;host="`+reloadDomain+`";proto=https` {
			t.Errorf("%s; the relay got X-Forwarded-For %q, Forwarded %q; want the client's address 127.0.0.2 only", resp.Status, got["x-forwarded-for"], got["forwarded"])
		}
		if strings.Contains(through, "6.6.6.6") || strings.Contains(through, "evil") {
			t.Errorf("what the client claimed reached the relay:\n%s", through)
		}
	})

	t.Run("site and redirects", func(t *testing.T) {
		for _, c := range []struct{ host, path string }{
			{reloadDomain, "/"}, {reloadDomain, "/info/"}, {"www." + reloadDomain, "/x?y=1"},
			{"mta-sts." + reloadDomain, "/.well-known/mta-sts.txt"}, {reloadDomain, "/.well-known/autoconfig/mail/config-v1.1.xml"},
			{reloadDomain, "/new"},
		} {
			direct, directBody := relay.request(t, relay.httpClient(), "GET", c.host, c.path, nil)
			through, body := node.request(t, node.httpClient(), "GET", c.host, c.path, nil)
			if through.StatusCode != direct.StatusCode || body != directBody || through.Header.Get("Location") != direct.Header.Get("Location") {
				t.Errorf("GET %s%s: through the node %s %q %.80q, from the relay %s %q %.80q", c.host, c.path,
					through.Status, through.Header.Get("Location"), body, direct.Status, direct.Header.Get("Location"), directBody)
			}
		}
	})

	t.Run("names not the relay's", func(t *testing.T) {
		before := len(relay.scriptRuns())
		for _, host := range []string{"evil.example", "127.0.0.1", "relay.other.test"} {
			resp, body := node.request(t, node.httpClient(), "POST", host, "/new", nil)
			if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(body, "answers for "+reloadDomain+" only") {
				t.Errorf("POST %s/new: %s %q, want 421", host, resp.Status, body)
			}
		}
		if runs := relay.scriptRuns(); len(runs) != before {
			t.Errorf("requests for other names reached the relay: %q", runs[before:])
		}
	})

	t.Run("what the node answers itself", func(t *testing.T) {
		_, doc := node.request(t, node.httpClient(), "GET", reloadDomain, "/.well-known/origin-svcb", nil)
		var svcb struct {
			Endpoints []struct{ Params struct{ ECH string } } `json:"endpoints"`
		}
		if err := json.Unmarshal([]byte(doc), &svcb); err != nil || len(svcb.Endpoints) != 1 {
			t.Fatalf("origin-svcb %q: %v", doc, err)
		}
		// Each has its own keys here: the store that shares them is
		// another part (docs/NODES.md).
		if got := svcb.Endpoints[0].Params.ECH; got != base64.StdEncoding.EncodeToString(node.echList()) || got == base64.StdEncoding.EncodeToString(relay.echList()) {
			t.Errorf("origin-svcb from the node has %s, want the node's own config list", got)
		}
		resp, page := node.request(t, node.httpClient(), "GET", reloadDomain, "/status", nil)
		if resp.StatusCode != 200 || !strings.Contains(page, `chatmail node <b id="node-name">node-1</b> of the relay`) || strings.Contains(page, "127.0.0.1:") {
			t.Errorf("status page of the node: %s\n%s", resp.Status, page)
		}
		admin := adminPage(t, node)
		for _, want := range []string{"node-1", "127.0.0.1:" + strconv.Itoa(relay.port("imaps")) + " (tls)", "<td>imap</td>"} {
			if !strings.Contains(admin, want) {
				t.Errorf("the node's admin page lacks %q", want)
			}
		}
		if v := node.metric(t, `chatmail_edge_node_info{node="node-1"}`); v != 1 {
			t.Errorf("node_info %v", v)
		}
		for _, svc := range []string{"imap", "smtp", "https"} {
			if v := node.metric(t, `chatmail_edge_relay_connections_total{outcome="ok",service="`+svc+`"}`); v < 1 {
				t.Errorf("%s: %v connections to the relay counted", svc, v)
			}
		}
	})
}

// adminPage is env's operator page.
func adminPage(t *testing.T, env *catalogueEnv) string {
	t.Helper()
	resp, err := http.Get("http://" + env.edge.adminLn.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// expectRefusal dials listener of env and wants the protocol's refusal
// naming the relay (IMAP BYE, SMTP 421), then the close.
func expectRefusal(t *testing.T, env *catalogueEnv, listener, want string, alpn ...string) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", env.addr(listener), env.tlsConfig(alpn...))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute)) // a safety net
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if !strings.HasPrefix(line, want) || !strings.Contains(line, reloadDomain) || !strings.Contains(line, "try again later") {
		t.Fatalf("%s: got %q (%v), want a refusal starting with %q", listener, line, err, want)
	}
	if rest := readToCloseReader(t, c, r); len(rest) != 0 {
		t.Fatalf("after the refusal: %q", rest)
	}
}

// TestNodeRelayDown: a relay service that refuses or does not answer gets
// the node's clients their protocol's refusal (or a 502), with a log line
// naming the connection, and holds up nothing else: the other services go
// on through the node, and what the node answers itself stays.
func TestNodeRelayDown(t *testing.T) {
	relay := startTestRelay(t, "")
	hung := startHungListener(t)
	// No probes but the first: the hung listener's connections are then
	// the first probe's and the test's own.
	node := startTestNode(t, relay.catalogueEnv, fmt.Sprintf("[edge]\nbackend_timeout = 2s\n[admin]\nprobe_interval = 1h\n[node]\nimap_port = %d\nhttps_port = %d\n",
		closedPortNumber(t), hung.port))

	since := len(node.logs.All())
	expectRefusal(t, node, "imaps", "* BYE ")
	expectRefusal(t, node, "https", "* BYE ", "imap")
	node.expectLogged(t, since, logLine{"backend unreachable, refusing client", "connection refused"})
	for _, e := range node.logs.All()[since:] {
		if e.Message == "backend unreachable, refusing client" && e.ContextMap()["conn"] == nil {
			t.Errorf("refusal logged without the connection id: %v", e.ContextMap())
		}
	}

	// While an HTTPS request waits for the relay that does not answer, mail
	// goes on (SMTP to the relay's 465 is up) and the node answers its own
	// paths.
	hung.waitAccepted(t, 1) // the first probe's
	slow := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", node.url("/"), nil)
		req.Host = reloadDomain
		resp, err := node.httpClient().Do(req)
		if err != nil {
			slow <- err.Error()
			return
		}
		resp.Body.Close()
		slow <- resp.Status
	}()
	hung.waitAccepted(t, 2)
	email, password, err := relay.delivery.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	sendToSelf(t, node.dialECH(t, "smtps", nil), email, password, randomToken())
	for _, path := range []string{"/status", "/.well-known/origin-svcb"} {
		if resp, _ := node.request(t, node.httpClient(), "GET", reloadDomain, path, nil); resp.StatusCode != 200 {
			t.Errorf("GET %s on the node while the relay's HTTPS hangs: %s", path, resp.Status)
		}
	}
	if got := <-slow; got != "502 Bad Gateway" {
		t.Errorf("request to the hung relay: %s, want 502", got)
	}
	node.expectLogged(t, since, logLine{"upstream unavailable", "127.0.0.1:" + strconv.Itoa(hung.port)})

	if v := node.metric(t, `chatmail_edge_relay_connections_total{outcome="error",service="imap"}`); v < 2 {
		t.Errorf("%v failed IMAP connections to the relay counted, want 2 or more", v)
	}
	if v := node.metric(t, `chatmail_edge_relay_connections_total{outcome="ok",service="smtp"}`); v < 1 {
		t.Errorf("%v SMTP connections to the relay counted", v)
	}
	admin := adminPage(t, node)
	if !strings.Contains(admin, "connection refused") {
		t.Errorf("the admin page does not show the relay's IMAP error")
	}
}

// TestNodeReloadAppliesRelay: a reload points new sessions at the relay's
// ports and CA as the file now says, and keeps the record of the relay's
// reachability.
func TestNodeReloadAppliesRelay(t *testing.T) {
	relay := startTestRelay(t, "")
	node := startTestNode(t, relay.catalogueEnv, fmt.Sprintf("[node]\nimap_port = %d\n", closedPortNumber(t)))
	expectRefusal(t, node, "imaps", "* BYE ")

	node.writeConfig(t, nodeConfig(relay.catalogueEnv, "[node]\nname = node-2\n"))
	if status := node.reload(t); strings.Contains(status, "restart") {
		t.Fatalf("the reload wants a restart: %s", status)
	}
	email, password, err := relay.delivery.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	if bodies := fetchInbox(t, node.dialECH(t, "imaps", nil), email, password); len(bodies) != 0 {
		t.Fatalf("a new account's INBOX through the node: %q", bodies)
	}
	if v := node.metric(t, `chatmail_edge_relay_connections_total{outcome="error",service="imap"}`); v < 1 {
		t.Errorf("the reload lost the record of the failed connection: %v", v)
	}
	if v := node.metric(t, `chatmail_edge_node_info{node="node-2"}`); v != 1 {
		t.Errorf("node_info of the new name: %v", v)
	}
}

// TestNodeRefusesUnverifiedRelay: a relay whose certificate does not verify
// (here: signed by a CA the node does not trust) gets no session and no
// request; clients are refused and the reason is logged.
func TestNodeRefusesUnverifiedRelay(t *testing.T) {
	relay := startTestRelay(t, "")
	other, _ := testcert.SelfSigned(t, reloadDomain)
	otherCA := filepath.Join(t.TempDir(), "other-ca.pem")
	os.WriteFile(otherCA, pemOf([]*x509.Certificate{other.Leaf}), 0o644)
	node := startTestNode(t, relay.catalogueEnv, "[node]\nca_file = "+otherCA+"\n")

	since := len(node.logs.All())
	before := len(relay.scriptRuns())
	expectRefusal(t, node, "smtps", "421 ")
	node.expectLogged(t, since, logLine{"backend unreachable, refusing client", "certificate signed by unknown authority"})
	resp, _ := node.request(t, node.httpClient(), "POST", reloadDomain, "/new", nil)
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("POST /new through the node: %s, want 502", resp.Status)
	}
	node.expectLogged(t, since, logLine{"upstream unavailable", "certificate signed by unknown authority"})
	if runs := relay.scriptRuns(); len(runs) != before {
		t.Errorf("a request reached the relay over the unverified connection: %q", runs[before:])
	}
}

// TestNodeProxyMode: with connect = proxy the relay's listeners for nodes
// get a PROXY v2 header with the client's own address (127.0.0.2, not the
// node's) before the TLS handshake, and the session goes on in it.
func TestNodeProxyMode(t *testing.T) {
	relay := startTestRelay(t, "")
	cert, err := tls.LoadX509KeyPair(relay.certFile, relay.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	imapFront := startNodeListener(t, cert, relay.delivery.IMAPAddr())
	smtpFront := startNodeListener(t, cert, relay.delivery.SMTPAddr())
	node := startTestNode(t, relay.catalogueEnv, fmt.Sprintf("[node]\nconnect = proxy\nimap_port = %d\nsmtp_port = %d\n", imapFront.port, smtpFront.port))

	email, password, err := relay.delivery.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	sent := sendToSelf(t, node.dialECH(t, "smtps", fromClientAddress), email, password, randomToken())
	if bodies := fetchInbox(t, node.dialECH(t, "imaps", fromClientAddress), email, password); len(bodies) != 1 || !strings.HasSuffix(bodies[0], sent) {
		t.Fatalf("INBOX through the node in proxy mode: %q", bodies)
	}
	for name, front := range map[string]*nodeListener{"imaps": imapFront, "smtps": smtpFront} {
		h := front.header(t)
		src, dst, ok := h.TCPAddrs()
		if !ok || h.Command != proxyproto.PROXY || !src.IP.Equal(fromClientAddress.IP) || dst.Port != node.port(name) {
			t.Errorf("%s: the relay got %v %v -> %v, want PROXY from 127.0.0.2 to the node's port %d", name, h.Command, src, dst, node.port(name))
		}
		if tlvs, _ := h.TLVs(); len(tlvs) != 0 {
			t.Errorf("%s: the header in the clear carries %d TLVs (SNI, ALPN, TLS), want none", name, len(tlvs))
		}
	}
	// The probes send LOCAL headers, which the daemons accept.
	node.edge.currentWeb().CheckHealth(t.Context())
	if v := node.metric(t, `chatmail_edge_service_up{service="IMAP"}`); v != 1 {
		t.Errorf("IMAP probe through proxy mode: up = %v", v)
	}
}

// nodeListener stands in for a relay's listener for nodes in proxy mode
// (Dovecot `haproxy = yes` with `ssl = yes`, Postfix's
// smtpd_upstream_proxy_protocol with wrappermode): it requires a PROXY
// header, records it, makes the TLS handshake with the relay's
// certificate, and hands the session to the local delivery with the
// client's address.
type nodeListener struct {
	port    int
	headers chan *proxyproto.Header
}

func startNodeListener(t *testing.T, cert tls.Certificate, daemon string) *nodeListener {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &proxyproto.Listener{Listener: raw, ReadHeaderTimeout: 5 * time.Second,
		ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}
	nl := &nodeListener{port: raw.Addr().(*net.TCPAddr).Port, headers: make(chan *proxyproto.Header, 64)}
	backend, err := mail.NewBackend(mail.BackendConfig{Protocol: mail.IMAP, Mode: mail.ModeProxy, Address: daemon})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { nl.serve(c.(*proxyproto.Conn), cert, backend) })
		}
	})
	return nl
}

func (nl *nodeListener) serve(c *proxyproto.Conn, cert tls.Certificate, backend *mail.Backend) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute)) // a safety net
	h := c.ProxyHeader()
	if h == nil {
		return
	}
	nl.headers <- h
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
	if tc.Handshake() != nil {
		return
	}
	var d net.Conn
	if src, dst, ok := h.TCPAddrs(); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		if d, err = backend.Dial(ctx, mail.ClientInfo{Source: src.AddrPort(), Destination: dst.AddrPort(), TLSVersion: tls.VersionTLS13}); err != nil {
			return
		}
	} else { // LOCAL, a health check: passed on as one
		var err error
		if d, err = net.DialTimeout("tcp", backend.Address(), 10*time.Second); err != nil {
			return
		}
		if _, err := d.Write(mail.AppendProxyV2Local(nil)); err != nil {
			d.Close()
			return
		}
	}
	defer d.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(d, tc); done <- struct{}{} }()
	go func() { io.Copy(tc, d); done <- struct{}{} }()
	<-done
}

// header is the next PROXY header a session brought (probes' LOCAL ones
// are skipped).
func (nl *nodeListener) header(t *testing.T) *proxyproto.Header {
	t.Helper()
	for {
		select {
		case h := <-nl.headers:
			if h.Command == proxyproto.PROXY {
				return h
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no PROXY header received")
		}
	}
}

// hungListener accepts connections and never answers, like a relay whose
// machine is overloaded: a TLS handshake with it never ends.
type hungListener struct {
	port     int
	accepted chan struct{} // one value per connection
	seen     int           // values taken from accepted
}

func startHungListener(t *testing.T) *hungListener {
	t.Helper()
	h := &hungListener{accepted: make(chan struct{}, 64)}
	addr := testserver.Serve(t, func(net.Conn) { h.accepted <- struct{}{} })
	h.port, _ = strconv.Atoi(addr[strings.LastIndexByte(addr, ':')+1:])
	return h
}

// waitAccepted waits until the listener has accepted its nth connection
// since the start.
func (h *hungListener) waitAccepted(t *testing.T, n int) {
	t.Helper()
	for ; h.seen < n; h.seen++ {
		select {
		case <-h.accepted:
		case <-time.After(10 * time.Second):
			t.Fatalf("the hung listener has accepted %d connections, want %d", h.seen, n)
		}
	}
}

// closedPortNumber is a loopback port nothing listens on.
func closedPortNumber(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
