package web

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// accessLogServer serves the HTTPS handler of a Server with the access log
// on, on loopback, as the edge's web server does: each connection carries
// the edge's id 42. It returns the address, the logged entries and a
// channel that gets a value after each request was answered and logged.
func accessLogServer(t *testing.T, cfg Config) (string, *observer.ObservedLogs, <-chan struct{}) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	cfg.AccessLog = true
	s, err := New(cfg, Deps{Log: zap.New(core), ECHConfigList: func() []byte { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{}, 10)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.Handler().ServeHTTP(w, r)
		served <- struct{}{}
	})
	srv := NewHTTPServer(h, zap.NewNop(), nil, ServerConfig{ConnID: func(net.Conn) (uint64, bool) { return 42, true }})
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), logs, served
}

// rawRequest sends one HTTP/1.1 request as it is and returns the status line.
func rawRequest(t *testing.T, addr, request string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	return resp.Status
}

// The access log has nginx's combined format, the edge's connection id,
// and escapes what a client could use to forge lines.
func TestAccessLogCombinedFormat(t *testing.T) {
	site := t.TempDir()
	os.WriteFile(filepath.Join(site, "index.html"), []byte("hello"), 0o644)
	addr, logs, served := accessLogServer(t, Config{Domain: "chat.example", SiteDir: site})

	if got := rawRequest(t, addr, "GET /?q=1 HTTP/1.1\r\nHost: chat.example\r\nUser-Agent: evil\" \\ \xffagent\r\nReferer: https://ref.example/\r\nConnection: close\r\n\r\n"); got != "200 OK" {
		t.Fatalf("GET /: %s", got)
	}
	<-served
	if got := rawRequest(t, addr, "GET /missing HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\r\n"); got != "404 Not Found" {
		t.Fatalf("GET /missing: %s", got)
	}
	<-served
	entries := logs.FilterLoggerName("access").All()
	if len(entries) != 2 {
		t.Fatalf("want 2 access log entries, got %d: %v", len(entries), logs.All())
	}
	date := `\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] `
	for i, want := range []string{
		`^127\.0\.0\.1 - - ` + date + regexp.QuoteMeta(`"GET /?q=1 HTTP/1.1" 200 5 "https://ref.example/" "evil\x22 \x5C \xFFagent"`) + `$`,
		`^127\.0\.0\.1 - - ` + date + regexp.QuoteMeta(`"GET /missing HTTP/1.1" 404 19 "-" "-"`) + `$`,
	} {
		e := entries[i]
		if !regexp.MustCompile(want).MatchString(e.Message) {
			t.Errorf("access line %d:\n got %s\nwant %s", i, e.Message, want)
		}
		if e.ContextMap()["conn"] != uint64(42) || e.Level != zapcore.InfoLevel {
			t.Errorf("access line %d: fields %v, level %v: want conn 42 at info", i, e.ContextMap(), e.Level)
		}
	}
}

// Off by default: nothing is logged per request.
func TestAccessLogOffByDefault(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	s, err := New(Config{Domain: "chat.example"}, Deps{Log: zap.New(core), ECHConfigList: func() []byte { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if rec := do(s.Handler(), "GET", "https://chat.example/"); rec.Code != 200 {
		t.Fatalf("GET /: %d", rec.Code)
	}
	if n := logs.FilterLoggerName("access").Len(); n != 0 {
		t.Errorf("%d access log entries with the access log off", n)
	}
}

// A switch of protocols is logged as 101, and a field longer than
// accessLogField is cut.
func TestAccessLogUpgradeAndLongFields(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	logged := make(chan struct{})
	upgrade := withAccessLog(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		c.Close()
	}), zap.New(core))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upgrade.ServeHTTP(w, r)
		close(logged)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	defer srv.Close()
	long := strings.Repeat("a", 3*accessLogField)
	if got := rawRequest(t, ln.Addr().String(), fmt.Sprintf("GET /relay HTTP/1.1\r\nHost: x\r\nUpgrade: test\r\nConnection: Upgrade\r\nUser-Agent: %s\r\n\r\n", long)); got != "101 Switching Protocols" {
		t.Fatalf("upgrade: %s", got)
	}
	<-logged
	entries := logs.All()
	if len(entries) != 1 || !strings.Contains(entries[0].Message, `"GET /relay HTTP/1.1" 101 0 "-" "`+strings.Repeat("a", accessLogField)+`"`) {
		t.Fatalf("access log: %v", entries)
	}
}
