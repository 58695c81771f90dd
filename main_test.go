package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as chatmail-edge: with this variable set it runs
// main with its arguments, so tests can start real processes of it.
const runMainEnv = "CHATMAIL_EDGE_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// command runs chatmail-edge with args as a child process.
func command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	return cmd
}

// TestDemoProcessContract runs `demo` as scripts do: it must print its
// banner and a line containing "ready", the printed probe command must pass
// every check with ECH, and SIGTERM must stop it cleanly.
func TestDemoProcessContract(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	state := t.TempDir()
	demo := command(ctx, "demo", "--state", state, "--https-port", "0", "--imaps-port", "0", "--smtps-port", "0", "--http-port", "0", "--admin-port", "0")
	stdout, err := demo.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	demo.Stderr = &stderr
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	// demoLog stops the demo first: its log is written to stderr by a
	// goroutine of os/exec until the process has exited.
	demoLog := func() string {
		demo.Process.Kill()
		demo.Wait()
		return stderr.String()
	}
	var banner []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		banner = append(banner, sc.Text())
		if strings.Contains(sc.Text(), "ready") {
			break
		}
	}
	if len(banner) == 0 || !strings.Contains(banner[len(banner)-1], "ready") {
		t.Fatalf("no ready line; stdout %q, stderr %s", banner, demoLog())
	}
	go io.Copy(io.Discard, stdout)
	text := strings.Join(banner, "\n")
	for _, want := range []string{state + "/demo-ca.pem", "ECH config list (base64)", "demo account"} {
		if !strings.Contains(text, want) {
			t.Errorf("banner lacks %q:\n%s", want, text)
		}
	}

	// The printed probe command, run as printed.
	var probeArgs []string
	for _, line := range banner {
		if f := strings.Fields(line); slices.Contains(f, "--ca") {
			probeArgs = f[slices.Index(f, "probe")+1:]
		}
	}
	if probeArgs == nil {
		t.Fatalf("no probe command in the banner:\n%s", text)
	}
	for i, a := range probeArgs {
		probeArgs[i] = shellUnquote(a)
	}
	out, err := command(ctx, append([]string{"probe"}, probeArgs...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "all 6 checks passed") {
		t.Fatalf("probe: %v\n%s\ndemo log:\n%s", err, out, demoLog())
	}
	if strings.Count(string(out), " accepted ") != 5 {
		t.Errorf("want ECH accepted on the 5 service checks:\n%s", out)
	}

	// `ech show` works on the demo's state folder and agrees with the banner.
	show, err := command(ctx, "ech", "show", "--state", state).Output()
	if err != nil || !strings.Contains(text, strings.TrimSpace(string(show))) {
		t.Fatalf("ech show: %v %q", err, show)
	}

	demo.Process.Signal(syscall.SIGTERM)
	if err := demo.Wait(); err != nil {
		t.Fatalf("demo did not stop cleanly on SIGTERM: %v\n%s", err, stderr.String())
	}
}

// shellUnquote undoes shellQuote for one word: quotes around it, and each
// quote inside written as quote, backslash, quote, quote.
func shellUnquote(a string) string {
	if len(a) >= 2 && strings.HasPrefix(a, "'") && strings.HasSuffix(a, "'") {
		return strings.ReplaceAll(a[1:len(a)-1], `'\''`, "'")
	}
	return a
}

// TestShellQuoteRoundTrip covers the demo passwords the banner quotes,
// apostrophes at either end included (the test above once lost those).
func TestShellQuoteRoundTrip(t *testing.T) {
	for _, pw := range []string{"plain9", "'start", "end'", "'", "a'b'c", `x"$\y`, "''"} {
		if got := shellUnquote(shellQuote(pw)); got != pw {
			t.Errorf("shellQuote(%q) = %s, unquoted %q", pw, shellQuote(pw), got)
		}
	}
}

// tlsClient trusts the demo CA and uses the demo's current ECH config.
func (d *demo) tlsConfig(t *testing.T, alpn ...string) *tls.Config {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(d.ca.CertPEM)
	return &tls.Config{
		ServerName: d.cfg.Domain, RootCAs: roots, NextProtos: alpn,
		EncryptedClientHelloConfigList: d.echKeys.Load().ConfigList(),
	}
}

// url is an HTTPS URL of the demo on loopback (SNI comes from tlsConfig).
func (d *demo) url(path string) string {
	return "https://127.0.0.1:" + strconv.Itoa(d.port("https")) + path
}

func startTestDemo(t *testing.T, state string) *demo {
	t.Helper()
	return startTestDemoWeb(t, state, demoWeb{})
}

// startTestDemoWeb starts a demo on loopback, every port picked by the
// system, with the web side pointed at the test's own upstreams and files.
func startTestDemoWeb(t *testing.T, state string, w demoWeb) *demo {
	t.Helper()
	log, err := newLogger(io.Discard, "info")
	if err != nil {
		t.Fatal(err)
	}
	d, err := startDemo(demoConfig{StateDir: state, Domain: "chatmail.localhost", Host: "127.0.0.1", web: w}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.shutdown)
	return d
}

// newAccount does what Delta Chat does with a DCACCOUNT code: POST /new.
func newAccount(t *testing.T, d *demo) (email, password string) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: d.tlsConfig(t)}}
	resp, err := client.Post(d.url("/new"), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if !resp.TLS.ECHAccepted {
		t.Fatal("POST /new without ECH")
	}
	var acct struct{ Email, Password string }
	if err := json.NewDecoder(resp.Body).Decode(&acct); err != nil || acct.Email == "" || acct.Password == "" {
		t.Fatalf("POST /new: %s %v %+v", resp.Status, err, acct)
	}
	return acct.Email, acct.Password
}

func TestOriginSVCBMatchesECHShow(t *testing.T) {
	state := t.TempDir()
	d := startTestDemo(t, state)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: d.tlsConfig(t)}}
	resp, err := client.Get(d.url("/.well-known/origin-svcb"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Endpoints []struct {
			Params struct{ ECH string } `json:"params"`
		} `json:"endpoints"`
	}
	json.NewDecoder(resp.Body).Decode(&doc)
	var show bytes.Buffer
	if code := run([]string{"ech", "show", "--state", state}, &show, io.Discard); code != 0 {
		t.Fatalf("ech show exit %d", code)
	}
	if len(doc.Endpoints) != 1 || doc.Endpoints[0].Params.ECH != strings.TrimSpace(show.String()) {
		t.Fatalf("origin-svcb %+v, ech show %q", doc, show.String())
	}
	if _, err := base64.StdEncoding.DecodeString(doc.Endpoints[0].Params.ECH); err != nil {
		t.Fatal(err)
	}
}

// TestConfigDocIsCurrent keeps docs/CONFIG.md equal to `config describe`.
// Run `go run . config describe > docs/CONFIG.md.part` and paste it after a change.
func TestConfigDocIsCurrent(t *testing.T) {
	doc, err := os.ReadFile("docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```ini\n"+describeConfig()+"```\n") {
		t.Fatal("docs/CONFIG.md is out of date: paste the output of `go run . config describe` into its ini block")
	}
}
