package service

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"chatmail-edge/config"
)

// regexpService matches a service's row with its state on a status page.
func regexpService(name, state string) *regexp.Regexp {
	return regexp.MustCompile(`<td>` + regexp.QuoteMeta(name) + `</td>\s*<td><span class="badge ` + state + `">`)
}

// adminGet fetches a path from the demo's loopback admin listener.
func (d *Demo) adminGet(t *testing.T, path string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(d.adminURL() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestStatusPages: the public page over ECH and the detailed one on the
// admin listener show what they should, with real probe results.
func TestStatusPages(t *testing.T) {
	d := startTestDemo(t, t.TempDir())
	d.currentWeb().CheckHealth(t.Context())
	newAccount(t, d) // some traffic for the counters

	resp, page := d.get(t, "chatmail.localhost", "/status")
	wantResponse(t, "public /status", resp, page, 200, "text/html; charset=utf-8")
	if resp.Header.Get("Content-Security-Policy") == "" {
		t.Error("no Content-Security-Policy on the status page")
	}
	cfgID := d.echKeys.Load().Current().Parsed().ConfigID
	for _, want := range []string{`id="certificates"`, `id="ech"`, `id="services"`, "chatmail.localhost", "local-ca",
		"<dt>Config id</dt><dd>" + strconv.Itoa(int(cfgID)) + "</dd>", "chatmail-edge devel"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("public status page lacks %q", want)
		}
	}
	if !regexpService("IMAP", "up").Match(page) || !regexpService("SMTP", "up").Match(page) {
		t.Errorf("public status page: IMAP and SMTP of the demo are not up:\n%s", page)
	}
	for _, adminOnly := range []string{`id="listeners"`, `id="recent"`, "/metrics", "Last error"} {
		if strings.Contains(string(page), adminOnly) {
			t.Errorf("public status page shows %q", adminOnly)
		}
	}

	resp, admin := d.adminGet(t, "/")
	wantResponse(t, "admin /", resp, admin, 200, "text/html; charset=utf-8")
	for _, want := range []string{`id="listeners"`, `id="recent"`, "<td>https", "Next attempt", "ms"} {
		if !strings.Contains(string(admin), want) {
			t.Errorf("admin status page lacks %q", want)
		}
	}
	// The demo's stand-ins answer for filtermail and iroh-relay
	// (TestDemoServiceDown has one that is down).
	if !regexpService("filtermail", "up").Match(admin) || !regexpService("iroh-relay", "up").Match(admin) {
		t.Errorf("admin page does not report the demo's filtermail and iroh-relay up:\n%s", admin)
	}
}

// TestStatusPageHasNoSecrets greps the public page for everything secret
// the demo holds: ECH private keys, the CA and leaf keys, account
// passwords, and the admin listener's port.
func TestStatusPageHasNoSecrets(t *testing.T) {
	state := t.TempDir()
	d := startTestDemo(t, state)
	d.currentWeb().CheckHealth(t.Context())
	_, password := newAccount(t, d)
	_, page := d.get(t, "chatmail.localhost", "/status")
	_, admin := d.adminGet(t, "/status") // the public page, served on loopback too

	adminPort := d.adminLn.Addr().String()
	secrets := []string{"PRIVATE KEY", password, d.password, adminPort, ":" + strings.Split(adminPort, ":")[1]}
	for _, k := range d.echKeys.Load().Keys {
		secrets = append(secrets, base64.StdEncoding.EncodeToString(k.PrivateKey), hex.EncodeToString(k.PrivateKey))
	}
	keyFiles, _ := filepath.Glob(filepath.Join(state, "*.key"))
	pems, _ := filepath.Glob(filepath.Join(state, "*.pem"))
	for _, f := range append(keyFiles, pems...) {
		b, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(b), "\n") {
			if len(line) > 40 && !strings.HasPrefix(line, "-----") {
				secrets = append(secrets, line) // base64 lines of keys (and certificates: public, but not shown either)
			}
		}
	}
	if len(secrets) < 8 {
		t.Fatalf("too few secrets to look for: %d", len(secrets))
	}
	for _, p := range [][]byte{page, admin} {
		for _, s := range secrets {
			if s != "" && bytes.Contains(p, []byte(s)) {
				t.Errorf("public status page contains a secret: %q", s)
			}
		}
	}
}

