package edge

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"chatmail-edge/ech"

	"golang.org/x/crypto/cryptobyte"
)

// clientHelloBytes is the first flight a Go TLS client with cfg sends: its
// ClientHello records, captured from a pipe.
func clientHelloBytes(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	cc, sc := net.Pipe()
	defer sc.Close()
	go tls.Client(cc, cfg).Handshake() // ends when sc closes
	var out []byte
	for {
		var hdr [recordHeaderLen]byte
		if _, err := io.ReadFull(sc, hdr[:]); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
		if _, err := io.ReadFull(sc, body); err != nil {
			t.Fatal(err)
		}
		out = append(append(out, hdr[:]...), body...)
		if v, _ := checkHello(out); v == helloComplete {
			cc.Close()
			return out
		}
	}
}

// sendRawHello connects to addr and writes b, then leaves the connection as
// it is (the test closes it).
func sendRawHello(t testing.TB, addr string, b []byte) net.Conn {
	t.Helper()
	c := dialRaw(t, addr, "")
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	return c
}

// dialRaw opens a TCP connection to addr from the loopback address from
// ("" for the default), closed at the end of the test.
func dialRaw(t testing.TB, addr, from string) net.Conn {
	t.Helper()
	c, err := dialFrom(addr, from)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialFrom(addr, from string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	return d.Dial("tcp", addr)
}

// dialTLSFrom is te.dial from the loopback address from, with ALPN imap
// on the https listener.
func (te *testEdge) dialTLSFrom(t testing.TB, name, from string, echList []byte) (*tls.Conn, error) {
	t.Helper()
	raw, err := dialFrom(te.addr(name), from)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{ServerName: "chat.example", RootCAs: te.roots, EncryptedClientHelloConfigList: echList}
	if name == "https" {
		cfg.NextProtos = []string{"imap"}
	}
	c := tls.Client(raw, cfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// expectGreeting dials the named listener from from and reads the IMAP
// greeting.
func (te *testEdge) expectGreeting(t testing.TB, name, from string) {
	t.Helper()
	c, err := te.dialTLSFrom(t, name, from, nil)
	if err != nil {
		t.Fatalf("client from %s on %s: %v", from, name, err)
	}
	defer c.Close()
	if got := readLine(t, c); !strings.HasPrefix(got, "* OK") {
		t.Fatalf("client from %s on %s got %q", from, name, got)
	}
}

// refusedAtAccept reports whether a connection from from to addr is closed
// by the server (with a reset, or at once) without a word. The reset may
// come before the dialer's connect returns.
func refusedAtAccept(t testing.TB, addr, from string) bool {
	t.Helper()
	c, err := dialFrom(addr, from)
	if err != nil {
		return errors.Is(err, syscall.ECONNRESET)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	_, err = c.Read(b[:])
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)
}

// TestSlowHellosHoldNoSlot: with one handshake slot, clients that send part
// of a ClientHello and then nothing wait in the poller; a good client is
// served while they are still there.
func TestSlowHellosHoldNoSlot(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.MaxHandshakes = 1 })
	hello := clientHelloBytes(t, &tls.Config{ServerName: "chat.example"})
	const slow = 20
	for i := range slow {
		c := dialRaw(t, te.addr("imaps"), "")
		if _, err := c.Write(hello[:1+i%(len(hello)-1)]); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the slow hellos parked", func() bool { return te.Snapshot().WaitingForHello == slow })
	te.expectGreeting(t, "imaps", "")
	te.expectGreeting(t, "https", "")
	if n := te.Snapshot().WaitingForHello; n != slow {
		t.Fatalf("%d slow hellos still waiting after the good clients, want %d (the hello timeout is 5s)", n, slow)
	}
}

// TestStalledHandshakeHoldsNoSlot: a client that sends its whole hello and
// then never its Finished gives its slot back while it is waited for.
func TestStalledHandshakeHoldsNoSlot(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.MaxHandshakes = 1 })
	hello := clientHelloBytes(t, &tls.Config{ServerName: "chat.example", NextProtos: []string{"imap"}})
	for range 3 {
		sendRawHello(t, te.addr("https"), hello)
	}
	waitFor(t, 5*time.Second, "three stalled handshakes", func() bool { return te.HandshakeBacklog() == 3 })
	te.expectGreeting(t, "imaps", "")
	if n := te.HandshakeBacklog(); n != 3 {
		t.Fatalf("backlog %d after the good client, want the 3 stalled ones", n)
	}
}

