package service

// The catalogue of bad input (issue 16, item 5): every kind of broken or
// hostile client, and every kind of broken file, against the real service:
// serve, in-process, on loopback, with ECH on 443, 993 and 465, in front of
// the local delivery behind PROXY v2. For each kind a case asserts what the
// peer got (an alert, a status, a close), the counter that counts it (on
// the admin listener's /metrics), the log line, that serve still runs, and
// that the next good clients are served: IMAP greetings with ECH on 993 and
// on 443, and an HTTP 200 with ECH.
//
// The files: catalogue_tls_test.go (TLS records, handshakes, PROXY headers),
// catalogue_ech_test.go, catalogue_http_test.go (HTTP/1.1 and h2),
// catalogue_mail_test.go (IMAP and SMTP after TLS), catalogue_files_test.go
// (configuration and state files: at the start and at a reload), and
// catalogue_hello_test.go (ClientHellos built by hand). Where the edge has
// no counter of its own for a kind (HTTP requests net/http refuses, bytes
// of proxied sessions), the case checks the one of its connection.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// catalogueConfig gives the cases short timeouts, so that those that wait
// for one end soon. A good client sends its ClientHello right after the
// TCP handshake and is done with the TLS handshake in milliseconds.
const catalogueConfig = `[edge]
imaps = 127.0.0.1:0
smtps = 127.0.0.1:0
hello_timeout = 500ms
handshake_timeout = 2s
[web]
header_timeout = 2s
send_timeout = 2s
[admin]
address = 127.0.0.1:0
`

// catalogueEnv is serve running on reloadEnv's files, with its log kept.
type catalogueEnv struct {
	*reloadEnv
	roots *x509.CertPool
	logs  *observer.ObservedLogs
	site  string // the website folder
}

// startCatalogue starts serve with catalogueConfig and extra on top.
func startCatalogue(t *testing.T, extra string) *catalogueEnv {
	t.Helper()
	env, roots := newReloadFiles(t)
	ce := newCatalogue(t, env, roots)
	env.writeConfig(t, mergeINI(catalogueConfig, extra))
	ce.start(t)
	return ce
}

// newCatalogue writes the website and the configuration on env's files.
func newCatalogue(t *testing.T, env *reloadEnv, roots *x509.CertPool) *catalogueEnv {
	t.Helper()
	ce := &catalogueEnv{reloadEnv: env, roots: roots, site: filepath.Join(env.dir, "site")}
	writeCatalogueSite(t, ce.site)
	env.writeConfig(t, catalogueConfig)
	return ce
}

// start runs serve with a log the cases read.
func (env *catalogueEnv) start(t *testing.T) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	env.logs = logs
	env.reloadEnv.start(t, zap.New(zapcore.NewTee(testZap(t).Core(), core)))
}

// writeCatalogueSite is a small website with a link that points out of it.
func writeCatalogueSite(t *testing.T, dir string) {
	t.Helper()
	for name, content := range map[string]string{
		"index.html":      "<h1>catalogue relay</h1>",
		"outside/secret":  "root:x:0:0:not for the web\n",
		"info/index.html": "<h1>info</h1>",
	} {
		path := filepath.Join(dir, name)
		if strings.HasPrefix(name, "outside/") {
			path = filepath.Join(filepath.Dir(dir), name)
		}
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(filepath.Dir(dir), "outside"), filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
}

func (env *catalogueEnv) addr(listener string) string {
	return env.edge.edge.Addr(listener).String()
}

func (env *catalogueEnv) echList() []byte { return env.edge.echKeys.Load().ConfigList() }

// tlsConfig is a good client's: the relay's name, its CA, the published
// ECH configs.
func (env *catalogueEnv) tlsConfig(alpn ...string) *tls.Config {
	return &tls.Config{ServerName: reloadDomain, RootCAs: env.roots, NextProtos: alpn, EncryptedClientHelloConfigList: env.echList()}
}

// metric reads one series from the admin listener's /metrics, as
// `name{label="value",...}` with the labels in alphabetical order.
func (env *catalogueEnv) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + env.edge.adminLn.Addr().String() + "/metrics")
	if err != nil {
		t.Fatalf("admin /metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("/metrics: %s: %v", sc.Text(), err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no series %s", series)
	return 0
}

func failures(listener, reason string) string {
	return fmt.Sprintf(`chatmail_edge_connection_failures_total{listener=%q,reason=%q}`, listener, reason)
}

func routed(listener, route string) string {
	return fmt.Sprintf(`chatmail_edge_connections_routed_total{listener=%q,route=%q}`, listener, route)
}

// eventually polls cond until it holds: for counters and log lines, which
// change on the server's side after the client saw the close, with nothing
// to wait on.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, 10*time.Second, what, cond)
}

