package service

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/xml"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"chatmail-edge/web"

	"golang.org/x/net/websocket"
)

// webRequest is one HTTPS request to the demo over ECH, as a client that
// asked for host (SNI and Host header) would send it. Redirects are not
// followed and the body is not decompressed, so tests see what was sent.
func (d *Demo) webRequest(t *testing.T, method, host, path string, header http.Header, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	cfg := d.tlsConfig(t)
	if strings.HasSuffix(host, d.cfg.Domain) {
		cfg.ServerName = host
	}
	client := &http.Client{
		Transport:     &http.Transport{TLSClientConfig: cfg, DisableCompression: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       2 * time.Minute, // a safety net, not an assertion
	}
	defer client.CloseIdleConnections()
	return sendRequest(t, client, method, d.url(path), host, header, body)
}

// sendRequest sends method to url with Host host, wants ECH accepted, and
// returns the response with its body.
func sendRequest(t *testing.T, client *http.Client, method, url, host string, header http.Header, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	maps.Copy(req.Header, header)
	path := req.URL.RequestURI()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s https://%s%s: %v", method, host, path, err)
	}
	defer resp.Body.Close()
	if !resp.TLS.ECHAccepted {
		t.Fatalf("%s https://%s%s: ECH not accepted", method, host, path)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s https://%s%s: read body: %v", method, host, path, err)
	}
	return resp, b
}

func (d *Demo) get(t *testing.T, host, path string) (*http.Response, []byte) {
	t.Helper()
	return d.webRequest(t, "GET", host, path, nil, nil)
}

func wantResponse(t *testing.T, what string, resp *http.Response, body []byte, status int, contentType string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s: status %d, want %d; body %.200q", what, resp.StatusCode, status, body)
	}
	if contentType != "" && resp.Header.Get("Content-Type") != contentType {
		t.Fatalf("%s: Content-Type %q, want %q", what, resp.Header.Get("Content-Type"), contentType)
	}
	if s := resp.Header.Get("Server"); s != "" {
		t.Fatalf("%s: Server header %q gives the software away", what, s)
	}
}

