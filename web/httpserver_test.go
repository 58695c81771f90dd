package web

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// failAfter bounds every wait of these tests: reaching it is a failure,
// never a measurement.
const failAfter = 30 * time.Second

// smallSendBuffers gives each accepted connection a small kernel send
// buffer, so that what a client leaves unread backs up into the server's
// writes after a few hundred KB instead of several MB.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(64 << 10)
	}
	return c, err
}

// startTLSServer serves h with newHTTPServer over real TLS on 127.0.0.1,
// HTTP/2 or HTTP/1.1 as the edge's handoff does. connState (may be nil) sees
// the connections' states.
func startTLSServer(t *testing.T, h http.Handler, limits writeLimits, http2 bool, connState func(net.Conn, http.ConnState)) *httptest.Server {
	t.Helper()
	ts := httptest.NewUnstartedServer(nil)
	ts.Config = newHTTPServer(h, zaptest.NewLogger(t), connState, limits, 0)
	ts.Listener = smallSendBuffers{ts.Listener}
	ts.EnableHTTP2 = http2
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts
}

// slowNetworkClient is a client of ts with small receive buffers (TCP, and
// the HTTP/2 flow-control windows), so that it takes only what it reads.
func slowNetworkClient(ts *httptest.Server) *http.Client {
	tr := ts.Client().Transport.(*http.Transport).Clone()
	dialer := &net.Dialer{}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(64 << 10)
		}
		return c, err
	}
	tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: 64 << 10, MaxReceiveBufferPerConnection: 64 << 10}
	return &http.Client{Transport: tr}
}

// siteWithFile is a web server whose site folder holds name with content
// (size bytes of zeros, written sparse, when content is nil).
func siteWithFile(t *testing.T, name string, content []byte, size int64) *Server {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	if content != nil {
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
	} else if err := os.WriteFile(path, nil, 0o644); err != nil || os.Truncate(path, size) != nil {
		t.Fatalf("sparse file: %v", err)
	}
	return newTestServerWith(t, Config{Domain: "chat.example", SiteDir: dir}, nil)
}

// notifyReturn signals on the returned channel each time h has returned.
func notifyReturn(h http.Handler) (http.Handler, <-chan struct{}) {
	returned := make(chan struct{}, 16)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		returned <- struct{}{}
	}), returned
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(failAfter):
		t.Fatalf("%s: not within %v", what, failAfter)
	}
}

func protocols(t *testing.T, test func(t *testing.T, http2 bool)) {
	for _, http2 := range []bool{false, true} {
		name := "HTTP/1.1"
		if http2 {
			name = "HTTP/2"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t, http2)
		})
	}
}

// TestResponseStallCutsClientThatStopsReading: a client that asks for a
// 64 MiB file and then reads nothing holds neither the response nor (on
// HTTP/1.1) the connection beyond the stall bound. Before the write limits
// it held both for as long as it liked.
func TestResponseStallCutsClientThatStopsReading(t *testing.T) {
	protocols(t, func(t *testing.T, http2 bool) {
		const size = 64 << 20
		s := siteWithFile(t, "big.bin", nil, size)
		h, returned := notifyReturn(s.Handler())
		closed := make(chan struct{}, 16)
		limits := writeLimits{stall: 500 * time.Millisecond, max: time.Hour}
		ts := startTLSServer(t, h, limits, http2, func(_ net.Conn, state http.ConnState) {
			if state == http.StateClosed {
				closed <- struct{}{}
			}
		})
		resp, err := slowNetworkClient(ts).Get(ts.URL + "/big.bin")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.ContentLength != size || resp.ProtoMajor != map[bool]int{false: 1, true: 2}[http2] {
			t.Fatalf("%s %d, length %d", resp.Proto, resp.StatusCode, resp.ContentLength)
		}
		// The client reads nothing more: the handler's write must fail.
		waitFor(t, returned, "the file's handler gave up on the stalled client")
		if !http2 {
			waitFor(t, closed, "the stalled connection was closed")
		}
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil || n >= size {
			t.Fatalf("after the cut the client still read %d of %d bytes, error %v", n, size, err)
		}
	})
}

// slowRead reads body 32 KiB at a time with a pause after each read, as a
// client on a slow link does, and returns the SHA-256 of what it got.
func slowRead(body io.Reader, pause time.Duration) ([32]byte, int64, error) {
	h := sha256.New()
	buf := make([]byte, 32<<10)
	var total int64
	for {
		n, err := body.Read(buf)
		h.Write(buf[:n])
		total += int64(n)
		if err == io.EOF {
			return [32]byte(h.Sum(nil)), total, nil
		}
		if err != nil {
			return [32]byte{}, total, err
		}
		time.Sleep(pause) // the pace of a slow client, not a synchronisation
	}
}

