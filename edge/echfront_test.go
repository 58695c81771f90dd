package edge

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"chatmail-edge/ech"

	"golang.org/x/crypto/cryptobyte"
)

// frontConn runs an echFront over any net.Conn, as tcpConn does over a socket.
type frontConn struct {
	net.Conn
	front *echFront
}

func (c *frontConn) Read(p []byte) (int, error) {
	if c.front.drained() {
		return c.Conn.Read(p)
	}
	return c.front.read(p, c.Conn.Read)
}

// frontServerConfig is a server config as the edge's, with set's keys.
func frontServerConfig(set *ech.KeySet) *tls.Config {
	keys := set.TLSKeys()
	return &tls.Config{
		Certificates:             []tls.Certificate{*testLeaf},
		EncryptedClientHelloKeys: keys,
		NextProtos:               []string{"imap"},
		MinVersion:               tls.VersionTLS13,
	}
}

type frontResult struct {
	front  *echFront
	server tls.ConnectionState
	client tls.ConnectionState
	err    error // the client's
}

// handshakeThroughFront runs one handshake of client against server with
// an echFront (keys from set) in front of the server, and an echo of one
// line after it.
func handshakeThroughFront(t *testing.T, server, client *tls.Config, set *ech.KeySet) frontResult {
	t.Helper()
	cc, sc := tcpPair(t) // not net.Pipe: after a HelloRetryRequest both sides write at once
	front := newECHFront(newECHFrontKeys(set.TLSKeys()), nil)
	srv := tls.Server(&frontConn{Conn: sc, front: front}, server)
	done := make(chan tls.ConnectionState, 1)
	go func() {
		defer sc.Close()
		if err := srv.Handshake(); err != nil {
			done <- tls.ConnectionState{}
			return
		}
		buf := make([]byte, 64)
		n, _ := srv.Read(buf)
		srv.Write(buf[:n])
		done <- srv.ConnectionState()
	}()
	cli := tls.Client(cc, client)
	err := cli.Handshake()
	var res frontResult
	if err == nil {
		cli.Write([]byte("a1 NOOP\r\n"))
		buf := make([]byte, 64)
		n, rerr := io.ReadAtLeast(cli, buf, 9)
		if rerr != nil || string(buf[:n]) != "a1 NOOP\r\n" {
			t.Errorf("echo through the session: %q, %v", buf[:n], rerr)
		}
		res.client = cli.ConnectionState()
	}
	cc.Close()
	res.front, res.server, res.err = front, <-done, err
	return res
}

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return cc, sc
}

func frontClientConfig(list []byte) *tls.Config {
	return &tls.Config{
		ServerName: "chat.example", RootCAs: testRoots, NextProtos: []string{"imap"},
		EncryptedClientHelloConfigList: list,
		CurvePreferences:               []tls.CurveID{tls.X25519},
	}
}

func TestECHFrontOpensTheHello(t *testing.T) {
	set := testKeySet(t, 3, 9) // the client uses the current one, the second
	res := handshakeThroughFront(t, frontServerConfig(set), frontClientConfig(set.ConfigList()), set)
	if res.err != nil {
		t.Fatal(res.err)
	}
	if !res.front.accepted {
		t.Error("the front did not open the ClientHello")
	}
	if res.server.ECHAccepted {
		t.Error("crypto/tls opened the hello itself: the front passed it on")
	}
	if !res.client.ECHAccepted {
		t.Error("the client saw no ECH acceptance: the backend-mode confirmation is missing")
	}
	if res.server.ServerName != "chat.example" || res.server.NegotiatedProtocol != "imap" {
		t.Errorf("server saw SNI %q ALPN %q, want the inner chat.example and imap", res.server.ServerName, res.server.NegotiatedProtocol)
	}
}

// TestECHFrontAfterHelloRetryRequest: the server wants another group, so the
// client sends a second ClientHelloOuter, sealed in the first one's HPKE
// context (RFC 9849 §6.1.5); the front opens it too.
func TestECHFrontAfterHelloRetryRequest(t *testing.T) {
	set := testKeySet(t, 5)
	server := frontServerConfig(set)
	server.CurvePreferences = []tls.CurveID{tls.CurveP256}
	client := frontClientConfig(set.ConfigList())
	client.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256} // a key share for X25519 only
	res := handshakeThroughFront(t, server, client, set)
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.front.hellos != 2 {
		t.Errorf("the front saw %d ClientHellos, want 2 (no HelloRetryRequest?)", res.front.hellos)
	}
	if !res.front.accepted || !res.client.ECHAccepted || res.server.ECHAccepted {
		t.Errorf("front accepted %v, client accepted %v, crypto/tls opened it %v; want true, true, false",
			res.front.accepted, res.client.ECHAccepted, res.server.ECHAccepted)
	}
}

