package service

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// dialHTTPS is a good client's connection to 443 with ECH and ALPN alpn.
func (env *catalogueEnv) dialHTTPS(t *testing.T, alpn string) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", env.addr("https"), env.tlsConfig(alpn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if cs := c.ConnectionState(); !cs.ECHAccepted || cs.NegotiatedProtocol != alpn {
		t.Fatalf("ECH %v, ALPN %q; want ECH and %s", cs.ECHAccepted, cs.NegotiatedProtocol, alpn)
	}
	c.SetDeadline(time.Now().Add(time.Minute)) // a safety net
	return c
}

// exchange writes a raw HTTP/1.1 request and reads the response.
func exchange(t *testing.T, c net.Conn, request string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatalf("write the request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read the response: %v", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp, string(body)
}

// answered sends request on a new HTTP/1.1 connection and wants status,
// and a body with want in it.
func answered(request string, status int, want string) func(*testing.T, *catalogueEnv) {
	return func(t *testing.T, env *catalogueEnv) {
		resp, body := exchange(t, env.dialHTTPS(t, "http/1.1"), request)
		if resp.StatusCode != status || !strings.Contains(body, want) {
			t.Fatalf("got %s %.200q, want %d with %q", resp.Status, body, status, want)
		}
		if strings.Contains(body, "root:x:") {
			t.Fatal("a file from outside the website was served")
		}
	}
}

// TestCatalogueHTTP1: requests net/http or the site must refuse, and
// requests that try to get out of the website or through the edge.
// net/http answers most of them before any handler runs: no counter of
// the edge sees them but the routed HTTP connection, and nothing is logged.
func TestCatalogueHTTP1(t *testing.T) {
	env := startCatalogue(t, "")
	host := "Host: " + reloadDomain + "\r\n"
	get := func(path string, more ...string) string {
		return "GET " + path + " HTTP/1.1\r\n" + host + strings.Join(more, "") + "\r\n"
	}
	httpConn := routed("https", "http")
	env.run(t, []badInput{
		{name: "header block over 64 KiB", send: answered(get("/", "X-Big: "+strings.Repeat("a", 70<<10)+"\r\n"), 431, ""), counts: httpConn},
		{name: "request line over 64 KiB", send: answered(get("/"+strings.Repeat("a", 70<<10)), 431, ""), counts: httpConn},
		{name: "bad request line", send: answered("GARBAGE\r\n\r\n", 400, "400 Bad Request"), counts: httpConn},
		{name: "HTTP/1.1 without Host", send: answered("GET / HTTP/1.1\r\n\r\n", 400, "missing required Host header"), counts: httpConn},
		{name: "two Host headers", send: answered(get("/", "Host: other.example\r\n"), 400, "400 Bad Request"), counts: httpConn},
		{name: "malformed Host", send: answered("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "malformed Host header"), counts: httpConn},
		{name: "space in a header name", send: answered(get("/", "Bad Name: x\r\n"), 400, "invalid header name"), counts: httpConn},
		{name: "NUL in a header value", send: answered(get("/", "X-Nul: a\x00b\r\n"), 400, "400 Bad Request"), counts: httpConn},
		{name: "Content-Length not a number", send: answered("POST / HTTP/1.1\r\n"+host+"Content-Length: 1e9\r\n\r\n", 400, "400 Bad Request"), counts: httpConn},
		{name: "unsupported Transfer-Encoding", send: answered("POST / HTTP/1.1\r\n"+host+"Transfer-Encoding: x-custom\r\n\r\n", 501, "Unsupported transfer encoding"), counts: httpConn},
		{name: "unknown Expect", send: answered(get("/", "Expect: 200-ok\r\n"), 417, ""), counts: httpConn},
		{name: "Expect 100-continue, then no body", send: expectContinueNoBody, counts: httpConn},
		{name: "HTTP/2 preface on an HTTP/1.1 connection", send: answered("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, ""), counts: httpConn},
		{name: "path traversal with dot segments", send: redirectedInside(get("/../../outside/secret"), "/outside/secret"), counts: httpConn},
		{name: "path traversal with percent-encoded dots", send: answered(get("/%2e%2e/outside/secret"), 404, ""), counts: httpConn},
		{name: "symbolic link out of the website", send: answered(get("/escape/secret"), 404, ""), counts: httpConn},
		{name: "absolute-form request for another host", send: answered("GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", 200, "catalogue relay"), counts: httpConn},
		{name: "CONNECT to another host", send: answered("CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 404, ""), counts: httpConn},
	})
}

// redirectedInside wants a redirect to location, a path of the website.
func redirectedInside(request, location string) func(*testing.T, *catalogueEnv) {
	return func(t *testing.T, env *catalogueEnv) {
		resp, _ := exchange(t, env.dialHTTPS(t, "http/1.1"), request)
		if resp.StatusCode/100 != 3 || resp.Header.Get("Location") != location {
			t.Fatalf("got %s to %q, want a redirect to %s", resp.Status, resp.Header.Get("Location"), location)
		}
	}
}

// expectContinueNoBody announces a 10 GB body with Expect: 100-continue and
// never sends it: the site does not want it, so the edge answers at once,
// sends no 100 Continue, and closes instead of waiting for the body.
func expectContinueNoBody(t *testing.T, env *catalogueEnv) {
	c := env.dialHTTPS(t, "http/1.1")
	io.WriteString(c, "PUT /upload HTTP/1.1\r\nHost: "+reloadDomain+"\r\nExpect: 100-continue\r\nContent-Length: 10000000000\r\n\r\n")
	got := string(readToClose(t, c))
	if strings.Contains(got, "100 Continue") || !strings.HasPrefix(got, "HTTP/1.1 405 ") {
		t.Fatalf("got %.300q, want a 405 and no 100 Continue", got)
	}
}

// h2Conn is an HTTP/2 connection to 443 with ECH, past the preface.
type h2Conn struct {
	*tls.Conn
	fr  *http2.Framer
	buf *bufio.Writer // frames are written here; flush sends them
}

func (env *catalogueEnv) dialH2(t *testing.T, settings ...http2.Setting) *h2Conn {
	t.Helper()
	c := env.dialHTTPS(t, "h2")
	buf := bufio.NewWriterSize(c, 64<<10)
	h := &h2Conn{Conn: c, buf: buf, fr: http2.NewFramer(buf, c)}
	h.fr.AllowIllegalWrites = true
	io.WriteString(buf, http2.ClientPreface)
	h.fr.WriteSettings(settings...)
	h.flush(t)
	return h
}

func (h *h2Conn) flush(t *testing.T) {
	t.Helper()
	if err := h.buf.Flush(); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// headerBlock encodes a GET of path with hpack, plus more fields.
func headerBlock(path string, more ...hpack.HeaderField) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: reloadDomain}, {Name: ":path", Value: path},
	}, more...) {
		enc.WriteField(f)
	}
	return b.Bytes()
}

// expectGoAway reads frames until a GOAWAY, which must carry code (the
// server closes a second later: Go's goAwayTimeout).
func (h *h2Conn) expectGoAway(t *testing.T, code http2.ErrCode) {
	t.Helper()
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			t.Fatalf("closed without GOAWAY %v: %v", code, err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != code {
				t.Fatalf("GOAWAY %v (%q), want %v", ga.ErrCode, ga.DebugData(), code)
			}
			return
		}
	}
}

// expectStatus reads frames until the response headers of stream, whose
// :status must be status.
func (h *h2Conn) expectStatus(t *testing.T, stream uint32, status string) {
	t.Helper()
	dec := hpack.NewDecoder(4096, nil)
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no response on stream %d: %v", stream, err)
		}
		if hf, ok := f.(*http2.HeadersFrame); ok && hf.StreamID == stream {
			fields, err := dec.DecodeFull(hf.HeaderBlockFragment())
			if err != nil || len(fields) == 0 || fields[0].Name != ":status" || fields[0].Value != status {
				t.Fatalf("response %v, %v; want :status %s", fields, err, status)
			}
			return
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			t.Fatalf("GOAWAY %v (%q), want a response", ga.ErrCode, ga.DebugData())
		}
	}
}

// TestCatalogueH2: HTTP/2 that breaks the protocol's rules or floods the
// server (RFC 9113; the attacks of CVE-2023-44487 and CVE-2024-27316).
func TestCatalogueH2(t *testing.T) {
	env := startCatalogue(t, "")
	httpConn := routed("https", "http")
	goAway := func(code http2.ErrCode, frames func(h *h2Conn)) func(*testing.T, *catalogueEnv) {
		return func(t *testing.T, env *catalogueEnv) {
			h := env.dialH2(t)
			frames(h)
			h.flush(t)
			h.expectGoAway(t, code)
		}
	}
	env.run(t, []badInput{
		{name: "bad preface", send: func(t *testing.T, env *catalogueEnv) {
			c := env.dialHTTPS(t, "h2")
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+reloadDomain+"\r\n\r\n")
			fr := http2.NewFramer(io.Discard, c)
			for { // the server's SETTINGS, maybe a GOAWAY, then the close
				if _, err := fr.ReadFrame(); err != nil {
					if !isClose(err) {
						t.Fatalf("after a bad preface: %v, want the close", err)
					}
					return
				}
			}
		}, counts: httpConn},
		{name: "DATA on stream 0", send: goAway(http2.ErrCodeProtocol, func(h *h2Conn) { h.fr.WriteData(0, false, []byte("x")) }), counts: httpConn},
		{name: "HEADERS on an even stream", send: goAway(http2.ErrCodeProtocol, func(h *h2Conn) {
			h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2, BlockFragment: headerBlock("/"), EndStream: true, EndHeaders: true})
		}), counts: httpConn},
		{name: "SETTINGS with a window over 2^31-1", send: goAway(http2.ErrCodeFlowControl, func(h *h2Conn) {
			h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
		}), counts: httpConn},
		{name: "WINDOW_UPDATE past 2^31-1", send: goAway(http2.ErrCodeFlowControl, func(h *h2Conn) {
			h.fr.WriteWindowUpdate(0, 1<<31-1)
			h.fr.WriteWindowUpdate(0, 1<<31-1)
		}), counts: httpConn},
		{name: "frame over the maximum frame size", send: goAway(http2.ErrCodeFrameSize, func(h *h2Conn) {
			h.fr.WriteRawFrame(http2.FrameData, 0, 1, make([]byte, 2<<20)) // Go advertises 1 MiB
		}), counts: httpConn},
		{name: "CONTINUATION flood", send: goAway(http2.ErrCodeProtocol, func(h *h2Conn) {
			h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: headerBlock("/"), EndStream: true})
			field := headerBlock("/", hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("a", 8000)})
			for range 100 { // 800 KB of header fields, never ended
				h.fr.WriteContinuation(1, false, field)
			}
		}), counts: httpConn},
		{name: "header list too large (an HPACK bomb)", send: func(t *testing.T, env *catalogueEnv) {
			h := env.dialH2(t)
			// One field in the dynamic table, then a one-byte reference to
			// it 250 times: 300 bytes on the wire, 1 MB of header list.
			var b bytes.Buffer
			enc := hpack.NewEncoder(&b)
			for _, f := range []hpack.HeaderField{{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
				{Name: ":authority", Value: reloadDomain}, {Name: ":path", Value: "/"}} {
				enc.WriteField(f)
			}
			big := hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 4000)}
			for range 250 {
				enc.WriteField(big) // the encoder indexes it once, then refers to it
			}
			if b.Len() > 16000 {
				t.Fatalf("the header block is %d bytes: the encoder did not index the field", b.Len())
			}
			h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true})
			h.flush(t)
			h.expectStatus(t, 1, "431")
		}, counts: httpConn},
		{name: "rapid reset", send: rapidReset, counts: httpConn},
	})
}

