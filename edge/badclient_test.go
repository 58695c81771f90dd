package edge

import (
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
)

// malformedECHHello is a TLS 1.3 ClientHello whose encrypted_client_hello
// extension is an outer ECH (RFC 9849 §5) cut short after its type byte.
func malformedECHHello() []byte {
	return helloWithECHExt(func(b *cryptobyte.Builder) { b.AddUint8(0) }) // outer, then nothing
}

// helloWithECHExt is a TLS 1.3 ClientHello record whose last extension is
// an encrypted_client_hello with the body ech writes.
func helloWithECHExt(ech func(*cryptobyte.Builder)) []byte {
	var hello cryptobyte.Builder
	hello.AddUint16(tls.VersionTLS12) // legacy_version
	random := make([]byte, 32)
	rand.Read(random)
	hello.AddBytes(random)
	hello.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(random) }) // legacy_session_id
	hello.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(tls.TLS_AES_128_GCM_SHA256) })
	hello.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) }) // null compression
	hello.AddUint16LengthPrefixed(func(exts *cryptobyte.Builder) {
		ext := func(typ uint16, body func(*cryptobyte.Builder)) {
			exts.AddUint16(typ)
			exts.AddUint16LengthPrefixed(body)
		}
		ext(43, func(b *cryptobyte.Builder) { // supported_versions
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(tls.VersionTLS13) })
		})
		ext(10, func(b *cryptobyte.Builder) { // supported_groups
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(uint16(tls.X25519)) })
		})
		ext(13, func(b *cryptobyte.Builder) { // signature_algorithms
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(uint16(tls.ECDSAWithP256AndSHA256)) })
		})
		ext(51, func(b *cryptobyte.Builder) { // key_share
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				b.AddUint16(uint16(tls.X25519))
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(random) })
			})
		})
		ext(extensionECH, ech)
	})
	body := hello.BytesOrPanic()

	var rec cryptobyte.Builder
	rec.AddUint8(22) // handshake record
	rec.AddUint16(tls.VersionTLS10)
	rec.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint8(1) // client_hello
		b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(body) })
	})
	return rec.BytesOrPanic()
}

// TestBadClientsAreDroppedAndCounted sends each kind of bad client, checks
// it is closed within the hello timeout and counted, and that a good
// client is served right after.
func TestBadClientsAreDroppedAndCounted(t *testing.T) {
	const hsTimeout = 300 * time.Millisecond // the hello timeout; good clients get 10s
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.HelloTimeout = hsTimeout; c.HandshakeTimeout = 10 * time.Second })
	raw := func(t *testing.T, payload []byte) net.Conn {
		c, err := net.Dial("tcp", te.addr("imaps"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if payload != nil {
			c.Write(payload)
		}
		return c
	}
	cases := []struct {
		name   string
		run    func(t *testing.T)
		reason string
	}{
		{"garbage", func(t *testing.T) {
			expectClosed(t, raw(t, []byte("GET / HTTP/1.0\r\n\r\n")), hsTimeout+5*time.Second)
		}, "not-tls"},
		{"tls12-only", func(t *testing.T) {
			_, err := tls.Dial("tcp", te.addr("imaps"), &tls.Config{RootCAs: te.roots, ServerName: "chat.example", MaxVersion: tls.VersionTLS12})
			if err == nil || !strings.Contains(err.Error(), "protocol version") {
				t.Fatalf("TLS 1.2 client: %v", err)
			}
		}, "handshake"},
		{"malformed-ech", func(t *testing.T) {
			c := raw(t, malformedECHHello())
			c.SetReadDeadline(time.Now().Add(hsTimeout + 5*time.Second))
			alert := make([]byte, 7)
			if _, err := io.ReadFull(c, alert); err != nil {
				t.Fatalf("no alert for a malformed ECH extension: %v", err)
			}
			// Record type alert (21), level fatal (2), decode_error (50).
			if alert[0] != 21 || alert[5] != 2 || alert[6] != 50 {
				t.Fatalf("got %x, want a fatal decode_error alert", alert)
			}
			expectClosed(t, c, hsTimeout+5*time.Second)
		}, "handshake"},
		{"silent", func(t *testing.T) {
			expectClosed(t, raw(t, nil), hsTimeout+5*time.Second)
		}, "timeout"},
		{"stalls-mid-hello", func(t *testing.T) {
			expectClosed(t, raw(t, malformedECHHello()[:20]), hsTimeout+5*time.Second)
		}, "timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := te.Snapshot().Listeners[1].Failures[c.reason]
			c.run(t)
			waitFor(t, 5*time.Second, c.reason+" counted", func() bool {
				return te.Snapshot().Listeners[1].Failures[c.reason] == before+1
			})
			good, err := te.dial(t, "imaps", nil, nil)
			if err != nil {
				t.Fatalf("good client after %s: %v", c.name, err)
			}
			if got := readLine(t, good); !strings.HasPrefix(got, "* OK") {
				t.Fatalf("good client after %s got %q", c.name, got)
			}
			good.Close()
		})
	}
	waitFor(t, 5*time.Second, "nothing pending", func() bool { return te.Snapshot().Pending == 0 })
}

func TestConnectionLimit(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, func(c *Config) { c.MaxConnections = 2 })
	var open []net.Conn
	for range 2 {
		c, err := te.dial(t, "imaps", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		readLine(t, c)
		open = append(open, c)
	}
	if _, err := te.dial(t, "imaps", nil, nil); err == nil {
		t.Fatal("third connection accepted over a limit of 2")
	}
	if got := te.Snapshot().Listeners[1].Failures["overload"]; got != 1 {
		t.Fatalf("overload count %d, want 1", got)
	}
	open[0].Close()
	waitFor(t, 5*time.Second, "a slot to free up", func() bool { return te.Snapshot().ActiveSessions == 1 })
	c, err := te.dial(t, "imaps", nil, nil)
	if err != nil {
		t.Fatalf("connection after one closed: %v", err)
	}
	c.Close()
}

// TestHandshakeBacklog counts a client whose hello is whole and whose
// handshake has not finished, and stops counting it once it is gone; a
// client still sending its hello is not in the backlog but waits for it.
func TestHandshakeBacklog(t *testing.T) {
	te := startEdge(t, nil, Backends{})
	if n := te.HandshakeBacklog(); n != 0 {
		t.Fatalf("backlog %d before any client", n)
	}
	half, err := net.Dial("tcp", te.addr("https"))
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	hello := malformedECHHello()
	if _, err := half.Write(hello[:len(hello)/2]); err != nil { // the rest never comes
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the half hello waiting", func() bool { return te.Snapshot().WaitingForHello == 1 })

	// A whole hello whose client never sends its Finished.
	stalled := sendRawHello(t, te.addr("https"), clientHelloBytes(t, &tls.Config{ServerName: "chat.example"}))
	waitFor(t, 5*time.Second, "the stalled handshake in the backlog", func() bool { return te.HandshakeBacklog() == 1 })
	if n := te.Snapshot().WaitingForHello; n != 1 {
		t.Fatalf("%d waiting for their hello, want 1", n)
	}
	stalled.Close()
	waitFor(t, 5*time.Second, "an empty backlog", func() bool { return te.HandshakeBacklog() == 0 })
}