// TestECHFrontResumption: the PSK binders cover the inner hello the front
// rebuilt (RFC 8446 §4.2.11.2), so resumption works only if it is exact.
func TestECHFrontResumption(t *testing.T) {
	set := testKeySet(t, 1)
	server := frontServerConfig(set)
	client := frontClientConfig(set.ConfigList())
	client.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	if res := handshakeThroughFront(t, server, client, set); res.err != nil || res.client.DidResume {
		t.Fatalf("first handshake: err %v, resumed %v", res.err, res.client.DidResume)
	}
	res := handshakeThroughFront(t, server, client, set)
	if res.err != nil {
		t.Fatal(res.err)
	}
	if !res.client.DidResume || !res.front.accepted || !res.client.ECHAccepted {
		t.Errorf("resumed %v, front accepted %v, client accepted %v; want all true", res.client.DidResume, res.front.accepted, res.client.ECHAccepted)
	}
}

// TestECHFrontPassesOnWhatItCannotOpen: a config the edge has no key for,
// and a hello without ECH, go to crypto/tls as they came.
func TestECHFrontPassesOnWhatItCannotOpen(t *testing.T) {
	set := testKeySet(t, 1)
	stale := testKeySet(t, 2)
	res := handshakeThroughFront(t, frontServerConfig(set), frontClientConfig(stale.ConfigList()), set)
	rej, ok := errors.AsType[*tls.ECHRejectionError](res.err)
	if !ok {
		t.Fatalf("want an ECH rejection, got %v", res.err)
	}
	if !bytes.Equal(rej.RetryConfigList, set.ConfigList()) {
		t.Errorf("retry configs %x, want %x", rej.RetryConfigList, set.ConfigList())
	}
	if res.front.accepted {
		t.Error("the front claims to have opened a hello for a key it does not have")
	}

	res = handshakeThroughFront(t, frontServerConfig(set), frontClientConfig(nil), set)
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.front.accepted || res.client.ECHAccepted || !res.front.drained() {
		t.Errorf("plain hello: front accepted %v, client accepted %v, front drained %v", res.front.accepted, res.client.ECHAccepted, res.front.drained())
	}
}

// ext builds one TLS extension.
func ext(typ uint16, data []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint16(typ)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(data) })
	return b.BytesOrPanic()
}

// encodedInner builds an EncodedClientHelloInner (RFC 9849 §5.1) with exts
// and padding bytes after it.
func encodedInner(exts [][]byte, padding []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint16(tls.VersionTLS12)
	b.AddBytes(make([]byte, 32))
	b.AddUint8(0) // empty legacy_session_id
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(tls.TLS_AES_128_GCM_SHA256) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, e := range exts {
			b.AddBytes(e)
		}
	})
	return append(b.BytesOrPanic(), padding...)
}

func TestDecodeInnerHelloOuterExtensions(t *testing.T) {
	tls13 := []byte{2, 0x03, 0x04}
	groups := ext(10, []byte{0, 2, 0, 0x1d})
	versions := ext(extSupportedVersions, tls13)
	keyShare := ext(51, []byte{0, 4, 0, 0x1d, 0, 0})
	outer := outerHello{
		sessionID: []byte{1, 2, 3},
		exts: []rawExtension{
			{typ: 0, data: ext(0, []byte("public"))}, {typ: 10, data: groups},
			{typ: extSupportedVersions, data: versions}, {typ: 51, data: keyShare},
		},
	}
	sni := ext(0, []byte("inner"))
	innerECH := ext(extensionECH, []byte{echClientHelloInner})
	refs := func(types ...uint16) []byte {
		var b cryptobyte.Builder
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, t := range types {
				b.AddUint16(t)
			}
		})
		return ext(extECHOuterExtensions, b.BytesOrPanic())
	}

	got, ok := decodeInnerHello(encodedInner([][]byte{sni, refs(10, extSupportedVersions, 51), innerECH}, make([]byte, 7)), outer)
	if !ok {
		t.Fatal("a valid EncodedClientHelloInner was refused")
	}
	hello, ok := parseOuterHello(got)
	if !ok {
		t.Fatal("the rebuilt hello does not parse")
	}
	if !bytes.Equal(hello.sessionID, outer.sessionID) {
		t.Errorf("legacy_session_id %x, want the outer %x", hello.sessionID, outer.sessionID)
	}
	want := [][]byte{sni, groups, versions, keyShare, innerECH}
	if len(hello.exts) != len(want) {
		t.Fatalf("%d extensions, want %d", len(hello.exts), len(want))
	}
	for i, e := range hello.exts {
		if !bytes.Equal(e.data, want[i]) {
			t.Errorf("extension %d: %x, want %x", i, e.data, want[i])
		}
	}

	for name, encoded := range map[string][]byte{
		"out of order":          encodedInner([][]byte{refs(51, 10), versions, innerECH}, nil),
		"names ECH":             encodedInner([][]byte{refs(extensionECH), versions, innerECH}, nil),
		"names a missing one":   encodedInner([][]byte{refs(13), versions, innerECH}, nil),
		"padding not zero":      encodedInner([][]byte{versions, innerECH}, []byte{0, 1}),
		"no inner ECH":          encodedInner([][]byte{versions}, nil),
		"outer ECH type inside": encodedInner([][]byte{versions, ext(extensionECH, []byte{echClientHelloOuter})}, nil),
		"TLS 1.2 offered":       encodedInner([][]byte{ext(extSupportedVersions, []byte{4, 0x03, 0x04, 0x03, 0x03}), innerECH}, nil),
		"no TLS 1.3":            encodedInner([][]byte{innerECH}, nil),
		"empty reference list":  encodedInner([][]byte{refs(), versions, innerECH}, nil),
		"truncated":             encodedInner([][]byte{versions, innerECH}, nil)[:40],
	} {
		if _, ok := decodeInnerHello(encoded, outer); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

// clientHelloRecord is the first record a Go client with config sends.
func clientHelloRecord(t testing.TB, config *tls.Config) []byte {
	cc, sc := net.Pipe()
	go tls.Client(cc, config).Handshake()
	defer cc.Close()
	defer sc.Close()
	hdr := make([]byte, recordHeaderLen)
	if _, err := io.ReadFull(sc, hdr); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, recordHeaderLen+(int(hdr[3])<<8|int(hdr[4])))
	copy(rec, hdr)
	if _, err := io.ReadFull(sc, rec[recordHeaderLen:]); err != nil {
		t.Fatal(err)
	}
	return rec
}