// testSite writes a small website folder.
func testSite(t *testing.T) string {
	dir := t.TempDir()
	files := map[string]string{
		"index.html":              "<!DOCTYPE html><title>relay</title><h1>welcome to the relay</h1>",
		"info/index.html":         "<h1>info page</h1>",
		"style.css":               "body { color: black; }\n" + strings.Repeat("p { margin: 0 }\n", 100),
		"robots.txt":              "User-agent: *\nDisallow: /\n",
		"logo.svg":                "<svg xmlns='http://www.w3.org/2000/svg'/>",
		"qr.png":                  "\x89PNG\r\n\x1a\nnot really",
		".well-known/mta-sts.txt": "version: STSv1\nmode: testing\nmx: stale.example\nmax_age: 1\n",
	}
	for name, content := range files {
		path := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// testCGIScript stands in for chatmail's newemail.py: it prints a header,
// a blank line and the JSON, and echoes what RFC 3875 gave it.
func testCGIScript(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "newemail.py")
	script := `#!/bin/sh
printf 'Content-Type: application/json\r\n\r\n'
printf '{"email":"cgi%s@chatmail.localhost","password":"from-the-script","method":"%s","uri":"%s"}\n' "$$" "$REQUEST_METHOD" "$REQUEST_URI"
`
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// filtermailStub is an HTTP server standing in for filtermail's /mxdeliv:
// it hashes what it receives.
type filtermailStub struct {
	mu     sync.Mutex
	bodies []string // path + " " + sha256 + " " + length
}

func (f *filtermailStub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, r.URL.Path+" "+base64.StdEncoding.EncodeToString(h.Sum(nil))+" "+strconv.FormatInt(n, 10))
	f.mu.Unlock()
	io.WriteString(w, "delivered "+strconv.FormatInt(n, 10)+" bytes\n")
}

// irohStub stands in for iroh-relay: /relay is a WebSocket echo (RFC 6455),
// /ping and /generate_204 answer as iroh-relay does.
func irohStub() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/relay", websocket.Server{Handler: func(ws *websocket.Conn) { io.Copy(ws, ws) }})
	mux.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pong from "+r.Host) })
	mux.HandleFunc("/generate_204", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	return mux
}

func startUpstream(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestWebPathsOverECH requests every path chatmail's nginx serves, through
// the edge with ECH, and checks status, headers and body.
func TestWebPathsOverECH(t *testing.T) {
	state := t.TempDir()
	filtermail := &filtermailStub{}
	d := startTestDemoWeb(t, state, demoWeb{
		SiteDir:       testSite(t),
		NewAccountCGI: testCGIScript(t),
		MXDeliv:       startUpstream(t, filtermail),
		IrohRelay:     startUpstream(t, irohStub()),
	})
	const domain = "chatmail.localhost"
	origin := "https://" + domain + ":" + strconv.Itoa(d.port("https"))

	t.Run("site", func(t *testing.T) {
		resp, body := d.get(t, domain, "/")
		wantResponse(t, "GET /", resp, body, 200, "text/html")
		if !strings.Contains(string(body), "welcome to the relay") {
			t.Fatalf("GET /: %q", body)
		}
		resp, body = d.get(t, domain, "/info")
		wantResponse(t, "GET /info", resp, body, 301, "")
		if resp.Header.Get("Location") != "/info/" {
			t.Fatalf("GET /info: Location %q", resp.Header.Get("Location"))
		}
		resp, body = d.get(t, "unknown.example", "/info/")
		wantResponse(t, "GET /info/ on an unknown name", resp, body, 200, "text/html")
		if string(body) != "<h1>info page</h1>" {
			t.Fatalf("GET /info/: %q", body)
		}
		for path, typ := range map[string]string{"/robots.txt": "text/plain", "/logo.svg": "image/svg+xml", "/qr.png": "image/png", "/style.css": "text/css"} {
			resp, body := d.get(t, domain, path)
			wantResponse(t, "GET "+path, resp, body, 200, typ)
		}
		for _, path := range []string{"/missing", "/%2e%2e/%2e%2e/etc/passwd", "/info/missing.html"} {
			resp, body := d.get(t, domain, path)
			wantResponse(t, "GET "+path, resp, body, 404, "")
		}
		// A path with dot segments is sent to its clean form, inside the site.
		resp, _ = d.get(t, domain, "/../../etc/passwd")
		if loc := resp.Header.Get("Location"); resp.StatusCode/100 != 3 || loc != "/etc/passwd" {
			t.Fatalf("GET /../../etc/passwd: %s, Location %q", resp.Status, loc)
		}
		resp, body = d.webRequest(t, "DELETE", domain, "/", nil, nil)
		wantResponse(t, "DELETE /", resp, body, 405, "")
	})

	t.Run("gzip", func(t *testing.T) {
		resp, body := d.webRequest(t, "GET", domain, "/style.css", http.Header{"Accept-Encoding": {"gzip"}}, nil)
		wantResponse(t, "GET /style.css gzip", resp, body, 200, "text/css")
		if resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("no gzip: %v", resp.Header)
		}
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := io.ReadAll(zr)
		if err != nil || !strings.HasPrefix(string(plain), "body { color: black; }") || len(body) >= len(plain) {
			t.Fatalf("gzip body: %v, %d compressed, %d plain", err, len(body), len(plain))
		}
	})

	t.Run("www redirect", func(t *testing.T) {
		resp, body := d.get(t, "www."+domain, "/some/page?x=1")
		wantResponse(t, "www", resp, body, 301, "")
		if got := resp.Header.Get("Location"); got != origin+"/some/page?x=1" {
			t.Fatalf("www Location %q", got)
		}
	})

	t.Run("mta-sts", func(t *testing.T) {
		resp, body := d.get(t, "mta-sts."+domain, "/.well-known/mta-sts.txt")
		wantResponse(t, "mta-sts.txt", resp, body, 200, "text/plain")
		// Byte for byte chatmail's mta-sts.txt.j2, not the stale file in the site folder.
		if want := "version: STSv1\nmode: enforce\nmx: chatmail.localhost\nmax_age: 2419200\n"; string(body) != want {
			t.Fatalf("policy %q, want %q", body, want)
		}
	})

	t.Run("autoconfig", func(t *testing.T) {
		show := echShow(t, state)
		for _, c := range []struct{ host, path string }{
			{domain, "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a%40chatmail.localhost"},
			{"autoconfig." + domain, "/mail/config-v1.1.xml"},
		} {
			resp, body := d.get(t, c.host, c.path)
			wantResponse(t, c.host+c.path, resp, body, 200, "text/xml")
			var doc autoconfigDoc
			if err := xml.Unmarshal(body, &doc); err != nil {
				t.Fatalf("autoconfig does not parse: %v\n%s", err, body)
			}
			want := []string{
				"imap " + domain + ":" + strconv.Itoa(d.port("imaps")) + " SSL",
				"imap " + domain + ":" + strconv.Itoa(d.port("https")) + " SSL",
			}
			if got := doc.servers(doc.Provider.Incoming); strings.Join(got, "|") != strings.Join(want, "|") {
				t.Fatalf("incoming %q, want %q", got, want)
			}
			want = []string{
				"smtp " + domain + ":" + strconv.Itoa(d.port("smtps")) + " SSL",
				"smtp " + domain + ":" + strconv.Itoa(d.port("https")) + " SSL",
			}
			if got := doc.servers(doc.Provider.Outgoing); strings.Join(got, "|") != strings.Join(want, "|") {
				t.Fatalf("outgoing %q, want %q", got, want)
			}
			wantPorts := strconv.Itoa(d.port("https")) + " " + strconv.Itoa(d.port("imaps")) + " " + strconv.Itoa(d.port("smtps"))
			if doc.Provider.ECH.XMLName.Space != web.ECHNamespace || doc.Provider.ECH.Value != show ||
				doc.Provider.ECH.Encoding != "base64" || doc.Provider.ECH.Ports != wantPorts {
				t.Fatalf("ECH element %+v, want namespace %s, ports %s and %q", doc.Provider.ECH, web.ECHNamespace, wantPorts, show)
			}
		}
	})

	t.Run("new account", func(t *testing.T) {
		for _, path := range []string{"/new", "/cgi-bin/newemail.py"} {
			resp, body := d.get(t, domain, path)
			wantResponse(t, "GET "+path, resp, body, 301, "")
			if got := resp.Header.Get("Location"); got != "dcaccount:"+origin+"/new" {
				t.Fatalf("GET %s: Location %q", path, got)
			}
			resp, body = d.webRequest(t, "POST", domain, path, nil, nil)
			wantResponse(t, "POST "+path, resp, body, 200, "application/json")
			var acct struct{ Email, Password, Method, URI string }
			if err := json.Unmarshal(body, &acct); err != nil || !strings.HasSuffix(acct.Email, "@chatmail.localhost") ||
				acct.Password != "from-the-script" || acct.Method != "POST" || acct.URI != path {
				t.Fatalf("POST %s: %v %s", path, err, body)
			}
		}
	})

	t.Run("mxdeliv 20 MB", func(t *testing.T) {
		payload := bytes.Repeat([]byte("0123456789abcdef"), 20<<20/16)
		sum := sha256.Sum256(payload)
		resp, body := d.webRequest(t, "POST", domain, "/mxdeliv", http.Header{"Content-Type": {"message/rfc822"}}, bytes.NewReader(payload))
		wantResponse(t, "POST /mxdeliv", resp, body, 200, "")
		if string(body) != "delivered 20971520 bytes\n" {
			t.Fatalf("POST /mxdeliv: %q", body)
		}
		filtermail.mu.Lock()
		defer filtermail.mu.Unlock()
		want := "/mxdeliv " + base64.StdEncoding.EncodeToString(sum[:]) + " 20971520"
		if !slices.Contains(filtermail.bodies, want) { // the others are health probes, without a body
			t.Fatalf("filtermail got %q, want %q", filtermail.bodies, want)
		}
	})

	t.Run("iroh relay", func(t *testing.T) {
		resp, body := d.get(t, domain, "/ping")
		wantResponse(t, "/ping", resp, body, 200, "")
		if !strings.HasPrefix(string(body), "pong from 127.0.0.1:") {
			t.Fatalf("/ping: %q (the upstream must see its own Host)", body)
		}
		resp, body = d.get(t, domain, "/generate_204")
		wantResponse(t, "/generate_204", resp, body, 204, "")

		// A real WebSocket (RFC 6455) through the edge, ECH included.
		conn := d.dialECH(t, "https", "http/1.1")
		defer conn.Close()
		cfg, err := websocket.NewConfig("wss://"+domain+"/relay", origin)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(time.Minute)) // a safety net
		ws, err := websocket.NewClient(cfg, conn)
		if err != nil {
			t.Fatalf("WebSocket handshake through /relay: %v", err)
		}
		for _, msg := range [][]byte{[]byte("hello relay"), bytes.Repeat([]byte("0123456789"), 10000)} {
			if _, err := ws.Write(msg); err != nil {
				t.Fatal(err)
			}
			// The echo may come back in several frames.
			echo := make([]byte, len(msg))
			if _, err := io.ReadFull(ws, echo); err != nil || !bytes.Equal(echo, msg) {
				t.Fatalf("echo of %d bytes: %v", len(msg), err)
			}
		}
	})

	t.Run("no metrics in public", func(t *testing.T) {
		resp, body := d.get(t, domain, "/metrics")
		wantResponse(t, "public /metrics", resp, body, 404, "")
		if bytes.Contains(body, []byte("chatmail_edge_")) {
			t.Fatal("metrics on the public listener")
		}
	})
}