// rapidReset opens streams and cancels each at once, 5000 times, faster
// than handlers finish (CVE-2023-44487). The server either stops it with
// GOAWAY ENHANCE_YOUR_CALM, or keeps up: then it still answers a PING.
func rapidReset(t *testing.T, env *catalogueEnv) {
	h := env.dialH2(t)
	block := headerBlock("/")
	for i := range 5000 {
		id := uint32(2*i + 1)
		h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true})
		h.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	ping := [8]byte{'c', 'a', 't', 'a', 'l', 'o', 'g'}
	h.fr.WritePing(false, ping)
	if err := h.buf.Flush(); err != nil && !isClose(err) {
		t.Fatalf("write: %v", err)
	}
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			t.Fatalf("closed without GOAWAY or PING answer: %v", err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			if f.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", f.ErrCode)
			}
			return
		case *http2.PingFrame:
			if f.IsAck() && f.Data == ping {
				return
			}
		}
	}
}

// TestCatalogueSlowHTTPHeaders: a client that sends its request headers a
// byte every 100 ms is cut off at the web server's header timeout ([web]
// header_timeout, 2 s here), without an answer; others are served
// meanwhile. It runs beside the other tests, which do not wait for it.
func TestCatalogueSlowHTTPHeaders(t *testing.T) {
	t.Parallel()
	env := startCatalogue(t, "")
	env.run(t, []badInput{{name: "request headers a byte at a time", send: func(t *testing.T, env *catalogueEnv) {
		c := env.dialHTTPS(t, "http/1.1")
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+reloadDomain+"\r\n")
		type result struct {
			got []byte
			err error
		}
		done := make(chan result, 1)
		go func() {
			got, err := dribbleUntilClosed(c, []byte("X-Slow: "+strings.Repeat("s", 1000)), 100*time.Millisecond)
			done <- result{got, err}
		}()
		// IMAP clients meanwhile, on 993 and 443 (an HTTP one would count
		// as a second HTTP connection).
		env.expectGreeting(t, "imaps")
		env.expectGreeting(t, "https", "imap")
		if r := <-done; r.err != nil || len(r.got) != 0 {
			t.Fatalf("the server sent %q, %v", r.got, r.err)
		}
	}, counts: routed("https", "http")}})
}

