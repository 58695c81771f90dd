//go:build integration

package integration

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/internal/etcdtest"
	"chatmail-edge/mail"
	"chatmail-edge/service"

	"github.com/emersion/go-imap/v2/imapclient"
)

// startFront runs serve as the relay's own edge in front of r's daemons
// (tls mode, as chatmail's 993 and 465 today), in-process, with the web
// side: a site and an account script that makes a Dovecot account as
// chatmail's newemail.py makes one (doveauth creates it at the first login
// there; here the script writes it into Dovecot's passwd-file, which
// Dovecot reads again when it changes). extra are more sections ([store]).
func startFront(t *testing.T, r *relay, extra string) *service.Service {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "chatmail.ini"), "[params]\nmail_domain = "+domain+"\n", 0o644)
	if err := os.Mkdir(filepath.Join(dir, "site"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "site", "index.html"), "<h1>chatmail relay</h1>\n", 0o644)
	script := filepath.Join(dir, "newemail.sh")
	writeFile(t, script, fmt.Sprintf(`#!/bin/sh
set -e
user=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
printf '%%s@%[1]s:{PLAIN}%%s\n' "$user" "$password" >> %[2]s
printf 'Content-Type: application/json\r\n\r\n{"email":"%%s@%[1]s","password":"%%s"}\n' "$user" "$password"
`, domain, filepath.Join(r.dir, "users")), 0o755)
	file := filepath.Join(dir, "chatmail-edge.ini")
	writeFile(t, file, fmt.Sprintf(`[edge]
chatmail_ini = %[1]s/chatmail.ini
state_dir = %[1]s/state
https = 127.0.0.1:0
imaps = 127.0.0.1:0
smtps = 127.0.0.1:0
http =
control_socket =
[imap]
backend = tls
address = %[2]s
[smtp]
backend = tls
address = %[3]s
[tls]
cert = %[4]s
key = %[5]s
[ech]
metadata_file =
[admin]
address =
[web]
site_dir = %[1]s/site
new_account_cgi = %[6]s
%[7]s`, dir, r.dovecot.Backend, r.postfix.Backend, r.certFile, r.keyFile, script, extra), 0o644)
	return serveFile(t, file)
}

// throughEdge is r as a client sees it through e: e's listeners, with the
// ECH config list the client holds.
func throughEdge(r *relay, e *service.Service, echList []byte) *relay {
	through := *r
	through.edge, through.echList = nil, echList
	through.addrs = map[string]string{}
	for _, l := range []string{"https", "imaps", "smtps"} {
		through.addrs[l] = e.Addr(l).String()
	}
	return &through
}

// httpsClient talks to r's 443 like a browser with ECH from clientIP; no
// ECH without an ECH config list.
func (r *relay) httpsClient() *http.Client {
	return &http.Client{Timeout: clientTimeout, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: clientIP}, Timeout: clientTimeout}).DialContext,
		TLSClientConfig: &tls.Config{ServerName: domain, RootCAs: r.roots, MinVersion: tls.VersionTLS13,
			EncryptedClientHelloConfigList: r.echList},
		ForceAttemptHTTP2: true,
	}}
}

// fetch sends method for path from r's 443 with Host domain.
func (r *relay) fetch(method, path string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, "https://"+r.addr("https")+path, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Host = domain
	resp, err := r.httpsClient().Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, body)
	}
	if err == nil && resp.TLS != nil && r.echList != nil && !resp.TLS.ECHAccepted {
		err = fmt.Errorf("%s %s: ECH not accepted", method, path)
	}
	return resp, body, err
}

