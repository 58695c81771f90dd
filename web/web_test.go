package web

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/zap/zaptest"
)

func newTestServer(t *testing.T, newAccount func() (string, string, error)) *Server {
	return newTestServerWith(t, Config{Domain: "chat.example", HTTPSPort: 443}, newAccount)
}

func newTestServerWith(t *testing.T, cfg Config, newAccount func() (string, string, error)) *Server {
	t.Helper()
	s, err := New(cfg, Deps{
		Log:           zaptest.NewLogger(t),
		ECHConfigList: func() []byte { return []byte{0, 3, 0xfe, 0x0d, 0} },
		NewAccount:    newAccount,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func do(h http.Handler, method, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

func TestOriginSVCB(t *testing.T) {
	rec := do(newTestServer(t, nil).Handler(), "GET", "https://chat.example/.well-known/origin-svcb")
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var doc struct {
		RegenInterval int `json:"regeninterval"`
		Endpoints     []struct {
			Priority int `json:"priority"`
			Params   struct {
				ECH  string   `json:"ech"`
				ALPN []string `json:"alpn"`
			} `json:"params"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.RegenInterval <= 0 || len(doc.Endpoints) != 1 || doc.Endpoints[0].Priority != 1 {
		t.Fatalf("unexpected document %s", rec.Body)
	}
	if got, _ := base64.StdEncoding.DecodeString(doc.Endpoints[0].Params.ECH); string(got) != "\x00\x03\xfe\x0d\x00" {
		t.Fatalf("ech param %q", doc.Endpoints[0].Params.ECH)
	}
}

func TestNewAccount(t *testing.T) {
	h := newTestServer(t, func() (string, string, error) { return "abc@chat.example", "secret", nil }).Handler()
	rec := do(h, "GET", "https://chat.example/new")
	if rec.Code != http.StatusMovedPermanently || rec.Header().Get("Location") != "dcaccount:https://chat.example/new" {
		t.Fatalf("GET /new: %d %q", rec.Code, rec.Header().Get("Location"))
	}
	rec = do(h, "POST", "https://chat.example/new")
	var acct struct{ Email, Password string }
	if err := json.Unmarshal(rec.Body.Bytes(), &acct); err != nil || rec.Code != 200 || acct.Email != "abc@chat.example" || acct.Password != "secret" {
		t.Fatalf("POST /new: %d %s %v", rec.Code, rec.Body, err)
	}
	if rec := do(h, "DELETE", "https://chat.example/new"); rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("DELETE /new: %d", rec.Code)
	}
	failing := newTestServer(t, func() (string, string, error) { return "", "", errors.New("disk full") }).Handler()
	if rec := do(failing, "POST", "https://chat.example/new"); rec.Code != 500 || rec.Body.String() == "disk full\n" {
		t.Fatalf("failing /new: %d %q", rec.Code, rec.Body)
	}
	if rec := do(newTestServer(t, nil).Handler(), "POST", "https://chat.example/new"); rec.Code != 503 {
		t.Fatalf("/new without a creator: %d", rec.Code)
	}
}

func TestRedirectToHTTPS(t *testing.T) {
	s := newTestServer(t, nil)
	cases := []struct{ host, uri, want string }{
		{"chat.example", "/some/path?q=1", "https://chat.example/some/path?q=1"},
		{"chat.example:80", "/x", "https://chat.example/x"},
		{"127.0.0.1", "/", "https://127.0.0.1/"},
		{"[::1]", "/", "https://[::1]/"},
		{"[::1]:80", "/", "https://[::1]/"},
		{`evil"host`, "/", "https://chat.example/"},
		{"", "/", "https://chat.example/"},
		// Found by FuzzRequestHost and FuzzRedirectLocation.
		{"[::ffff:192.0.2.1]", "/", "https://[::ffff:192.0.2.1]/"},
		{"[www.evil.example]:80", "/", "https://chat.example/"},
		{"::1", "/", "https://chat.example/"},
		{"evil.example:x", "/", "https://chat.example/"},
	}
	for _, c := range cases {
		req := httptest.NewRequest("GET", c.uri, nil)
		req.Host = c.host
		rec := httptest.NewRecorder()
		s.RedirectHandler().ServeHTTP(rec, req)
		if rec.Code != 301 || rec.Header().Get("Location") != c.want {
			t.Errorf("Host %q %s: %d %q, want %q", c.host, c.uri, rec.Code, rec.Header().Get("Location"), c.want)
		}
	}
	s.cfg.HTTPSPort = 8443
	rec := do(s.RedirectHandler(), "GET", "http://chat.example:8080/a")
	if got := rec.Header().Get("Location"); got != "https://chat.example:8443/a" {
		t.Fatalf("non-default port: %q", got)
	}
}
