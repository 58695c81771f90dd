package service

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/config"
)

// TestDemoStandIns: the demo's paths of filtermail and iroh-relay answer,
// through the edge with ECH, from its in-process stand-ins: /relay and
// everything below it reaches iroh-relay's (prefix matching, as chatmail's
// nginx), an Upgrade there is passed through both ways, and mail POSTed to
// /mxdeliv as another relay delivers it lands in the recipient's INBOX.
func TestDemoStandIns(t *testing.T) {
	d := startTestDemo(t, t.TempDir())

	for _, path := range []string{"/relay", "/relay/anything", "/relay/x/y?z=1"} {
		resp, body := d.get(t, "chatmail.localhost", path)
		wantResponse(t, path, resp, body, http.StatusUpgradeRequired, "")
		if !strings.Contains(string(body), "iroh-relay stand-in at "+strings.Split(path, "?")[0]) {
			t.Errorf("%s: %q, want the iroh-relay stand-in's answer", path, body)
		}
	}
	resp, body := d.get(t, "chatmail.localhost", "/ping")
	wantResponse(t, "/ping", resp, body, 200, "")
	resp, body = d.get(t, "chatmail.localhost", "/generate_204")
	wantResponse(t, "/generate_204", resp, body, 204, "")

	// An Upgrade on /relay/...: the stand-in echoes what the client sends.
	c := d.dialECH(t, "https", "http/1.1")
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(c, "GET /relay/derp HTTP/1.1\r\nHost: chatmail.localhost\r\nUpgrade: iroh derp http\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(c)
	up, err := http.ReadResponse(br, nil)
	if err != nil || up.StatusCode != http.StatusSwitchingProtocols || up.Header.Get("Upgrade") != "iroh derp http" {
		t.Fatalf("upgrade on /relay/derp: %v %+v", err, up)
	}
	io.WriteString(c, "frame one")
	echo := make([]byte, len("frame one"))
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "frame one" {
		t.Fatalf("echo through the upgraded connection: %q %v", echo, err)
	}

	// Another relay delivers over HTTPS /mxdeliv, as filtermail takes it.
	email, password := newAccount(t, d)
	msg := "From: <a@other.example>\r\nTo: <" + email + ">\r\nSubject: mxdeliv\r\n\r\nvia /mxdeliv " + randomToken() + "\r\n"
	header := http.Header{"X-Mail-From": {"a@other.example"}, "X-Mail-To": {email, "nobody@chatmail.localhost"}}
	resp, body = d.webRequest(t, "POST", "chatmail.localhost", "/mxdeliv", header, strings.NewReader(msg))
	wantResponse(t, "POST /mxdeliv", resp, body, 200, "")
	if bodies := fetchInbox(t, d.dialECH(t, "imaps"), email, password); len(bodies) != 1 || !strings.HasSuffix(bodies[0], msg) {
		t.Fatalf("INBOX after /mxdeliv: %q", bodies)
	}
	resp, body = d.webRequest(t, "POST", "chatmail.localhost", "/mxdeliv", http.Header{"X-Mail-To": {"nobody@chatmail.localhost"}}, strings.NewReader(msg))
	wantResponse(t, "POST /mxdeliv for nobody", resp, body, 404, "")
	resp, body = d.webRequest(t, "POST", "chatmail.localhost", "/mxdeliv", nil, strings.NewReader(msg))
	wantResponse(t, "POST /mxdeliv without X-Mail-To", resp, body, 400, "")
}

// TestDemoServiceDown: an upstream the demo cannot reach is shown down, with
// a warning among the admin page's recent ones (the stand-ins are not used
// for upstreams a test names).
func TestDemoServiceDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close()
	d := startTestDemoWeb(t, t.TempDir(), demoWeb{IrohRelay: dead})
	d.currentWeb().CheckHealth(t.Context())
	_, admin := d.adminGet(t, "/")
	if !regexpService("iroh-relay", "down").Match(admin) || !regexpService("filtermail", "up").Match(admin) || !strings.Contains(string(admin), "service down") {
		t.Errorf("admin page does not report iroh-relay down (and filtermail up) with a recent warning:\n%s", admin)
	}
}

