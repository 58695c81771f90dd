package service

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// dropped is the line of a connection closed before its handshake ended.
func dropped(detail string) logLine { return logLine{"connection dropped", detail} }

// Details of dropped connections, as edge/hello.go and edge/handshake.go
// word them.
const (
	notTLSDetail       = "not a TLS handshake"
	badHelloDetail     = "not a valid ClientHello"
	plainHTTPDetail    = "plaintext HTTP request"
	helloTimeoutDetail = "no whole ClientHello before the hello timeout"
)

// plainHTTPAnswer is the start of the edge's answer to plaintext HTTP on
// 443, as nginx's.
const plainHTTPAnswer = "HTTP/1.1 400 Bad Request\r\n"

// TestCatalogueTLS: bytes that are no TLS, TLS records that start no
// handshake, ClientHellos the edge cannot serve, clients that stall or
// leave, and PROXY headers, which a client may never send.
func TestCatalogueTLS(t *testing.T) {
	env := startCatalogue(t, "")
	goHello := goClientHello(t, env.tlsConfig("imap"))
	helloMsg := goHello[5:]
	refusedSilently := func(listener string, b []byte) func(*testing.T, *catalogueEnv) {
		return func(t *testing.T, env *catalogueEnv) { expectClosedSilently(t, env.send(t, listener, b)) }
	}
	answered400 := func(b []byte) func(*testing.T, *catalogueEnv) {
		return func(t *testing.T, env *catalogueEnv) {
			c := env.send(t, "https", b)
			if got := readToClose(t, c); !strings.HasPrefix(string(got), plainHTTPAnswer) {
				t.Fatalf("answer %q, want a 400", got)
			}
			c.Close() // as a client does once it has the answer; the edge waits for it
		}
	}
	alerted := func(listener string, b []byte, desc byte) func(*testing.T, *catalogueEnv) {
		return func(t *testing.T, env *catalogueEnv) { expectAlert(t, env.send(t, listener, b), desc) }
	}
	goClientFails := func(listener string, cfg *tls.Config, want string) func(*testing.T, *catalogueEnv) {
		return func(t *testing.T, env *catalogueEnv) {
			c, err := tls.Dial("tcp", env.addr(listener), cfg)
			if err == nil {
				c.Close()
				t.Fatal("the handshake succeeded")
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("client error %q, want %q", err, want)
			}
		}
	}
	// PROXY headers claiming the client is 203.0.113.7 (proxy-protocol.txt
	// §2.1, §2.2).
	proxyV1 := []byte("PROXY TCP4 203.0.113.7 192.0.2.1 40000 443\r\n")
	proxyV2 := append([]byte("\r\n\r\n\x00\r\nQUIT\n"), 0x21, 0x11, 0, 12, 203, 0, 113, 7, 192, 0, 2, 1, 0x9c, 0x40, 0x01, 0xbb)
	notBelieved := func(send func(*testing.T, *catalogueEnv)) func(*testing.T, *catalogueEnv) {
		return func(t *testing.T, env *catalogueEnv) {
			since := len(env.logs.All())
			send(t, env)
			env.expectLogged(t, since, logLine{"connection dropped", "127.0.0.1:"}) // the real source
			if env.logged(since, logLine{"connection dropped", "203.0.113.7"}) {
				t.Fatal("the claimed address was logged as the client's")
			}
		}
	}
	noCommonGroup := tls13Hello()
	noCommonGroup.groups = []uint16{0x0100} // ffdhe2048 (RFC 7919), which the edge does not offer
	noCommonGroup.shares = []keyShare{{0x0100, randomBytes(256)}}
	noCommonSuite := tls13Hello()
	noCommonSuite.suites = []uint16{0x1304, 0x1305} // TLS_AES_128_CCM_SHA256, TLS_AES_128_CCM_8_SHA256 (RFC 8446 §B.4)
	duplicateExtension := tls13Hello()
	duplicateExtension.exts = [][]byte{extension(extGroups, func(b *cryptobyte.Builder) { // supported_groups twice (RFC 8446 §4.2)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(uint16(tls.X25519)) })
	})}

	env.run(t, []badInput{
		{name: "binary bytes on 443", send: refusedSilently("https", []byte{0, 1, 2, 3, 4, 5, 6, 7}),
			counts: failures("https", "not-tls"), log: dropped(notTLSDetail)},
		{name: "SSLv2 ClientHello on 993", send: refusedSilently("imaps", []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15}),
			counts: failures("imaps", "not-tls"), log: dropped(notTLSDetail)},
		{name: "record version 0x7f01", send: refusedSilently("https", []byte{0x16, 0x7f, 0x01, 0x00, 0x10}),
			counts: failures("https", "not-tls"), log: dropped(notTLSDetail)},
		{name: "record longer than 2^14", send: refusedSilently("https", []byte{0x16, 0x03, 0x01, 0x40, 0x01}),
			counts: failures("https", "not-tls"), log: dropped(badHelloDetail)},
		{name: "empty handshake record", send: refusedSilently("smtps", []byte{0x16, 0x03, 0x01, 0x00, 0x00}),
			counts: failures("smtps", "not-tls"), log: dropped(badHelloDetail)},
		{name: "ServerHello as the first message", send: refusedSilently("https", []byte{0x16, 0x03, 0x03, 0x00, 0x04, msgServerHello, 0, 0, 0}),
			counts: failures("https", "not-tls"), log: dropped(badHelloDetail)},
		{name: "alert as the first record", send: refusedSilently("imaps", []byte{recordAlert, 0x03, 0x03, 0x00, 0x02, 2, alertHandshakeFailure}),
			counts: failures("imaps", "not-tls"), log: dropped(notTLSDetail)},
		{name: "ClientHello of more than 64 KiB", send: refusedSilently("https", []byte{0x16, 0x03, 0x01, 0x00, 0x04, msgClientHello, 0x01, 0x00, 0x00}),
			counts: failures("https", "not-tls"), log: dropped("ClientHello too large")},
		{name: "change_cipher_spec inside the ClientHello", send: refusedSilently("https", bytes.Join([][]byte{
			{0x16, 0x03, 0x01, 0x00, 0x10}, helloMsg[:0x10], {20, 0x03, 0x03, 0x00, 0x01, 0x01}}, nil)),
			counts: failures("https", "not-tls"), log: dropped(badHelloDetail)},
		{name: "plaintext HTTP on 443", send: answered400([]byte("GET / HTTP/1.1\r\nHost: " + reloadDomain + "\r\n\r\n")),
			counts: failures("https", "not-tls"), log: dropped(plainHTTPDetail)},
		{name: "plaintext IMAP on 993", send: refusedSilently("imaps", []byte("a1 CAPABILITY\r\n")),
			counts: failures("imaps", "not-tls"), log: dropped(notTLSDetail)},
		{name: "plaintext SMTP on 465", send: refusedSilently("smtps", []byte("EHLO client.example\r\n")),
			counts: failures("smtps", "not-tls"), log: dropped(plainHTTPDetail)},

		// A PROXY header is what the edge sends to the backends; from a
		// client it is a lie about its address, and no TLS: refused.
		{name: "PROXY v1 header then a ClientHello on 443", send: notBelieved(answered400(append(proxyV1, goHello...))),
			counts: failures("https", "not-tls"), log: dropped(plainHTTPDetail)},
		{name: "PROXY v1 header then a ClientHello on 993", send: notBelieved(refusedSilently("imaps", append(proxyV1, goHello...))),
			counts: failures("imaps", "not-tls"), log: dropped(plainHTTPDetail)},
		{name: "PROXY v2 header then a ClientHello on 443", send: notBelieved(refusedSilently("https", append(proxyV2, goHello...))),
			counts: failures("https", "not-tls"), log: dropped(notTLSDetail)},
		{name: "PROXY v2 header then a ClientHello on 465", send: notBelieved(refusedSilently("smtps", append(proxyV2, goHello...))),
			counts: failures("smtps", "not-tls"), log: dropped(notTLSDetail)},

		{name: "silent client", send: func(t *testing.T, env *catalogueEnv) { expectClosedSilently(t, env.dialRaw(t, "https")) },
			counts: failures("https", "timeout"), log: dropped(helloTimeoutDetail)},
		{name: "truncated ClientHello, then silence", send: refusedSilently("imaps", goHello[:100]),
			counts: failures("imaps", "timeout"), log: dropped(helloTimeoutDetail)},
		{name: "ClientHello dribbled a byte at a time", send: dribble(goHello),
			counts: failures("https", "timeout"), log: dropped(helloTimeoutDetail)},
		{name: "client closes mid-hello", send: func(t *testing.T, env *catalogueEnv) {
			c := env.send(t, "https", goHello[:len(goHello)/2])
			c.Close()
		}, counts: failures("https", "handshake"), log: dropped("the client closed before its ClientHello was complete")},

		{name: "TLS 1.2-only client on 993", send: goClientFails("imaps",
			&tls.Config{ServerName: reloadDomain, RootCAs: env.roots, MaxVersion: tls.VersionTLS12}, "protocol version not supported"),
			counts: failures("imaps", "handshake"), log: dropped("unsupported versions")},
		{name: "no common cipher suite", send: alerted("https", noCommonSuite.record(), alertHandshakeFailure),
			counts: failures("https", "handshake"), log: dropped("no cipher suite supported by both client and server")},
		{name: "no common group", send: alerted("imaps", noCommonGroup.record(), alertHandshakeFailure),
			counts: failures("imaps", "handshake"), log: dropped("no key exchanges supported by both client and server")},
		{name: "an extension twice", send: alerted("https", duplicateExtension.record(), alertDecodeError),
			counts: failures("https", "handshake"), log: dropped("tls: error decoding message")},
		{name: "unknown ALPN on 993", send: goClientFails("imaps", env.tlsConfig("h2"), "no application protocol"),
			counts: failures("imaps", "handshake"), log: dropped("unsupported application protocols")},
		{name: "unknown ALPN on 443", send: goClientFails("https", env.tlsConfig("xmpp-client"), "no application protocol"),
			counts: failures("https", "handshake"), log: dropped("unsupported application protocols")},
		{name: "client never sends its Finished", send: func(t *testing.T, env *catalogueEnv) {
			c := env.send(t, "https", goHello)
			expectServerHello(t, c)
			readToClose(t, c)
		}, counts: failures("https", "timeout"), log: dropped("i/o timeout")},
		{name: "garbage after a valid ClientHello", send: func(t *testing.T, env *catalogueEnv) {
			c := env.send(t, "imaps", append(append([]byte{}, goHello...), 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02))
			expectServerHello(t, c)
			readToClose(t, c)
		}, counts: failures("imaps", "handshake"), log: dropped("received record with version adbe")},
		{name: "client closes mid-handshake", send: func(t *testing.T, env *catalogueEnv) {
			c := env.send(t, "https", goHello)
			expectServerHello(t, c)
			c.(*net.TCPConn).CloseWrite()
			readToClose(t, c)
		}, counts: failures("https", "handshake"), log: dropped("EOF")},
	})
}