// A steady reader of the 4 MiB file pauses steadyReaderPause after each
// read of at most 32 KiB, so it takes at least 128 × 10 ms = 1.28 s: longer
// than the stall bound of the tests below, while each pause is far shorter.
// cappedReaderPause is for a reader that cannot finish within 1.5 s.
const (
	steadyFileSize    = 4 << 20
	steadyReaderPause = 10 * time.Millisecond
	cappedReaderPause = 20 * time.Millisecond
)

// TestSlowSteadyReaderGetsWholeFile: a download that takes longer than the
// stall bound but keeps making progress is never cut, which net/http's
// WriteTimeout would do.
func TestSlowSteadyReaderGetsWholeFile(t *testing.T) {
	protocols(t, func(t *testing.T, http2 bool) {
		content := make([]byte, steadyFileSize)
		rand.Read(content)
		s := siteWithFile(t, "app.apk", content, 0)
		limits := writeLimits{stall: time.Second, max: time.Hour}
		ts := startTLSServer(t, s.Handler(), limits, http2, nil)
		start := time.Now()
		resp, err := slowNetworkClient(ts).Get(ts.URL + "/app.apk")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sum, n, err := slowRead(resp.Body, steadyReaderPause)
		if err != nil || n != steadyFileSize || sum != sha256.Sum256(content) {
			t.Fatalf("%s: got %d of %d bytes (right content: %v), error %v", resp.Proto, n, steadyFileSize, sum == sha256.Sum256(content), err)
		}
		if took := time.Since(start); took <= limits.stall {
			t.Fatalf("the download took %v, within the stall bound %v: this test shows nothing", took, limits.stall)
		}
	})
}

// TestResponseDurationCap: a client that keeps reading, but too slowly for
// the whole response to fit in the hard cap, is cut at the cap.
func TestResponseDurationCap(t *testing.T) {
	content := make([]byte, steadyFileSize)
	s := siteWithFile(t, "app.apk", content, 0)
	// By 1.5 s the reader has taken at most 75 × 32 KiB = 2.4 MiB, plus
	// what the buffers hold (well under 1 MiB): less than the file.
	limits := writeLimits{stall: time.Second, max: 1500 * time.Millisecond}
	ts := startTLSServer(t, s.Handler(), limits, false, nil)
	resp, err := slowNetworkClient(ts).Get(ts.URL + "/app.apk")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, n, err := slowRead(resp.Body, cappedReaderPause); err == nil || n >= steadyFileSize {
		t.Fatalf("got %d of %d bytes, error %v: not cut at the response cap", n, steadyFileSize, err)
	}
}

// upgradeBackend answers "Upgrade: test" with 101 and then, line by line,
// echoes what it reads; after "flood" it writes until its peer stops it, and
// reports the end on flooded.
func upgradeBackend(t *testing.T) (*httptest.Server, <-chan struct{}) {
	flooded := make(chan struct{}, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "test" {
			http.Error(w, "want Upgrade: test", http.StatusBadRequest)
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
		rw.Flush()
		for {
			line, err := rw.ReadString('\n')
			if err != nil {
				return
			}
			if line != "flood\n" {
				rw.WriteString(line)
				rw.Flush()
				continue
			}
			chunk := bytes.Repeat([]byte("x"), 64<<10)
			for {
				if _, err := conn.Write(chunk); err != nil {
					flooded <- struct{}{}
					return
				}
			}
		}
	}))
	t.Cleanup(backend.Close)
	return backend, flooded
}

// TestUpgradeOutlivesResponseLimits: a proxied protocol switch (iroh-relay's
// /relay WebSocket) is not bound by the response limits: it stays usable
// past the response cap. Its writes must still make progress: a client that
// stops reading it is cut and the upstream connection closed.
func TestUpgradeOutlivesResponseLimits(t *testing.T) {
	backend, flooded := upgradeBackend(t)
	s := newTestServerWith(t, Config{Domain: "chat.example", IrohRelay: backend.URL}, nil)
	limits := writeLimits{stall: 300 * time.Millisecond, max: 300 * time.Millisecond}
	ts := startTLSServer(t, s.Handler(), limits, false, nil)
	conn := dialTLS(t, ts, 0)
	fmt.Fprintf(conn, "GET /relay HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	echo := func(line string) {
		t.Helper()
		fmt.Fprintf(conn, "%s\n", line)
		if got, err := br.ReadString('\n'); got != line+"\n" {
			t.Fatalf("echo of %q: %q, %v", line, got, err)
		}
	}
	echo("before")
	// Idle past both limits: that is what is tested, not a synchronisation.
	time.Sleep(3 * limits.max)
	echo("after the response cap")

	fmt.Fprintf(conn, "flood\n")
	waitFor(t, flooded, "the edge dropped the upgraded connection whose client stopped reading")
	if _, err := io.Copy(io.Discard, br); err == nil {
		t.Fatal("the client's connection ended cleanly; want it cut")
	}
}

