package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"chatmail-edge/config"
)

func TestUpstreams(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, r.Method+" "+r.Host+" "+r.URL.RequestURI()+" "+r.Header.Get("X-Forwarded-For")+" "+strings.Repeat("b", int(n)))
		io.WriteString(w, "ok")
	}))
	defer backend.Close()
	s := newTestServerWith(t, Config{Domain: "chat.example", MXDeliv: backend.URL, IrohRelay: backend.URL, MaxMessageSize: 10}, nil)
	h := s.Handler()
	send := func(method, target, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, target, strings.NewReader(body))
		req.Header.Set("X-Forwarded-For", "203.0.113.9") // spoofed: must not pass
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := send("POST", "https://chat.example/mxdeliv", "bbbbbbbbbb"); rec.Code != 200 || rec.Body.String() != "ok" {
		t.Fatalf("mxdeliv at the limit: %d %q", rec.Code, rec.Body)
	}
	if rec := send("POST", "https://chat.example/mxdeliv", "bbbbbbbbbbb"); rec.Code != 413 {
		t.Fatalf("mxdeliv over the limit: %d", rec.Code)
	}
	// An absolute URI or another Host never changes where a request goes.
	send("GET", "http://evil.example/ping?x=1", "")
	send("GET", "https://chat.example/relay/sub", "")
	send("GET", "https://chat.example/mxdelivery", "") // not an nginx prefix match of ours: the site
	host := strings.TrimPrefix(backend.URL, "http://")
	want := []string{
		"POST " + host + " /mxdeliv 192.0.2.1 bbbbbbbbbb",
		"GET " + host + " /ping?x=1 192.0.2.1 ",
		"GET " + host + " /relay/sub 192.0.2.1 ",
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Fatalf("upstream saw\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
	if got := s.upstreams[0].errors.Load(); got != 0 {
		t.Fatalf("%d upstream errors", got)
	}

	backend.Close()
	rec := send("POST", "https://chat.example/mxdeliv", "b")
	if rec.Code != 502 || len(rec.Body.String()) > 100 {
		t.Fatalf("dead upstream: %d %q", rec.Code, rec.Body)
	}
	if s.upstreams[0].errors.Load() != 1 {
		t.Fatal("the 502 was not counted")
	}
}

func TestParseUpstream(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:10082", "http://[::1]:3340/", "http://localhost:3340"} {
		if _, err := config.ParseUpstream(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"https://127.0.0.1:3340", "127.0.0.1:3340", "http://127.0.0.1", "http://127.0.0.1:1/x", "http://u:p@127.0.0.1:1", "http://127.0.0.1:1?q"} {
		if _, err := config.ParseUpstream(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