// dribble sends hello a byte every 20 ms, as a slowloris client does: the
// hello timeout must end it before the hello is whole, without a word.
func dribble(hello []byte) func(*testing.T, *catalogueEnv) {
	return func(t *testing.T, env *catalogueEnv) {
		if got, err := dribbleUntilClosed(env.dialRaw(t, "https"), hello, 20*time.Millisecond); err != nil || len(got) != 0 {
			t.Fatalf("the server sent %q, %v", got, err)
		}
	}
}

// dribbleUntilClosed writes data to c a byte each interval until the server
// closes c, and returns what the server sent. All of data going out first
// is an error: the server waited for it.
func dribbleUntilClosed(c net.Conn, data []byte, interval time.Duration) ([]byte, error) {
	closed := make(chan []byte, 1)
	go func() { closed <- readToCloseQuiet(c) }()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for sent := 0; ; sent++ {
		select {
		case got := <-closed:
			return got, nil
		case <-tick.C:
		}
		if sent == len(data) {
			return nil, fmt.Errorf("all %d bytes went out one at a time before the server closed", len(data))
		}
		if _, err := c.Write(data[sent : sent+1]); err != nil {
			return <-closed, nil // closed between two bytes
		}
	}
}

// readToCloseQuiet is readToClose for another goroutine: what came before
// the close, with a note after a read error that is no close.
func readToCloseQuiet(c net.Conn) []byte {
	var got []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if isClose(err) {
				return got
			}
			return append(got, "(read error: "+err.Error()+")"...)
		}
	}
}