// TestPlainHTTPOnHTTPSPort: a plaintext HTTP request on 443 gets a 400 at
// once, as from nginx, and is counted; on 993 plaintext is closed.
func TestPlainHTTPOnHTTPSPort(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	c := sendRawHello(t, te.addr("https"), []byte("GET / HTTP/1.1\r\nHost: chat.example\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the answer: %v (got %q)", err, resp)
	}
	if !strings.HasPrefix(string(resp), "HTTP/1.1 400 Bad Request\r\n") || !strings.Contains(string(resp), "plain HTTP was sent to an HTTPS port") {
		t.Fatalf("answer %q", resp)
	}
	// Content-Length must match the body.
	head, body, _ := strings.Cut(string(resp), "\r\n\r\n")
	if !strings.Contains(head, "Content-Length: "+strconv.Itoa(len(body))) {
		t.Fatalf("Content-Length in %q does not match the body of %d bytes", head, len(body))
	}
	waitFor(t, 5*time.Second, "not-tls counted", func() bool { return te.Snapshot().Listeners[0].Failures["not-tls"] == 1 })

	c2 := sendRawHello(t, te.addr("imaps"), []byte("a1 LOGIN x y\r\n"))
	expectClosed(t, c2, 5*time.Second)
	waitFor(t, 5*time.Second, "not-tls counted on imaps", func() bool { return te.Snapshot().Listeners[1].Failures["not-tls"] == 1 })
	te.expectGreeting(t, "https", "")
}

// TestNotTLSRefusedAtOnce: what cannot start a TLS handshake is closed as
// soon as its first bytes show it, long before any timeout.
func TestNotTLSRefusedAtOnce(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.HandshakeTimeout = time.Minute; c.HelloTimeout = time.Minute })
	cases := map[string][]byte{
		"binary":            {0x00, 0x01, 0x02},
		"sslv2":             {0x80, 0x2e, 0x01, 0x03, 0x01},
		"bad version":       {0x16, 0x7f, 0x01, 0x00, 0x10},
		"empty record":      {0x16, 0x03, 0x01, 0x00, 0x00},
		"oversized record":  {0x16, 0x03, 0x01, 0x40, 0x01},
		"not a hello":       {0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00},
		"alert first":       {0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28},
		"hello over 64 KiB": {0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x01, 0x00, 0x00},
	}
	n := uint64(0)
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			c := sendRawHello(t, te.addr("https"), b)
			expectClosed(t, c, 5*time.Second)
			n++
			waitFor(t, 5*time.Second, "the refusal counted", func() bool {
				f := te.Snapshot().Listeners[0].Failures
				return f["not-tls"]+f["handshake"] == n
			})
		})
	}
	te.expectGreeting(t, "https", "")
}

// TestHelloAcrossRecords: a ClientHello split over several records, and a
// record split over many writes, still makes a handshake.
func TestHelloAcrossRecords(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	hello := clientHelloBytes(t, &tls.Config{ServerName: "chat.example", RootCAs: te.roots, NextProtos: []string{"imap"}})
	msg := hello[recordHeaderLen:] // one record in Go's hello
	var split []byte
	for len(msg) > 0 {
		n := min(len(msg), 100)
		split = append(split, recordTypeHandshake, 3, 1, 0, byte(n))
		split = append(split, msg[:n]...)
		msg = msg[n:]
	}
	if v, _ := checkHello(split[:len(split)-1]); v != helloIncomplete {
		t.Fatalf("verdict %v for all but the last byte", v)
	}
	if v, _ := checkHello(split); v != helloComplete {
		t.Fatalf("verdict %v for the whole split hello", v)
	}
	c := dialRaw(t, te.addr("https"), "")
	for i := 0; i < len(split); i += 50 {
		if _, err := c.Write(split[i:min(len(split), i+50)]); err != nil {
			t.Fatal(err)
		}
	}
	// The server answers with its first flight: a handshake record.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	first, err := bufio.NewReader(c).Peek(1)
	if err != nil || first[0] != recordTypeHandshake {
		t.Fatalf("server's first byte %x, %v; want a handshake record", first, err)
	}
}

// echHelloWithSuite is a ClientHello whose encrypted_client_hello extension
// is a well-formed outer one (RFC 9849 §5) with the given cipher suite.
func echHelloWithSuite(kdf, aead uint16, configID uint8) []byte {
	return helloWithECHExt(func(b *cryptobyte.Builder) {
		b.AddUint8(echClientHelloOuter)
		b.AddUint16(kdf)
		b.AddUint16(aead)
		b.AddUint8(configID)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 32)) }) // enc
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(make([]byte, 200)) })
	})
}