// TestCatalogueHTTPClientThatNeverReads: a client asks for a large file and
// never reads it. The edge serves others meanwhile, and must give the
// connection up once its writes stop moving (RFC 9112 §9.8 leaves it to
// the server); before the HTTP write timeout it holds it for good.
func TestCatalogueHTTPClientThatNeverReads(t *testing.T) {
	t.Parallel()
	env := startCatalogue(t, "")
	if err := os.WriteFile(filepath.Join(env.site, "big.bin"), bytes.Repeat([]byte("0123456789abcdef"), 4<<20), 0o644); err != nil { // 64 MiB
		t.Fatal(err)
	}
	c := env.dialHTTPS(t, "http/1.1")
	c.SetDeadline(time.Time{})
	io.WriteString(c, "GET /big.bin HTTP/1.1\r\nHost: "+reloadDomain+"\r\n\r\n")
	env.expectServing(t)
	active := `chatmail_edge_connections_active{listener="https"}`
	// The good clients' connections close on the server's side soon after
	// they are done; the one that does not read stays.
	eventually(t, "only the connection that does not read on 443", func() bool { return env.metric(t, active) == 1 })
	eventuallyWithin(t, 30*time.Second, "the server to give up the connection", func() bool { return env.metric(t, active) == 0 })
}

