package edge

import (
	"bytes"
	"crypto/tls"
	"testing"
)

// helloMessage is the ClientHello handshake message of a Go client's first
// flight (without the record header).
func helloMessage(t testing.TB, cfg *tls.Config) []byte {
	rec := clientHelloBytes(t, cfg)
	return rec[recordHeaderLen:]
}

// FuzzCheckHello: the pre-handshake judge never panics, calls complete only
// what holds a whole ClientHello in handshake records, and the prefix of a
// complete hello is never judged bad.
func FuzzCheckHello(f *testing.F) {
	hello := clientHelloBytes(f, &tls.Config{ServerName: "chat.example", NextProtos: []string{"imap"}})
	f.Add(hello)
	f.Add(hello[:7])
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := checkHello(b)
		if (err == nil) != (v == helloIncomplete || v == helloComplete) {
			t.Fatalf("verdict %v with error %v", v, err)
		}
		if v == helloComplete {
			// Reassemble the handshake bytes and read the message length.
			var hs []byte
			for rest := b; len(rest) >= recordHeaderLen; {
				n := int(rest[3])<<8 | int(rest[4])
				if rest[0] != recordTypeHandshake || len(rest) < recordHeaderLen+n {
					hs = append(hs, rest[recordHeaderLen:min(len(rest), recordHeaderLen+n)]...)
					break
				}
				hs = append(hs, rest[recordHeaderLen:recordHeaderLen+n]...)
				rest = rest[recordHeaderLen+n:]
			}
			if len(hs) < 4 || hs[0] != handshakeClientHello || len(hs) < 4+(int(hs[1])<<16|int(hs[2])<<8|int(hs[3])) {
				t.Fatalf("complete, but no whole ClientHello in %x", b)
			}
		}
		// Bytes that may start a hello only ever had prefixes that may too;
		// a prefix of an incomplete start is incomplete.
		if v == helloComplete || v == helloIncomplete {
			for i := range b {
				pv, _ := checkHello(b[:i])
				if pv != helloIncomplete && (v == helloIncomplete || pv != helloComplete) {
					t.Fatalf("a prefix of %d bytes judged %v, the whole %v", i, pv, v)
				}
			}
		}
	})
}

// FuzzParseOuterHello: the ECH front's ClientHello parser never panics,
// and what it returns points into the message it was given: every
// extension's bytes, and the ECH payload where it says.
func FuzzParseOuterHello(f *testing.F) {
	set := testKeySet(f, 4)
	f.Add(helloMessage(f, frontClientConfig(set.ConfigList())))
	f.Add(helloMessage(f, &tls.Config{ServerName: "x"}))
	f.Add(malformedECHHello()[recordHeaderLen:])
	f.Fuzz(func(t *testing.T, msg []byte) {
		h, ok := parseOuterHello(msg)
		if !ok {
			return
		}
		seen := map[uint16]bool{}
		for _, e := range h.exts {
			if seen[e.typ] {
				t.Fatalf("extension %d twice", e.typ)
			}
			seen[e.typ] = true
			if !bytes.Contains(msg, e.data) || len(e.data) < 4 || int(e.data[0])<<8|int(e.data[1]) != int(e.typ) {
				t.Fatalf("extension %d data %x not a whole extension of the message", e.typ, e.data)
			}
		}
		if h.ech != nil && !bytes.Equal(msg[h.echAt:h.echAt+len(h.ech)], h.ech) {
			t.Fatal("the ECH extension is not where the parser says")
		}
	})
}

// FuzzDecodeInnerHello: rebuilding the ClientHelloInner from a decrypted
// EncodedClientHelloInner (RFC 9849 §5.1), past the AEAD, never panics, and
// what it rebuilds is a ClientHello that crypto/tls's rules accept as an
// inner one: parseable, no ech_outer_extensions left, the outer session id,
// each outer extension it took over byte for byte.
func FuzzDecodeInnerHello(f *testing.F) {
	set := testKeySet(f, 4)
	outerMsg := helloMessage(f, frontClientConfig(set.ConfigList()))
	outer, ok := parseOuterHello(outerMsg)
	if !ok {
		f.Fatal("the seed outer hello does not parse")
	}
	if _, ok := decodeInnerHello(encodedInnerHello([]uint16{10, 13}, true), outer); !ok {
		f.Fatal("the first seed does not decode: the fuzzer would not start past the rebuild")
	}
	f.Add(encodedInnerHello([]uint16{10, 13}, true), outerMsg)
	f.Add(encodedInnerHello(nil, true), outerMsg)
	f.Add(encodedInnerHello([]uint16{13, 10}, true), outerMsg) // out of order
	f.Add(encodedInnerHello([]uint16{extensionECH}, true), outerMsg)
	f.Add(encodedInnerHello(nil, false), outerMsg)
	f.Fuzz(func(t *testing.T, encoded, outerMsg []byte) {
		outer, ok := parseOuterHello(outerMsg)
		if !ok {
			return
		}
		inner, ok := decodeInnerHello(encoded, outer)
		if !ok {
			return
		}
		h, ok := parseOuterHello(inner)
		if !ok {
			t.Fatalf("the rebuilt inner hello does not parse: %x", inner)
		}
		if !bytes.Equal(h.sessionID, outer.sessionID) {
			t.Fatal("the inner hello lost the outer session id")
		}
		for _, e := range h.exts {
			if e.typ == extECHOuterExtensions {
				t.Fatal("ech_outer_extensions left in the inner hello")
			}
			if e.typ == extensionECH && !bytes.Equal(e.data[4:], []byte{echClientHelloInner}) {
				t.Fatal("the inner hello's ECH extension is not the inner marker")
			}
		}
	})
}

// encodedInnerHello builds an EncodedClientHelloInner with
// supported_versions TLS 1.3, the inner ECH marker (if inner), and
// ech_outer_extensions naming refs.
func encodedInnerHello(refs []uint16, inner bool) []byte {
	exts := [][]byte{ext(extSupportedVersions, []byte{2, 0x03, 0x04})}
	if inner {
		exts = append(exts, ext(extensionECH, []byte{echClientHelloInner}))
	}
	if len(refs) > 0 {
		list := []byte{byte(2 * len(refs))}
		for _, r := range refs {
			list = append(list, byte(r>>8), byte(r))
		}
		exts = append(exts, ext(extECHOuterExtensions, list))
	}
	return encodedInner(exts, make([]byte, 7))
}