// dialTLS opens a raw TLS connection to ts speaking HTTP/1.1; every read on
// it fails after failAfter. rcvbuf > 0 sets the kernel receive buffer.
func dialTLS(t *testing.T, ts *httptest.Server, rcvbuf int) *tls.Conn {
	t.Helper()
	raw, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if rcvbuf > 0 {
		raw.(*net.TCPConn).SetReadBuffer(rcvbuf)
	}
	cfg := ts.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	cfg.ServerName, cfg.NextProtos = "127.0.0.1", []string{"http/1.1"}
	conn := tls.Client(raw, cfg)
	conn.SetDeadline(time.Now().Add(failAfter))
	if err := conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// answers sends raw on a new connection and reads responses until the
// server ends the connection; it fails the test if the server keeps it
// open.
func answers(t *testing.T, ts *httptest.Server, raw string) []*http.Response {
	t.Helper()
	conn := dialTLS(t, ts, 0)
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	var got []*http.Response
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				t.Fatalf("the connection stayed open after %d answers", len(got))
			}
			return got
		}
		io.Copy(io.Discard, resp.Body)
		got = append(got, resp)
	}
}

// TestAmbiguousFramingClosesConnection: RFC 9112 §6.1. A request with both
// Content-Length and Transfer-Encoding is answered and then the connection
// is closed, so that what follows it on the connection (here a pipelined
// request, which a front end that reads the body by Content-Length would
// take for body bytes) is never answered. Plain keep-alive still works.
func TestAmbiguousFramingClosesConnection(t *testing.T) {
	backend, _ := upgradeBackend(t)
	s := newTestServerWith(t, Config{Domain: "chat.example", IrohRelay: backend.URL}, func() (string, string, error) { return "a@chat.example", "p", nil })
	ts := startTLSServer(t, s.Handler(), writeLimits{stall: time.Minute, max: time.Hour}, false, nil)
	const next = "GET /smuggled HTTP/1.1\r\nHost: chat.example\r\n\r\n"
	cases := []struct {
		name, request string
		answers       int
	}{
		{"content-length and chunked", "POST /new HTTP/1.1\r\nHost: chat.example\r\nContent-Length: " + fmt.Sprint(len("0\r\n\r\n"+next)) + "\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next, 1},
		{"chunked and content-length", "POST /new HTTP/1.1\r\nHost: chat.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + next, 1},
		// net/http hides whether a chunked request also had a Content-Length.
		{"chunked only", "POST /new HTTP/1.1\r\nHost: chat.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next, 1},
		{"HTTP/1.0 keep-alive with both", "POST /new HTTP/1.0\r\nHost: chat.example\r\nConnection: keep-alive\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next, 1},
		{"upgrade with chunked body", "GET /relay HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\nUpgrade: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next, 1},
		{"content-length only (keep-alive)", "POST /new HTTP/1.1\r\nHost: chat.example\r\nContent-Length: 5\r\n\r\nhello" + next + "GET / HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\r\n", 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := answers(t, ts, c.request)
			if len(got) != c.answers {
				t.Fatalf("%d answers, want %d", len(got), c.answers)
			}
			if c.answers == 1 && (!got[0].Close || got[0].StatusCode == http.StatusSwitchingProtocols) {
				t.Fatalf("answer %d does not announce the close (Connection %q)", got[0].StatusCode, got[0].Header.Get("Connection"))
			}
			if c.answers > 1 && got[1].StatusCode != http.StatusNotFound {
				t.Fatalf("the pipelined request: %d", got[1].StatusCode)
			}
		})
	}
}

// pipeListener accepts the server ends of in-memory pipes: a write on one
// waits until the client reads it, as on a full TCP connection.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error   { close(l.closed); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// TestServerOwnAnswersAreBounded: what net/http answers on its own, before
// any handler (400 to a malformed request, 417 to an unknown expectation),
// is written under the stall bound too: the connection of a client that
// sends such a request and reads nothing is closed.
func TestServerOwnAnswersAreBounded(t *testing.T) {
	for name, request := range map[string]string{
		"400": "GET / HTTP/1.1\r\nHost: chat.example\r\nBad header\r\n\r\n",
		"417": "GET / HTTP/1.1\r\nHost: chat.example\r\nExpect: something\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			closed := make(chan struct{}, 1)
			srv := newHTTPServer(newTestServer(t, nil).Handler(), zaptest.NewLogger(t), func(_ net.Conn, state http.ConnState) {
				if state == http.StateClosed {
					closed <- struct{}{}
				}
			}, writeLimits{stall: 200 * time.Millisecond, max: time.Hour}, 0)
			ln := &pipeListener{conns: make(chan net.Conn, 1), closed: make(chan struct{})}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			client, server := net.Pipe()
			t.Cleanup(func() { client.Close() })
			ln.conns <- server
			client.SetWriteDeadline(time.Now().Add(failAfter))
			if _, err := io.WriteString(client, request); err != nil {
				t.Fatal(err)
			}
			waitFor(t, closed, "the server gave up writing its answer to a client that reads nothing")
		})
	}
}