// TestDemoStatusPageAllUpInChromium: a fresh demo's status pages, rendered
// by headless Chromium (Debian's, installed by .ci/run), show no service
// down. Chromium also opens the public page over HTTPS through the edge:
// it has no ECH config for the demo and sends GREASE ECH, which the admin
// page counts as rejected and explains.
func TestDemoStatusPageAllUpInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (apt-get install chromium; .ci/run does): skipping the browser test")
	}
	d := startTestDemo(t, t.TempDir())
	d.currentWeb().CheckHealth(t.Context())
	artifacts := os.Getenv("ARTIFACTS_DIR")
	if artifacts == "" {
		artifacts = t.TempDir()
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	rejectedBefore := d.edge.Snapshot().Listeners[0].ECH["rejected"]

	// Over HTTPS by the demo's name; the certificate is the demo CA's,
	// which this Chromium profile does not know.
	https := "https://" + net.JoinHostPort(d.cfg.Domain, strconv.Itoa(d.port("https"))) + "/status"
	rendered := renderInChromium(t, chromium, https, filepath.Join(artifacts, "demo-status-https.png"),
		"--ignore-certificate-errors", "--host-resolver-rules=MAP "+d.cfg.Domain+" 127.0.0.1")
	for _, page := range []struct{ name, rendered string }{
		{"public page over HTTPS", rendered},
		{"admin page", renderInChromium(t, chromium, d.adminURL()+"/", filepath.Join(artifacts, "demo-status-admin.png"))},
	} {
		if !strings.Contains(page.rendered, `id="overall">All services up<`) || strings.Contains(page.rendered, `class="badge down"`) {
			t.Errorf("%s: not all services up:\n%s", page.name, page.rendered)
		}
		for _, name := range []string{"IMAP", "SMTP", "filtermail", "iroh-relay"} {
			if !regexpService(name, "up").MatchString(page.rendered) {
				t.Errorf("%s: %s is not up", page.name, name)
			}
		}
	}
	if got := d.edge.Snapshot().Listeners[0].ECH["rejected"]; got <= rejectedBefore {
		t.Errorf("Chromium's visit counted %d ECH rejected (before %d): want its GREASE ECH counted", got, rejectedBefore)
	}
	admin := renderInChromium(t, chromium, d.adminURL()+"/", filepath.Join(artifacts, "demo-status-admin.png"))
	if !regexp.MustCompile(`id="grease-note">.*GREASE`).MatchString(admin) {
		t.Errorf("the admin page does not explain GREASE ECH:\n%s", admin)
	}
}

// renderInChromium loads url in headless Chromium, saves a screenshot to
// shot and returns the rendered DOM.
func renderInChromium(t *testing.T, chromium, url, shot string, flags ...string) string {
	t.Helper()
	os.Remove(shot)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=412,1500", "--screenshot=" + shot, "--dump-dom"}, flags...)
	cmd := exec.CommandContext(ctx, chromium, append(args, url)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	dom, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, lastLines(stderr.String(), 20))
	}
	png, err := os.ReadFile(shot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 2000 {
		t.Fatalf("screenshot %s: %v, %d bytes", shot, err, len(png))
	}
	t.Logf("screenshot of %s: %s", url, shot)
	return string(dom)
}

// TestDemoTLS12: a TLS 1.2 browser-style client gets the site on the demo's
// HTTPS port (without ECH, which needs TLS 1.3); one that asks for imap
// there gets a protocol_version alert. The keys reach the edge's limits.
func TestDemoTLS12(t *testing.T) {
	d := startTestDemo(t, t.TempDir())
	cfg := d.tlsConfig(t, "h2", "http/1.1")
	cfg.MaxVersion, cfg.EncryptedClientHelloConfigList = tls.VersionTLS12, nil
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	defer client.CloseIdleConnections()
	resp, err := client.Get(d.url("/"))
	if err != nil {
		t.Fatalf("TLS 1.2 browser: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS.Version != tls.VersionTLS12 || !strings.Contains(string(body), "chatmail relay") {
		t.Errorf("TLS 1.2 browser: %s over %s, %.80q", resp.Status, tls.VersionName(resp.TLS.Version), body)
	}
	imap := d.tlsConfig(t, "imap")
	imap.MaxVersion, imap.EncryptedClientHelloConfigList = tls.VersionTLS12, nil
	if _, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port("https"))), imap); err == nil || !strings.Contains(err.Error(), "protocol version not supported") {
		t.Errorf("TLS 1.2 client asking for imap on the HTTPS port: %v, want a protocol_version alert", err)
	}

	s, err := config.FromFile(nil, writeChatmailINI(t))
	if err != nil {
		t.Fatal(err)
	}
	s.MinTLS, s.IMAPBackend.MinTLS = tls.VersionTLS13, tls.VersionTLS12
	if got := edgeLimitsFrom(s).MinTLS; got.HTTP != tls.VersionTLS13 || got.IMAP != tls.VersionTLS12 || got.SMTP != tls.VersionTLS13 {
		t.Errorf("edge limits from [web], [imap], [smtp] min_tls: %+v", got)
	}
}

// writeChatmailINI makes a root folder with a chatmail.ini where the edge
// looks for it.
func writeChatmailINI(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	p := filepath.Join(root, config.DefaultChatmailINI)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte("[params]\nmail_domain = chat.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}