// TestUnknownECHSuiteGoesOnWithoutECH: a client naming an HPKE suite the
// server does not implement gets the handshake without ECH (a ServerHello),
// not an internal_error alert (RFC 9849 §7.1).
func TestUnknownECHSuiteGoesOnWithoutECH(t *testing.T) {
	set := testKeySet(t, 9)
	te, _, _ := startEdgeWithBackends(t, nil)
	te.useKeys(set)
	for _, suite := range []ech.CipherSuite{{KDF: 0x7777, AEAD: 0x0001}, {KDF: 0x0001, AEAD: 0x7777}} {
		c := sendRawHello(t, te.addr("https"), echHelloWithSuite(suite.KDF, suite.AEAD, set.Current().ConfigID()))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var hdr [recordHeaderLen + 1]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatalf("suite %+v: %v", suite, err)
		}
		if hdr[0] != recordTypeHandshake || hdr[5] != 2 { // ServerHello
			t.Fatalf("suite %+v: got %x, want a ServerHello", suite, hdr)
		}
	}
}

// TestStaleSuiteGetsRetryConfigs: a client whose config names a suite the
// key does not list (a config the server never published) is rejected
// with the current retry configs.
func TestStaleSuiteGetsRetryConfigs(t *testing.T) {
	set := testKeySet(t, 9)
	te, _, _ := startEdgeWithBackends(t, nil)
	te.useKeys(set)
	cfg := set.Current().Parsed()
	cfg.Suites = []ech.CipherSuite{{KDF: 0x0002, AEAD: 0x0002}} // HKDF-SHA384, AES-256-GCM: Go has them, the key does not list them
	_, err := te.dialTLSFrom(t, "imaps", "", ech.MarshalConfigList(cfg.Marshal()))
	rej, ok := errors.AsType[*tls.ECHRejectionError](err)
	if !ok {
		t.Fatalf("got %v, want an ECH rejection", err)
	}
	if string(rej.RetryConfigList) != string(set.ConfigList()) {
		t.Fatal("the retry configs are not the published list")
	}
}

func TestSourceKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":               "192.0.2.7",
		"::ffff:192.0.2.7":        "192.0.2.7",
		"2001:db8:1:2:3:4:5:6":    "2001:db8:1:2::",
		"2001:db8:1:2:ffff::1":    "2001:db8:1:2::",
		"fe80::1%eth0":            "fe80::",
		"2001:db8:1:3:3:4:5:6":    "2001:db8:1:3::",
		"2001:db8:ffff:ffff::abc": "2001:db8:ffff:ffff::",
	} {
		if got := sourceKey(netip.MustParseAddr(in)); got.String() != want {
			t.Errorf("sourceKey(%s) = %s, want %s", in, got, want)
		}
	}
}

// noExempt exempts nothing, so that the loopback clients of a test count.
func noExempt(c *Config) { c.Sources.Exempt = []netip.Prefix{} }

// TestPerSourceConnectionLimit: one address holding its limit of sessions
// is refused more; another address is served; a freed slot can be used.
func TestPerSourceConnectionLimit(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { noExempt(c); c.Sources.MaxConnections = 3 })
	var held []net.Conn
	for range 3 {
		c, err := te.dialTLSFrom(t, "imaps", "127.0.0.2", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		readLine(t, c)
		held = append(held, c)
	}
	if !refusedAtAccept(t, te.addr("imaps"), "127.0.0.2") {
		t.Fatal("a fourth connection from 127.0.0.2 was not refused")
	}
	waitFor(t, 5*time.Second, "the refusal counted", func() bool {
		s := te.Snapshot()
		return s.Listeners[1].Failures["source-limit"] == 1 && s.SourceRefusals["connections"] == 1
	})
	te.expectGreeting(t, "imaps", "127.0.0.3")
	held[0].Close()
	waitFor(t, 5*time.Second, "the slot freed", func() bool { return te.Snapshot().ActiveSessions == 2 })
	te.expectGreeting(t, "imaps", "127.0.0.2")
}

// TestPerSourceHandshakeLimit: silent connections from one address count
// against its handshake limit, not against another address's.
func TestPerSourceHandshakeLimit(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { noExempt(c); c.Sources.MaxHandshakes = 2 })
	silent := []net.Conn{dialRaw(t, te.addr("https"), "127.0.0.2"), dialRaw(t, te.addr("https"), "127.0.0.2")}
	waitFor(t, 5*time.Second, "two waiting", func() bool { return te.Snapshot().WaitingForHello == 2 })
	if !refusedAtAccept(t, te.addr("https"), "127.0.0.2") {
		t.Fatal("a third silent connection from 127.0.0.2 was not refused")
	}
	te.expectGreeting(t, "imaps", "127.0.0.3")
	silent[0].Close()
	waitFor(t, 5*time.Second, "one waiting", func() bool { return te.Snapshot().WaitingForHello == 1 })
	te.expectGreeting(t, "imaps", "127.0.0.2")
	if got := te.Snapshot().SourceRefusals["handshakes"]; got != 1 {
		t.Fatalf("%d refusals by the handshake limit, want 1", got)
	}
}

