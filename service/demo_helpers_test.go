package service

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/ech"
)

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
func (d *Demo) tlsConfig(t *testing.T, alpn ...string) *tls.Config {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(d.ca.CertPEM)
	return &tls.Config{
		ServerName: d.cfg.Domain, RootCAs: roots, NextProtos: alpn,
		EncryptedClientHelloConfigList: d.echKeys.Load().ConfigList(),
	}
}

// url is an HTTPS URL of the demo on loopback (SNI comes from tlsConfig).
func (d *Demo) url(path string) string {
	return "https://127.0.0.1:" + strconv.Itoa(d.port("https")) + path
}

func startTestDemo(t *testing.T, state string) *Demo {
	t.Helper()
	return startTestDemoWeb(t, state, demoWeb{})
}

// startTestDemoWeb starts a demo on loopback, every port picked by the
// system, with the web side pointed at the test's own upstreams and files.
func startTestDemoWeb(t *testing.T, state string, w demoWeb) *Demo {
	t.Helper()
	log, err := NewLogger(io.Discard, "info")
	if err != nil {
		t.Fatal(err)
	}
	d, err := StartDemo(DemoConfig{StateDir: state, Domain: "chatmail.localhost", Host: "127.0.0.1", web: w}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Shutdown)
	return d
}

// newAccount does what Delta Chat does with a DCACCOUNT code: POST /new.
func newAccount(t *testing.T, d *Demo) (email, password string) {
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
	if show := echShow(t, state); len(doc.Endpoints) != 1 || doc.Endpoints[0].Params.ECH != show {
		t.Fatalf("origin-svcb %+v, ech show %q", doc, show)
	}
	if _, err := base64.StdEncoding.DecodeString(doc.Endpoints[0].Params.ECH); err != nil {
		t.Fatal(err)
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

// echShow is what `ech show --state state` prints, without its newline.
func echShow(t *testing.T, state string) string {
	t.Helper()
	set, err := ech.Load(ech.Dir(state))
	if err != nil || set.Current() == nil {
		t.Fatalf("ECH keys in %s: %v", state, err)
	}
	return set.Base64()
}

// echRotate is `ech rotate --state state`.
func echRotate(t *testing.T, state string) {
	t.Helper()
	if _, _, err := ech.RotateLike(ech.Dir(state), "", time.Now()); err != nil {
		t.Fatalf("ech rotate: %v", err)
	}
}