func eventuallyWithin(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logLine is a line the service must log: its message, and a text one of
// its fields holds ("" for any).
type logLine struct{ msg, field string }

// logged reports whether a line like want was logged after the first
// since lines.
func (env *catalogueEnv) logged(since int, want logLine) bool {
	all := env.logs.All()
	for _, e := range all[min(since, len(all)):] {
		if e.Message != want.msg {
			continue
		}
		if want.field == "" {
			return true
		}
		for _, f := range e.Context {
			if strings.Contains(fieldText(f), want.field) {
				return true
			}
		}
	}
	return false
}

// expectLogged waits for a line like want after the first since lines.
func (env *catalogueEnv) expectLogged(t *testing.T, since int, want logLine) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !env.logged(since, want) {
		if time.Now().After(deadline) {
			var seen []string
			for _, e := range env.logs.All()[since:] {
				if e.Message == want.msg {
					seen = append(seen, fmt.Sprint(e.ContextMap()))
				}
			}
			t.Fatalf("no log line %q with %q; lines with that message: %q", want.msg, want.field, seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func fieldText(f zapcore.Field) string {
	switch {
	case f.Interface != nil:
		if err, ok := f.Interface.(error); ok {
			return err.Error()
		}
		return fmt.Sprint(f.Interface)
	case f.String != "":
		return f.String
	}
	return strconv.FormatInt(f.Integer, 10)
}

// expectServing checks that serve still runs and serves good clients: an
// IMAP greeting with ECH on 993 and on 443 (ALPN imap), and an HTTP 200
// with ECH on 443.
func (env *catalogueEnv) expectServing(t *testing.T) {
	t.Helper()
	if len(env.done) != 0 {
		t.Fatal("serve has returned")
	}
	env.expectGreeting(t, "imaps", "imap")
	env.expectGreeting(t, "https", "imap")
	env.expectHTTP200(t)
}

// expectGreeting is a good IMAP client with ECH on listener.
func (env *catalogueEnv) expectGreeting(t *testing.T, listener string, alpn ...string) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", env.addr(listener), env.tlsConfig(alpn...))
	if err != nil {
		t.Fatalf("good IMAP client on %s: %v", listener, err)
	}
	defer c.Close()
	if !c.ConnectionState().ECHAccepted {
		t.Fatalf("good IMAP client on %s: ECH not accepted", listener)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); !strings.HasPrefix(line, "* OK") {
		t.Fatalf("good IMAP client on %s: greeting %q, %v", listener, line, err)
	}
}

// httpClient is a good HTTPS client with ECH; redirects are not followed.
func (env *catalogueEnv) httpClient(alpn ...string) *http.Client {
	tr := &http.Transport{TLSClientConfig: env.tlsConfig(alpn...), ForceAttemptHTTP2: true}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       time.Minute, // a safety net, not an assertion
	}
}

func (env *catalogueEnv) url(path string) string { return "https://" + env.addr("https") + path }

func (env *catalogueEnv) expectHTTP200(t *testing.T) {
	t.Helper()
	client := env.httpClient()
	defer client.CloseIdleConnections()
	req, _ := http.NewRequest("GET", env.url("/"), nil)
	req.Host = reloadDomain
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("good HTTP client: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !resp.TLS.ECHAccepted || !strings.Contains(string(body), "catalogue relay") {
		t.Fatalf("good HTTP client: %s, ECH %v, %v, %.100q", resp.Status, resp.TLS.ECHAccepted, err, body)
	}
}

// badInput is one kind of bad input.
type badInput struct {
	name string
	// send does it and checks what the peer got.
	send func(t *testing.T, env *catalogueEnv)
	// counts is the /metrics series one such input adds one to.
	counts string
	// log is the line it is logged with (a zero logLine: none expected).
	log logLine
}

// run runs each case in turn on env: the counter must have grown by one
// and the log line be there once send returns, and good clients be served
// after it.
func (env *catalogueEnv) run(t *testing.T, cases []badInput) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := env.metric(t, c.counts)
			since := len(env.logs.All())
			c.send(t, env)
			eventually(t, c.counts+" to count it", func() bool { return env.metric(t, c.counts) == before+1 })
			if c.log.msg != "" {
				env.expectLogged(t, since, c.log)
			}
			env.expectServing(t)
		})
	}
}

// dialRaw opens a TCP connection to listener, closed at the end of the test;
// every read and write on it has a deadline, a safety net.
func (env *catalogueEnv) dialRaw(t *testing.T, listener string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", env.addr(listener), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(time.Minute))
	t.Cleanup(func() { c.Close() })
	return c
}

// send writes b on a new connection to listener.
func (env *catalogueEnv) send(t *testing.T, listener string, b []byte) net.Conn {
	t.Helper()
	c := env.dialRaw(t, listener)
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
	return c
}

// readToClose reads until the server closes (a FIN or a reset) and
// returns what came before. A read deadline is a failure: the server did
// not close.
func readToClose(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var got []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		switch {
		case err == nil:
		case isClose(err):
			return got
		default:
			t.Fatalf("the server did not close the connection: %v (got %q)", err, got)
		}
	}
}

// readToCloseReader is readToClose for a connection read through r.
func readToCloseReader(t *testing.T, c net.Conn, r io.Reader) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(r)
	if err != nil && !isClose(err) {
		t.Fatalf("the server did not close the connection: %v (got %q)", err, got)
	}
	return got
}

// isClose reports whether a read error is the peer's close: a FIN or a
// reset (the edge refuses with a reset).
func isClose(err error) bool { return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) }

// expectClosedSilently: the server closed without sending anything.
func expectClosedSilently(t *testing.T, c net.Conn) {
	t.Helper()
	if got := readToClose(t, c); len(got) != 0 {
		t.Fatalf("the server sent %q before closing, want nothing", got)
	}
}