// FuzzECHFront feeds the front arbitrary bytes, seeded with a real ECH
// ClientHello: it must never panic, and what it does not open it must pass
// on unchanged.
func FuzzECHFront(f *testing.F) {
	set := testKeySet(f, 4)
	keys := newECHFrontKeys(set.TLSKeys())
	hello := clientHelloRecord(f, frontClientConfig(set.ConfigList()))
	f.Add(hello)
	f.Add(hello[:len(hello)-1])
	f.Add(append(append([]byte{}, hello...), 20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 1, 0))
	f.Add([]byte{22, 3, 1, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		front := newECHFront(keys, nil)
		r := bytes.NewReader(in)
		var out []byte
		buf := make([]byte, 700)
		for {
			var n int
			var err error
			if front.drained() {
				n, err = r.Read(buf)
			} else {
				n, err = front.read(buf, r.Read)
			}
			out = append(out, buf[:n]...)
			if err != nil {
				break
			}
		}
		// A record cut short by the end stays behind; nothing else may.
		if !front.accepted && !bytes.HasPrefix(in, out) {
			t.Fatalf("nothing opened, yet the bytes changed:\n in %x\nout %x", in, out)
		}
	})
}

// coalescingConn holds back the client's first encrypted record (its
// Finished) and sends it with the next write, so that the edge reads the
// end of the handshake and the first data in one go, as it happens with
// clients that speak right after the handshake.
type coalescingConn struct {
	net.Conn
	held []byte
	done bool
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	if c.done {
		return c.Conn.Write(p)
	}
	if c.held == nil && hasRecordOfType(p, 23) {
		c.held = slices.Clone(p)
		return len(p), nil
	}
	if c.held != nil {
		c.done = true
		_, err := c.Conn.Write(append(c.held, p...))
		return len(p), err
	}
	return c.Conn.Write(p)
}

// hasRecordOfType reports whether the records in p include one of type typ.
func hasRecordOfType(p []byte, typ byte) bool {
	for len(p) >= recordHeaderLen {
		if p[0] == typ {
			return true
		}
		p = p[min(len(p), recordHeaderLen+(int(p[3])<<8|int(p[4]))):]
	}
	return false
}

// TestECHFrontFirstDataWithFinished: bytes the front read past the
// handshake reach the backend although nothing is left in the socket to wake
// the poller for them.
func TestECHFrontFirstDataWithFinished(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	set := testKeySet(t, 7)
	te.useKeys(set)
	raw, err := net.Dial("tcp", te.addr("imaps"))
	if err != nil {
		t.Fatal(err)
	}
	cc := &coalescingConn{Conn: raw}
	conn := tls.Client(cc, &tls.Config{ServerName: "chat.example", RootCAs: te.roots, EncryptedClientHelloConfigList: set.ConfigList()})
	defer conn.Close()
	if err := conn.Handshake(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, "a1 NOOP\r\n"); err != nil {
		t.Fatal(err)
	}
	if !cc.done {
		t.Fatal("the Finished was not held back: the test does not test what it says")
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn) // greeting and echo may come in one record
	if got, err := r.ReadString('\n'); !strings.HasPrefix(got, "* OK") {
		t.Fatalf("greeting %q, %v", got, err)
	}
	if got, err := r.ReadString('\n'); got != "a1 NOOP\r\n" {
		t.Fatalf("echo %q, %v; want the command back", got, err)
	}
}
