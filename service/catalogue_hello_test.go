package service

import (
	"crypto/hpke"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"chatmail-edge/ech"

	"golang.org/x/crypto/cryptobyte"
)

// ClientHellos and records built by hand, for what a Go client never sends.

// TLS wire numbers (RFC 8446 §4, §5.1, §6; RFC 9849 §5).
const (
	recordAlert     = 21
	recordHandshake = 22
	recordAppData   = 23

	msgClientHello = 1
	msgServerHello = 2

	extServerName      = 0
	extGroups          = 10
	extSignatureAlgs   = 13
	extALPN            = 16
	extVersions        = 43
	extKeyShare        = 51
	extECH             = 0xfe0d
	extECHOuterExts    = 0xfd00
	echOuter, echInner = 0, 1

	alertHandshakeFailure = 40
	alertIllegalParameter = 47
	alertDecodeError      = 50
	alertProtocolVersion  = 70
	alertNoALPN           = 120
)

// keyShare is one KeyShareEntry (RFC 8446 §4.2.8).
type keyShare struct {
	group uint16
	key   []byte
}

// helloSpec is a ClientHello (RFC 8446 §4.1.2) to build; nil groups or
// shares leave their extension out.
type helloSpec struct {
	sessionID []byte
	suites    []uint16
	groups    []uint16
	shares    []keyShare
	versions  []uint16
	alpn      []string
	sni       string
	exts      [][]byte // more extensions, whole (type, length, data), after the others
}

// tls13Hello is a plain TLS 1.3 ClientHello for the relay's name.
func tls13Hello() helloSpec {
	return helloSpec{
		sessionID: randomBytes(32),
		suites:    []uint16{tls.TLS_AES_128_GCM_SHA256},
		groups:    []uint16{uint16(tls.X25519)},
		shares:    []keyShare{{uint16(tls.X25519), randomBytes(32)}},
		versions:  []uint16{tls.VersionTLS13},
		sni:       reloadDomain,
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// extension is one whole extension.
func extension(typ uint16, data func(*cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	b.AddUint16(typ)
	b.AddUint16LengthPrefixed(data)
	return b.BytesOrPanic()
}

// body is the ClientHello without its handshake header.
func (h helloSpec) body() []byte {
	var b cryptobyte.Builder
	b.AddUint16(tls.VersionTLS12) // legacy_version
	b.AddBytes(randomBytes(32))
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(h.sessionID) })
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, s := range h.suites {
			b.AddUint16(s)
		}
	})
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) }) // null compression
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		if h.sni != "" {
			b.AddBytes(extension(extServerName, func(b *cryptobyte.Builder) {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					b.AddUint8(0) // host_name
					b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(h.sni)) })
				})
			}))
		}
		if h.groups != nil {
			b.AddBytes(extension(extGroups, func(b *cryptobyte.Builder) {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					for _, g := range h.groups {
						b.AddUint16(g)
					}
				})
			}))
		}
		b.AddBytes(extension(extSignatureAlgs, func(b *cryptobyte.Builder) {
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
				for _, s := range []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256, tls.PSSWithSHA256, tls.Ed25519} {
					b.AddUint16(uint16(s))
				}
			})
		}))
		if len(h.alpn) > 0 {
			b.AddBytes(extension(extALPN, func(b *cryptobyte.Builder) {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					for _, p := range h.alpn {
						b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
					}
				})
			}))
		}
		b.AddBytes(extension(extVersions, func(b *cryptobyte.Builder) {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
				for _, v := range h.versions {
					b.AddUint16(v)
				}
			})
		}))
		if h.shares != nil {
			b.AddBytes(extension(extKeyShare, func(b *cryptobyte.Builder) {
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
					for _, s := range h.shares {
						b.AddUint16(s.group)
						b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s.key) })
					}
				})
			}))
		}
		for _, e := range h.exts {
			b.AddBytes(e)
		}
	})
	return b.BytesOrPanic()
}

// message is the ClientHello handshake message.
func (h helloSpec) message() []byte { return handshakeMessage(msgClientHello, h.body()) }

// record is the ClientHello in one handshake record.
func (h helloSpec) record() []byte { return handshakeRecord(h.message()) }

func handshakeMessage(typ uint8, body []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint8(typ)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(body) })
	return b.BytesOrPanic()
}

// handshakeRecord frames msg (at most 2^14 bytes) as one record.
func handshakeRecord(msg []byte) []byte {
	var b cryptobyte.Builder
	b.AddUint8(recordHandshake)
	b.AddUint16(tls.VersionTLS10) // legacy_record_version of a first ClientHello
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(msg) })
	return b.BytesOrPanic()
}