type autoconfigDoc struct {
	Provider struct {
		ID       string             `xml:"id,attr"`
		Incoming []autoconfigServer `xml:"incomingServer"`
		Outgoing []autoconfigServer `xml:"outgoingServer"`
		ECH      struct {
			XMLName  xml.Name
			Encoding string `xml:"encoding,attr"`
			Ports    string `xml:"ports,attr"`
			Value    string `xml:",chardata"`
		} `xml:"urn:chatmail-edge:autoconfig:ech echConfigList"`
	} `xml:"emailProvider"`
}

type autoconfigServer struct {
	Type     string `xml:"type,attr"`
	Hostname string `xml:"hostname"`
	Port     int    `xml:"port"`
	Socket   string `xml:"socketType"`
	Username string `xml:"username"`
}

func (autoconfigDoc) servers(list []autoconfigServer) []string {
	var out []string
	for _, s := range list {
		out = append(out, s.Type+" "+net.JoinHostPort(s.Hostname, strconv.Itoa(s.Port))+" "+s.Socket)
	}
	return out
}

// TestDeadUpstreamGives502: an upstream that refuses connections and one
// that accepts but never answers each get the client a short 502, and the
// status page shows them down.
func TestDeadUpstreamGives502(t *testing.T) {
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedAddr := refused.Addr().String()
	refused.Close()
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	go func() { // accept and hold, never answer
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	d := startTestDemoWeb(t, t.TempDir(), demoWeb{
		MXDeliv: "http://" + refusedAddr, IrohRelay: "http://" + silent.Addr().String(),
		UpstreamTimeout: time.Second,
	})
	for _, path := range []string{"/mxdeliv", "/relay", "/ping"} {
		resp, body := d.webRequest(t, "POST", "chatmail.localhost", path, nil, strings.NewReader("x"))
		wantResponse(t, "dead upstream "+path, resp, body, 502, "text/plain; charset=utf-8")
		if len(body) > 100 || !strings.Contains(string(body), "not available") {
			t.Fatalf("%s: body %q", path, body)
		}
	}
	d.currentWeb().CheckHealth(t.Context())
	_, page := d.get(t, "chatmail.localhost", "/status")
	for _, name := range []string{"filtermail", "iroh-relay"} {
		if !regexpService(name, "down").Match(page) {
			t.Errorf("status page does not show %s down", name)
		}
	}
	if !regexpService("IMAP", "up").Match(page) || !regexpService("SMTP", "up").Match(page) {
		t.Errorf("status page does not show the demo's IMAP and SMTP up:\n%s", page)
	}
}
