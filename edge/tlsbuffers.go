package edge

import (
	"bytes"
	"crypto/tls"
	"reflect"
	"sync"
	"unsafe"
)

// Idle connections and crypto/tls's input buffers.
//
// A tls.Conn keeps the buffer it read its largest record into (rawInput, a
// bytes.Buffer that only grows: about 22 KiB after one full 16 KiB record),
// the reader over the last record (input, which keeps that array alive) and
// the handshake buffer (hand), for as long as the connection lives. For a
// relay's 10,000 idle IMAP connections that is the largest cost of all, and
// crypto/tls has no way to give it back.
//
// trimTLSBuffers drops those buffers while the connection is parked and they
// hold nothing. The fields are found by name and type once, through
// reflection; if crypto/tls ever changes them, tlsBufferLayout.ok is false
// and trimming is simply off: correct, only bigger
// (TestParkedSessionReleasesTLSBuffers fails then, so the change is seen). The trim holds the connection's input
// lock (tls.Conn.in is a halfConn that embeds a sync.Mutex), the same lock
// Read takes, so it is ordered with every read. Config.NoTLSBufferTrim
// turns it off.
//
// Why it exists, and what would delete it: a session that has moved one full
// record keeps ~22 KiB in crypto/tls for its whole life, twice what an idle
// proxied connection costs the edge otherwise (docs/BENCHMARKS.md, RSS per
// idle connection after traffic); with it, the edge's idle connection
// stays at a quarter of nginx termination's. A crypto/tls that gave back
// rawInput once a Read has emptied it (or a method to release an idle
// connection's buffers) would make this file unneeded.
var tlsBufferLayout = findTLSBufferLayout()

type tlsBufferOffsets struct {
	ok                        bool
	in, rawInput, input, hand uintptr
}

func findTLSBufferLayout() tlsBufferOffsets {
	t := reflect.TypeFor[tls.Conn]()
	field := func(name string, want reflect.Type) (uintptr, bool) {
		f, ok := t.FieldByName(name)
		return f.Offset, ok && (want == nil || f.Type == want)
	}
	var o tlsBufferOffsets
	var okIn, okRaw, okInput, okHand bool
	o.in, okIn = field("in", nil)
	o.rawInput, okRaw = field("rawInput", reflect.TypeFor[bytes.Buffer]())
	o.input, okInput = field("input", reflect.TypeFor[bytes.Reader]())
	o.hand, okHand = field("hand", reflect.TypeFor[bytes.Buffer]())
	if f, ok := t.FieldByName("in"); ok {
		// The lock must be the halfConn's first, embedded field.
		ht := f.Type
		okIn = okIn && ht.Kind() == reflect.Struct && ht.NumField() > 0 &&
			ht.Field(0).Anonymous && ht.Field(0).Type == reflect.TypeFor[sync.Mutex]() && ht.Field(0).Offset == 0
	}
	o.ok = okIn && okRaw && okInput && okHand
	return o
}

// keepTLSInput is the capacity below which rawInput is kept: small buffers
// are cheap and chatty connections (IDLE notifications) would otherwise
// reallocate one for every message.
const keepTLSInput = 4 << 10

// trimTLSBuffers releases c's empty input buffers. It must only be called
// by the goroutine that reads c, between reads.
func trimTLSBuffers(c *tls.Conn) {
	o := &tlsBufferLayout
	if !o.ok {
		return
	}
	p := unsafe.Pointer(c)
	mu := (*sync.Mutex)(unsafe.Add(p, o.in))
	mu.Lock()
	defer mu.Unlock()
	raw := (*bytes.Buffer)(unsafe.Add(p, o.rawInput))
	input := (*bytes.Reader)(unsafe.Add(p, o.input))
	hand := (*bytes.Buffer)(unsafe.Add(p, o.hand))
	if input.Len() != 0 {
		return // unread plaintext (never the case with full-record reads)
	}
	input.Reset(nil)
	if raw.Len() == 0 && raw.Cap() > keepTLSInput {
		*raw = bytes.Buffer{}
	}
	if hand.Len() == 0 && hand.Cap() > 0 {
		*hand = bytes.Buffer{}
	}
}

// tlsHasBuffered reports whether c holds bytes it read from the socket but
// has not handed out yet: after a handshake, the peer's first data can sit
// there with nothing left in the socket to announce it. Without the layout it
// answers true, so that callers read instead of waiting.
func tlsHasBuffered(c *tls.Conn) bool {
	o := &tlsBufferLayout
	if !o.ok {
		return true
	}
	p := unsafe.Pointer(c)
	mu := (*sync.Mutex)(unsafe.Add(p, o.in))
	mu.Lock()
	defer mu.Unlock()
	return (*bytes.Buffer)(unsafe.Add(p, o.rawInput)).Len() > 0 || (*bytes.Reader)(unsafe.Add(p, o.input)).Len() > 0
}