// echHello is an outer ClientHello (RFC 9849 §5) for the key set's current
// config, carrying inner, an EncodedClientHelloInner, sealed with HPKE as a
// client does (§6.1); seal may change the ciphertext before it is put in.
func echHello(t *testing.T, set *ech.KeySet, inner []byte, seal func(ciphertext []byte)) []byte {
	t.Helper()
	key := set.Current()
	cfg := key.Parsed()
	suite := cfg.Suites[0]
	kem, err := hpke.NewKEM(cfg.KEMID)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kem.NewPublicKey(cfg.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	kdf, _ := hpke.NewKDF(suite.KDF)
	aead, _ := hpke.NewAEAD(suite.AEAD)
	enc, sender, err := hpke.NewSender(pub, kdf, aead, append([]byte("tls ech\x00"), key.Config...))
	if err != nil {
		t.Fatal(err)
	}
	payloadLen := len(inner) + 16 // every AEAD of ECH has a 16-byte tag
	outer := tls13Hello()
	outer.exts = append(outer.exts, outerECH(suite.KDF, suite.AEAD, cfg.ConfigID, enc, make([]byte, payloadLen)))
	msg := outer.message()
	// The AAD is the outer hello with a zero payload (§5.2); the payload
	// is the last field of the last extension.
	ct, err := sender.Seal(msg[4:], inner)
	if err != nil {
		t.Fatal(err)
	}
	if seal != nil {
		seal(ct)
	}
	copy(msg[len(msg)-payloadLen:], ct)
	return handshakeRecord(msg)
}

// outerECH is an encrypted_client_hello extension of type outer.
func outerECH(kdf, aead uint16, configID uint8, enc, payload []byte) []byte {
	return extension(extECH, func(b *cryptobyte.Builder) {
		b.AddUint8(echOuter)
		b.AddUint16(kdf)
		b.AddUint16(aead)
		b.AddUint8(configID)
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(enc) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(payload) })
	})
}

// innerHello is the inner ClientHello of a good ECH client, for the
// relay's name with ALPN imap, as EncodedClientHelloInner (§5.1): no
// legacy_session_id, extensions written out, zero padding.
func innerHello() helloSpec {
	h := tls13Hello()
	h.sessionID = nil
	h.alpn = []string{"imap"}
	h.exts = [][]byte{innerECHExt()}
	return h
}

func innerECHExt() []byte {
	return extension(extECH, func(b *cryptobyte.Builder) { b.AddUint8(echInner) })
}

// encoded is h as EncodedClientHelloInner with padding bytes after it.
func (h helloSpec) encoded(padding []byte) []byte { return append(h.body(), padding...) }

// outerExtensions is an ech_outer_extensions extension naming types.
func outerExtensions(types ...uint16) []byte {
	return extension(extECHOuterExts, func(b *cryptobyte.Builder) {
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, typ := range types {
				b.AddUint16(typ)
			}
		})
	})
}

// goClientHello is the first record a Go TLS client with cfg sends,
// captured from a pipe.
func goClientHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	cc, sc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	go tls.Client(cc, cfg).Handshake() // ends when the pipe closes
	sc.SetReadDeadline(time.Now().Add(10 * time.Second))
	rec, err := readRecord(sc)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// readRecord reads one whole TLS record, header included.
func readRecord(r io.Reader) ([]byte, error) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, err
	}
	rec := make([]byte, 5+int(hdr[3])<<8|int(hdr[4]))
	copy(rec, hdr)
	_, err := io.ReadFull(r, rec[5:])
	return rec, err
}

// expectAlert: the server's first record is a fatal alert desc (sent in
// plaintext: before its ServerHello), and then it closes.
func expectAlert(t *testing.T, c net.Conn, desc byte) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	rec, err := readRecord(c)
	if err != nil {
		t.Fatalf("no alert: %v", err)
	}
	if rec[0] != recordAlert || len(rec) != 7 || rec[5] != 2 || rec[6] != desc {
		t.Fatalf("got the record %x, want a fatal alert %d", rec[:min(len(rec), 16)], desc)
	}
	readToClose(t, c)
}

// expectServerHello: the server answers with its ServerHello, the
// handshake goes on.
func expectServerHello(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	rec, err := readRecord(c)
	if err != nil {
		t.Fatalf("no ServerHello: %v", err)
	}
	if rec[0] != recordHandshake || rec[5] != msgServerHello {
		t.Fatalf("got the record %x, want a ServerHello", rec[:min(len(rec), 16)])
	}
}