// TestMetricsOnAdminOnly: /metrics answers on the admin listener with the
// edge's metrics, every metric the alert rules use exists, and the public
// listener has no /metrics.
func TestMetricsOnAdminOnly(t *testing.T) {
	d := startTestDemo(t, t.TempDir())
	d.currentWeb().CheckHealth(t.Context())
	newAccount(t, d)
	resp, body := d.adminGet(t, "/metrics")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("admin /metrics: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	text := string(body)
	for _, want := range []string{
		`chatmail_edge_handshakes_total{ech="accepted",listener="https"}`,
		`chatmail_edge_connections_routed_total{listener="https",route="http"}`,
		`chatmail_edge_handshake_duration_seconds_bucket{listener="https",le="0.001"}`,
		`chatmail_edge_certificate_expiry_timestamp_seconds{cert="chatmail.localhost,`,
		`chatmail_edge_service_up{service="IMAP"} 1`,
		`chatmail_edge_service_up{service="filtermail"} 1`,
		`chatmail_edge_backend_dial_errors_total{listener="imaps"} 0`,
		`go_goroutines`, `process_open_fds`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	rules, err := os.ReadFile("../docs/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	used := regexp.MustCompile(`chatmail_edge_[a-z_]+`).FindAllString(string(rules), -1)
	if len(used) < 5 {
		t.Fatalf("alert rules use only %v", used)
	}
	for _, name := range used {
		if strings.HasPrefix(name, "chatmail_edge_store_") {
			continue // only with a shared store: TestStoreNodesOutlastTheStore checks them
		}
		if !regexp.MustCompile(`(?m)^` + name + `[{ ]`).MatchString(text) {
			t.Errorf("alert rules use %s, which /metrics does not export", name)
		}
	}
	resp, body = d.get(t, "chatmail.localhost", "/metrics")
	if resp.StatusCode != 404 || bytes.Contains(body, []byte("go_goroutines")) {
		t.Fatalf("public /metrics: %s", resp.Status)
	}
}

// TestAdminListenerLoopbackOnly: a public admin address is refused in the
// configuration file and when listening.
func TestAdminListenerLoopbackOnly(t *testing.T) {
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	for _, addr := range []string{"0.0.0.0:8081", ":8081", "[::]:8081", "192.0.2.1:8081", "example.org:8081"} {
		path := filepath.Join(dir, "edge.ini")
		os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n[admin]\naddress = "+addr+"\n"), 0o644)
		if _, err := config.Load(path, true); !errors.Is(err, config.ErrConfig) || !strings.Contains(err.Error(), path+":4: address:") || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("admin address %s: %v", addr, err)
		}
		if ln, err := listenAdmin(addr, listenTCP); err == nil {
			ln.Close()
			t.Errorf("listenAdmin(%s) succeeded", addr)
		}
	}
	ln, err := listenAdmin("127.0.0.1:0", listenTCP)
	if err != nil {
		t.Fatalf("loopback admin address refused: %v", err)
	}
	ln.Close()
}

// TestStatusPageInChromium loads both status pages of a running demo in
// headless Chromium (Debian's, installed by .ci/run), takes screenshots and
// checks the rendered page.
func TestStatusPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (apt-get install chromium; .ci/run does): skipping the browser test")
	}
	d := startTestDemo(t, t.TempDir())
	d.currentWeb().CheckHealth(t.Context())
	newAccount(t, d)
	artifacts := os.Getenv("ARTIFACTS_DIR")
	if artifacts == "" {
		artifacts = t.TempDir()
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, page := range []struct{ name, path string }{{"status-public", "/status"}, {"status-admin", "/"}} {
		// The plain-HTTP admin listener serves both pages, so the browser
		// needs neither the demo CA nor ECH.
		rendered := renderInChromium(t, chromium, d.adminURL()+page.path, filepath.Join(artifacts, page.name+".png"))
		for _, want := range []string{`<section id="certificates">`, `<section id="ech">`, `<section id="services">`, "Encrypted Client Hello", "chatmail.localhost"} {
			if !strings.Contains(rendered, want) {
				t.Errorf("%s rendered by chromium lacks %q", page.path, want)
			}
		}
		if page.path == "/" && !strings.Contains(rendered, `<section id="listeners">`) {
			t.Errorf("admin page rendered by chromium lacks the listeners")
		}
	}
}

func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
