package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"chatmail-edge/edge"
	"chatmail-edge/web"
)

// TestDNSCommand: `dns` prints the _mta-sts record, whose id changes
// exactly when the served policy does, and the HTTPS record with the same
// ECH config list as `ech show`.
func TestDNSCommand(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if _, _, err := edge.EnsureECHKeys(echDir(state), "chat.example", 32, time.Now()); err != nil {
		t.Fatal(err)
	}
	dns := func(domain, extra string) string {
		t.Helper()
		chatmailINI := filepath.Join(dir, "chatmail.ini")
		os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = "+domain+"\n"), 0o644)
		path := filepath.Join(dir, "edge.ini")
		os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\nstate_dir = "+state+"\n"+extra), 0o644)
		var out, stderr bytes.Buffer
		if code := run([]string{"dns", "--config", path}, &out, &stderr); code != 0 {
			t.Fatalf("dns exit %d: %s", code, stderr.String())
		}
		return out.String()
	}
	idOf := regexp.MustCompile(`(?m)^_mta-sts\.chat\.example\. 3600 IN TXT "v=STSv1; id=([A-Za-z0-9]{1,32})"$`)

	out := dns("chat.example", "")
	m := idOf.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no _mta-sts record:\n%s", out)
	}
	served := "version: STSv1\nmode: enforce\nmx: chat.example\nmax_age: 2419200\n"
	if m[1] != web.MTASTSPolicyID(served) {
		t.Fatalf("id %s is not that of the served policy", m[1])
	}
	if !strings.Contains(out, "mta-sts.chat.example. 3600 IN CNAME chat.example.\n") {
		t.Errorf("no mta-sts CNAME:\n%s", out)
	}
	var show bytes.Buffer
	run([]string{"ech", "show", "--state", state}, &show, io.Discard)
	wantHTTPS := `chat.example. 3600 IN HTTPS 1 . alpn="h2,http/1.1" ech="` + strings.TrimSpace(show.String()) + `"`
	if !strings.Contains(out, wantHTTPS+"\n") {
		t.Fatalf("no HTTPS record %s in:\n%s", wantHTTPS, out)
	}

	// Same policy, same id; another policy, another id.
	if again := idOf.FindStringSubmatch(dns("chat.example", "")); again == nil || again[1] != m[1] {
		t.Fatalf("id changed without a policy change: %v", again)
	}
	testingID := idOf.FindStringSubmatch(dns("chat.example", "[mta-sts]\nmode = testing\n"))
	if testingID == nil || testingID[1] == m[1] {
		t.Fatalf("id did not change with the mode: %v", testingID)
	}
	if shorter := idOf.FindStringSubmatch(dns("chat.example", "[mta-sts]\nmax_age = 86400\n")); shorter == nil || shorter[1] == m[1] || shorter[1] == testingID[1] {
		t.Fatalf("id did not change with max_age: %v", shorter)
	}

	// chatmail's self mode has no CA certificate, so no MTA-STS.
	if out := dns("_chat.example", ""); strings.Contains(out, "_mta-sts") || !strings.Contains(out, "_chat.example. 3600 IN HTTPS") {
		t.Fatalf("self mode:\n%s", out)
	}
}