// TestPerSourceRate: a source may open a burst of five seconds' worth, then
// no more until its allowance refills; other sources are not affected.
func TestPerSourceRate(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { noExempt(c); c.Sources.NewPerSecond = 1 })
	for i := range burstSeconds {
		c, err := te.dialTLSFrom(t, "imaps", "127.0.0.2", nil)
		if err != nil {
			t.Fatalf("connection %d of the burst: %v", i, err)
		}
		c.Close()
	}
	refused := 0
	for range 3 { // the allowance refills at 1/s: at most one of these may pass
		if c, err := te.dialTLSFrom(t, "imaps", "127.0.0.2", nil); err != nil {
			refused++
		} else {
			c.Close()
		}
	}
	if refused < 2 {
		t.Fatalf("%d of 3 connections past the burst refused, want at least 2", refused)
	}
	te.expectGreeting(t, "imaps", "127.0.0.3")
	if got := te.Snapshot().SourceRefusals["new connections per second"]; got != uint64(refused) {
		t.Fatalf("%d refusals by rate counted, want %d", got, refused)
	}
}

// TestExemptSourcesHaveNoLimits: loopback is exempt by default.
func TestExemptSourcesHaveNoLimits(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.Sources.MaxConnections = 1; c.Sources.NewPerSecond = 1 })
	for range 2 * burstSeconds {
		c, err := te.dialTLSFrom(t, "imaps", "127.0.0.2", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		readLine(t, c)
	}
	if s := te.Snapshot(); s.Sources != 0 {
		t.Fatalf("%d sources tracked, want none for exempt ones", s.Sources)
	}
}

// TestFairLine: the line takes handshakes one source after another, in
// arrival order within a source.
func TestFairLine(t *testing.T) {
	conn := func(from string) *pendingConn {
		return &pendingConn{tc: &tcpConn{remote: netip.MustParseAddrPort(from + ":1000")}}
	}
	a1, a2, a3 := conn("192.0.2.1"), conn("192.0.2.1"), conn("192.0.2.1")
	b1, b2 := conn("[2001:db8::1]"), conn("[2001:db8::2]") // one /64
	c1 := conn("198.51.100.9")
	var fl fairLine
	for _, pc := range []*pendingConn{a1, a2, a3, b1, b2, c1} {
		fl.push(pc)
	}
	want := []*pendingConn{a1, b1, c1, a2, b2, a3}
	for i, w := range want {
		if got := fl.pop(); got != w {
			t.Fatalf("pop %d: got %s, want %s", i, got.tc.remote, w.tc.remote)
		}
	}
	if fl.pop() != nil || !fl.empty() || len(fl.bySource) != 0 {
		t.Fatal("the line is not empty after every pop")
	}
}

// TestSlotsGoToResumingHandshakesFirst: a handshake whose client answered
// gets the next free slot before a new one from the line.
func TestSlotsGoToResumingHandshakesFirst(t *testing.T) {
	started := make(chan *pendingConn, 4)
	hs := newHandshakeSlots(1, func(pc *pendingConn) { started <- pc })
	pc := func() *pendingConn {
		p := &pendingConn{tc: &tcpConn{remote: netip.MustParseAddrPort("192.0.2.1:1")}}
		p.turn.slots = hs
		return p
	}
	first, second := pc(), pc()
	hs.enqueue(first)
	if <-started != first {
		t.Fatal("the first handshake did not start")
	}
	hs.enqueue(second) // no slot free: in line
	first.turn.release()
	if <-started != second {
		t.Fatal("the slot did not go to the one in line")
	}
	// first's client answers while second holds the slot: first waits.
	resumed := make(chan struct{})
	go func() { first.turn.acquire(); close(resumed) }()
	waitFor(t, 5*time.Second, "first to wait", func() bool { hs.mu.Lock(); defer hs.mu.Unlock(); return len(hs.resuming) == 1 })
	third := pc()
	hs.enqueue(third)
	second.turn.release()
	<-resumed
	if !first.turn.holding {
		t.Fatal("the resumed handshake does not hold the slot")
	}
	select {
	case pc := <-started:
		t.Fatalf("a new handshake started while the resumed one holds the only slot: %v", pc.tc.remote)
	default:
	}
	first.turn.release()
	if <-started != third {
		t.Fatal("the third did not start after the slot came back")
	}
	hs.resize(2)
	hs.close()
}