// originECH is the ECH config list r's 443 publishes at
// /.well-known/origin-svcb, fetched as a client's first contact does.
func (r *relay) originECH(t *testing.T) []byte {
	t.Helper()
	_, body, err := r.fetch("GET", "/.well-known/origin-svcb")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Endpoints []struct {
			Params struct {
				ECH string `json:"ech"`
			} `json:"params"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || len(doc.Endpoints) != 1 {
		t.Fatalf("origin-svcb %s: %v", body, err)
	}
	list, err := base64.StdEncoding.DecodeString(doc.Endpoints[0].Params.ECH)
	if err != nil || len(list) == 0 {
		t.Fatalf("origin-svcb's ech %q: %v", doc.Endpoints[0].Params.ECH, err)
	}
	return list
}

// newChatmailAccount is POST /new through r, as Delta Chat makes an
// account: chatmail's answer, {"email", "password"}.
func (r *relay) newChatmailAccount(t *testing.T) account {
	t.Helper()
	_, body, err := r.fetch("POST", "/new")
	if err != nil {
		t.Fatal(err)
	}
	var got struct{ Email, Password string }
	if err := json.Unmarshal(body, &got); err != nil || got.Email == "" || got.Password == "" {
		t.Fatalf("POST /new answered %q (%v)", body, err)
	}
	acct := account{addr: got.Email, password: got.Password}
	// Dovecot looks at its passwd-file again at most once a second
	// (db-passwd-file.c, passwd_file_sync): until then the account the
	// script wrote is unknown to it. (chatmail's doveauth knows it at once.)
	waitUntil(t, 10*time.Second, "Dovecot to know "+acct.addr, func() bool {
		conn, err := r.dial(read993)
		if err != nil {
			return false
		}
		c := imapclient.New(conn, nil)
		defer c.Close()
		return c.Login(acct.addr, acct.password).Wait() == nil
	})
	return acct
}

// TestThreeEdgesOneStore (issue 20): the relay's own edge and two nodes in
// front of it, all three on one etcd store, in front of the real Postfix
// and Dovecot. The nodes reach the relay through its edge's 993, 465 and
// 443 (connect = tls, the relay's certificate verified).
//
//   - One ECH key set: a client holding the config it fetched from one
//     node's origin-svcb is accepted with ECH by the other node and the
//     relay, and all three publish the same list.
//   - The chatmail flow through each of the three: an account from POST
//     /new, a message to itself submitted over 465 and over 443 (ALPN
//     smtp), both read back over 993 and over 443 (ALPN imap).
func TestThreeEdgesOneStore(t *testing.T) {
	r, _ := startMailSide(t, mail.ModeTLS, "")
	etcd := etcdtest.Start(t, etcdtest.Options{})
	storeINI := "[store]\netcd_endpoints = " + etcd.Endpoint + "\n"
	front := startFront(t, r, storeINI)
	nr := &nodeRelay{relay: r, front: front}
	_, node1 := startNode(t, nr, config.NodeConnectTLS, storeINI)
	_, node2 := startNode(t, nr, config.NodeConnectTLS, storeINI)
	edges := []struct {
		name string
		e    *service.Service
	}{{"relay", front}, {"node 1", node1}, {"node 2", node2}}

	// The first contact: no ECH yet, the config from node 1's origin-svcb.
	list := throughEdge(r, node1, nil).originECH(t)
	for _, e := range edges {
		through := throughEdge(r, e.e, list)
		conn, err := through.dial(read993)
		if err != nil {
			t.Fatalf("%s with the config fetched from node 1: %v", e.name, err)
		}
		conn.Close()
		if got := through.originECH(t); string(got) != string(list) {
			t.Errorf("%s publishes another ECH config list than node 1", e.name)
		}
	}

	for _, e := range edges {
		t.Run(e.name, func(t *testing.T) {
			through := throughEdge(r, e.e, list)
			acct := through.newChatmailAccount(t)
			viaSMTPS, via443 := newMessage(acct, acct), newMessage(acct, acct)
			through.mustSubmit(t, submit465, viaSMTPS)
			through.mustSubmit(t, submit443, via443)
			for _, rt := range []route{read993, read443} {
				c := through.login(t, rt, acct, nil)
				for _, m := range []message{viaSMTPS, via443} {
					if bodies := waitForMessage(t, c, m.id); len(bodies) != 1 {
						t.Fatalf("%s through %s: %d copies of %s", e.name, rt.name, len(bodies), m.id)
					}
				}
			}
		})
	}
}
