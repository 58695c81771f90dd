package edge

import (
	"encoding/binary"
	"errors"
)

// The first bytes of a connection, before any handshake slot is taken.
//
// A connection waits in the poller until the client's whole ClientHello has
// arrived (bounded by Limits.HelloTimeout), so a client that sends a few
// bytes and then nothing, or one byte a second, costs a parked socket and
// the bytes it sent, never a handshake slot. What cannot be the start of a
// TLS handshake is refused from its first bytes, before anything is
// buffered.

const (
	// maxClientHello is the largest ClientHello accepted, as crypto/tls's
	// limit for handshake messages (maxHandshake, common.go).
	maxClientHello = 1 << 16
	// helloInitialBuffer holds a typical ClientHello whole, a post-quantum
	// key share included, so that one read is usually enough.
	helloInitialBuffer = 2048
	// maxHelloBuffer is the most the records of one ClientHello may take:
	// the message and the headers of a few hundred records.
	maxHelloBuffer = maxClientHello + 4096
)

// helloVerdict is what the bytes so far say about a connection.
type helloVerdict uint8

const (
	helloIncomplete helloVerdict = iota // a plausible start: wait for more
	helloComplete                       // a whole ClientHello (and maybe more) is buffered
	helloNotTLS                         // not a TLS handshake record
	helloPlainHTTP                      // plaintext HTTP on a TLS port
	helloBad                            // TLS records, but not a valid start of a handshake
)

var (
	errNotTLS     = errors.New("not a TLS handshake")
	errPlainHTTP  = errors.New("plaintext HTTP request")
	errBadHello   = errors.New("not a valid ClientHello")
	errHelloLarge = errors.New("ClientHello too large")
)

// checkHello judges the bytes a client sent first. It looks at TLS records
// (RFC 8446 §5.1: type, legacy_record_version, length) and at the handshake
// message they carry (§4: type, length), across records, and reports
// complete once the whole ClientHello is there. It allocates nothing.
func checkHello(b []byte) (helloVerdict, error) {
	if len(b) == 0 {
		return helloIncomplete, nil
	}
	if b[0] != recordTypeHandshake {
		if looksLikeHTTP(b) {
			return helloPlainHTTP, errPlainHTTP
		}
		return helloNotTLS, errNotTLS
	}
	var hdr [4]byte // the handshake message's header: type, 24-bit length
	got := 0        // handshake bytes seen, header included
	for len(b) > 0 {
		if b[0] != recordTypeHandshake {
			// Only handshake records may carry the rest of a ClientHello
			// (RFC 8446 §5.1: no interleaving).
			return helloBad, errBadHello
		}
		if len(b) >= 2 && b[1] != 3 { // legacy_record_version 0x03xx, as crypto/tls checks
			return helloNotTLS, errNotTLS
		}
		if len(b) < recordHeaderLen {
			return helloIncomplete, nil
		}
		n := int(binary.BigEndian.Uint16(b[3:5]))
		if n == 0 || n > maxRecordPlaintext {
			return helloBad, errBadHello // §5.1: no empty handshake fragments, none over 2^14
		}
		frag := b[recordHeaderLen:min(len(b), recordHeaderLen+n)]
		if got < len(hdr) {
			copy(hdr[got:], frag)
		}
		got += len(frag)
		if got > 0 && hdr[0] != handshakeClientHello {
			return helloBad, errBadHello
		}
		if got >= len(hdr) {
			msgLen := len(hdr) + (int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]))
			if msgLen > maxClientHello {
				return helloBad, errHelloLarge
			}
			if got >= msgLen {
				return helloComplete, nil
			}
		}
		if len(b) < recordHeaderLen+n {
			return helloIncomplete, nil
		}
		b = b[recordHeaderLen+n:]
	}
	return helloIncomplete, nil
}

// looksLikeHTTP reports whether b may start an HTTP/1.x request line, whose
// method is a token of upper-case letters (RFC 9110 §9.1). A TLS record
// never starts with one.
func looksLikeHTTP(b []byte) bool { return b[0] >= 'A' && b[0] <= 'Z' }

// helloWanted is how much room the buffer needs for what the bytes so far
// announce: the current record whole, or a little more to learn its length.
func helloWanted(b []byte) int {
	for off := 0; ; {
		if len(b)-off < recordHeaderLen {
			return off + recordHeaderLen
		}
		end := off + recordHeaderLen + int(binary.BigEndian.Uint16(b[off+3:off+5]))
		if end > len(b) {
			return end
		}
		off = end
	}
}

// plainHTTPResponse answers a plaintext HTTP request on the HTTPS port, as
// nginx does (its error 497), and closes.
const plainHTTPResponse = "HTTP/1.1 400 Bad Request\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: 58\r\n" +
	"Connection: close\r\n" +
	"\r\n" +
	"400 Bad Request: plain HTTP was sent to an HTTPS port.\r\n\r\n"