// TestCatalogueContentLengthWithTransferEncoding: a request with both
// headers is a smuggling attempt; RFC 9112 §6.1: the server must close the
// connection after answering, so the request hidden in its body is never
// served.
func TestCatalogueContentLengthWithTransferEncoding(t *testing.T) {
	t.Parallel()
	env := startCatalogue(t, "")
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: " + reloadDomain + "\r\n\r\n"
	c := env.dialHTTPS(t, "http/1.1")
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: "+reloadDomain+"\r\nContent-Length: "+strconv.Itoa(5+len(smuggled))+
		"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"+smuggled)
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	env.expectServing(t)
	if rest := readToCloseReader(t, c, r); len(rest) != 0 {
		t.Fatalf("after the first answer: %q, want the close", rest)
	}
}

// TestCatalogueH2ZeroWindow: an HTTP/2 client that announces a window of
// 0 and never opens it gets its response headers and no byte of the body.
// Others are served; the server must give the stream up once its writes
// stop moving, which only the HTTP write timeout does.
func TestCatalogueH2ZeroWindow(t *testing.T) {
	t.Parallel()
	env := startCatalogue(t, "")
	h := env.dialH2(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: headerBlock("/"), EndStream: true, EndHeaders: true})
	h.flush(t)
	h.expectStatus(t, 1, "200")
	env.expectServing(t)
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			return // closed
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			return
		case *http2.DataFrame:
			if len(f.Data()) > 0 {
				t.Fatalf("DATA of %d bytes past a window of 0", len(f.Data()))
			}
		}
	}
}
