package web

import (
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeScript(t *testing.T, body string) string {
	path := filepath.Join(t.TempDir(), "newemail.py")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestNewAccountCGI runs a real script through net/http/cgi (RFC 3875):
// it sees the request's method, URI and body, and its JSON comes back.
func TestNewAccountCGI(t *testing.T) {
	script := writeScript(t, `read -r body
printf 'Content-Type: application/json\n\n'
printf '{"email":"x@chat.example","password":"p","method":"%s","uri":"%s","body":"%s","remote":"%s"}\n' "$REQUEST_METHOD" "$REQUEST_URI" "$body" "$REMOTE_ADDR"
`)
	h := newTestServerWith(t, Config{Domain: "chat.example", NewAccountCGI: script}, nil).Handler()
	req := httptest.NewRequest("POST", "https://chat.example/cgi-bin/newemail.py", strings.NewReader("hello\n"))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var got map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("POST: %d %q %v", rec.Code, rec.Body, err)
	}
	if got["method"] != "POST" || got["uri"] != "/cgi-bin/newemail.py" || got["body"] != "hello" || got["remote"] != "192.0.2.1" {
		t.Fatalf("the script saw %v", got)
	}
	if rec.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("an account answer may be cached: %v", rec.Header())
	}
	// Not self mode: a browser's GET goes to the app, the script does not run.
	if rec := do(h, "GET", "https://chat.example/cgi-bin/newemail.py"); rec.Code != 301 || rec.Header().Get("Location") != "dcaccount:https://chat.example/new" {
		t.Fatalf("GET: %d %q", rec.Code, rec.Header().Get("Location"))
	}
	big := httptest.NewRequest("POST", "https://chat.example/new", strings.NewReader(strings.Repeat("x", maxCGIBody+1)))
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, big)
	if rec.Code != 413 {
		t.Fatalf("big body: %d", rec.Code)
	}
}

func TestNewAccountCGIFailures(t *testing.T) {
	cases := map[string]struct {
		script string
		code   int
	}{
		"hangs":           {"exec sleep 1\n", 504},
		"no headers":      {"echo\n", 500},
		"too much output": {"printf 'Content-Type: text/plain\\n\\n'; head -c 100000 /dev/zero\n", 500},
		"exits 1":         {"exit 1\n", 500},
		// Found by FuzzNewAccountCGIOutput: a status below 100 crashed the
		// edge (net/http/cgi hands it on, httptest's recorder panics in
		// the script's goroutine); a bogus one gave an empty 200.
		"status 099":   {"printf 'Status: 099 Low\\nContent-Type: text/plain\\n\\nx'\n", 502},
		"status 101":   {"printf 'Status: 101 Switching Protocols\\nUpgrade: websocket\\n\\n'\n", 502},
		"bogus status": {"printf 'Status: abc\\nContent-Type: text/plain\\n\\nx'\n", 502},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s := newTestServerWith(t, Config{Domain: "chat.example", NewAccountCGI: writeScript(t, c.script), NewAccountTimeout: 500 * time.Millisecond}, nil)
			// A script past its timeout runs on and logs when it ends: that
			// must happen before the test's logger is gone.
			t.Cleanup(func() {
				for deadline := time.Now().Add(30 * time.Second); len(s.newAcct.running) > 0; time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("the account script still runs")
					}
				}
			})
			if rec := do(s.Handler(), "POST", "https://chat.example/new"); rec.Code != c.code {
				t.Fatalf("%d %q, want %d", rec.Code, rec.Body, c.code)
			}
		})
	}
	missing := newTestServerWith(t, Config{Domain: "chat.example", NewAccountCGI: "/nonexistent/newemail.py"}, nil).Handler()
	if rec := do(missing, "POST", "https://chat.example/new"); rec.Code != 500 {
		t.Fatalf("missing script: %d", rec.Code)
	}
}

// TestNewAccountCGIHeaderFields: the script's framing and hop-by-hop fields
// are not passed on (net/http frames the body itself), and an invalid field
// value fails the answer with 502, as with nginx.
func TestNewAccountCGIHeaderFields(t *testing.T) {
	script := writeScript(t, "printf 'Content-Type: text/plain\\nContent-Length: 2\\nConnection: close\\nX-Good: yes\\n\\nhello'\n")
	h := newTestServerWith(t, Config{Domain: "chat.example", NewAccountCGI: script}, nil).Handler()
	rec := do(h, "POST", "https://chat.example/new")
	if rec.Code != 200 || rec.Body.String() != "hello" || rec.Header().Get("X-Good") != "yes" {
		t.Fatalf("%d %q %v", rec.Code, rec.Body, rec.Header())
	}
	for _, name := range []string{"Content-Length", "Connection"} {
		if v, ok := rec.Header()[name]; ok {
			t.Errorf("%s %q passed on", name, v)
		}
	}
	bad := writeScript(t, "printf 'Content-Type: text/plain\\nX-Bad: a\\001b\\n\\nhello'\n")
	h = newTestServerWith(t, Config{Domain: "chat.example", NewAccountCGI: bad}, nil).Handler()
	if rec := do(h, "POST", "https://chat.example/new"); rec.Code != 502 || rec.Header().Get("X-Bad") != "" {
		t.Fatalf("invalid field value: %d %v", rec.Code, rec.Header())
	}
}

// TestNewAccountSelfMode: in chatmail's self mode GET runs the script too,
// and each address gets 2 requests a second with a burst of 5, as nginx's
// limit_req zone=newaccount rate=2r/s burst=5 nodelay.
func TestNewAccountSelfMode(t *testing.T) {
	script := writeScript(t, "printf 'Content-Type: application/json\\n\\n{\"email\":\"a@_chat.example\"}\\n'\n")
	s := newTestServerWith(t, Config{Domain: "_chat.example", SelfMode: true, NewAccountCGI: script}, nil)
	now := time.Unix(1700000000, 0)
	s.now = func() time.Time { return now }
	h := s.Handler()
	request := func(method, from string) int {
		req := httptest.NewRequest(method, "https://_chat.example/new", nil)
		req.RemoteAddr = from + ":40000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	for i := range 6 {
		if code := request("GET", "192.0.2.1"); code != 200 {
			t.Fatalf("request %d of the burst: %d", i+1, code)
		}
	}
	if code := request("POST", "192.0.2.1"); code != 503 {
		t.Fatalf("7th request at once: %d, want 503", code)
	}
	if code := request("GET", "192.0.2.2"); code != 200 {
		t.Fatalf("another address: %d", code)
	}
	now = now.Add(500 * time.Millisecond) // one request's worth at 2 r/s
	if code := request("GET", "192.0.2.1"); code != 200 {
		t.Fatalf("after 0.5 s: %d", code)
	}
	if code := request("GET", "192.0.2.1"); code != 503 {
		t.Fatalf("second after 0.5 s: %d", code)
	}
}

func TestRateLimiterBoundsMemory(t *testing.T) {
	l := newRateLimiter(2, 5)
	now := time.Unix(0, 0)
	for i := range maxRateLimitEntries + 10 {
		l.allow(string(rune(i)), now)
	}
	if len(l.buckets) > maxRateLimitEntries {
		t.Fatalf("%d entries kept", len(l.buckets))
	}
}
