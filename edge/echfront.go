package edge

import (
	"crypto/hpke"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"slices"

	"chatmail-edge/ech"

	"golang.org/x/crypto/cryptobyte"
)

// Client-facing ECH decryption.
//
// crypto/tls decrypts ECH itself, but on every handshake it turns the raw
// private key of each EncryptedClientHelloKey into a key object again (a
// full X25519 scalar multiplication: crypto/ecdh computes the public key) and
// tries the keys in turn without looking at config_id. So the edge plays
// both roles of ECH's split mode (RFC 9849 §3.1) in one process: it opens the
// outer ClientHello itself, with keys parsed once, and hands crypto/tls the
// inner ClientHello, which crypto/tls answers as a backend server does
// (acceptance confirmed in ServerHello.random, §7.2; in a HelloRetryRequest,
// §7.2.1). Whatever it does not recognise, or cannot open, it passes on
// untouched: crypto/tls's own ECH handling, retry_configs included, stays the
// reference for every other case, and its full parse of the inner hello the
// only one that decides anything.

const (
	recordHeaderLen       = 5
	recordTypeCCS         = 20
	recordTypeHandshake   = 22
	handshakeClientHello  = 1
	extSupportedVersions  = 43     // RFC 8446 §4.2.1
	extECHOuterExtensions = 0xfd00 // RFC 9849 §5.1
	echClientHelloOuter   = 0      // ECHClientHelloType, RFC 9849 §5
	echClientHelloInner   = 1
)

// echFrontKey is one ECH key, parsed once.
type echFrontKey struct {
	configID uint8
	suites   []ech.CipherSuite
	priv     hpke.PrivateKey
	info     []byte // "tls ech" 0x00 ech.Config, the HPKE info (RFC 9849 §6.1)
	tlsKey   tls.EncryptedClientHelloKey
}

// echFrontKeys are the keys client-facing decryption tries, by config_id.
type echFrontKeys struct{ keys []echFrontKey }

// newECHFrontKeys parses keys as SetECHKeys gets them. A key it cannot use
// is left to crypto/tls, which still holds every key.
func newECHFrontKeys(keys []tls.EncryptedClientHelloKey) *echFrontKeys {
	fk := &echFrontKeys{}
	for _, k := range keys {
		cfg, err := ech.ParseConfig(k.Config)
		if err != nil {
			continue
		}
		kem, err := hpke.NewKEM(cfg.KEMID)
		if err != nil {
			continue
		}
		priv, err := kem.NewPrivateKey(k.PrivateKey)
		if err != nil {
			continue
		}
		info := append([]byte("tls ech\x00"), k.Config...)
		fk.keys = append(fk.keys, echFrontKey{configID: cfg.ConfigID, suites: cfg.Suites, priv: priv, info: info, tlsKey: k})
	}
	return fk
}

func (fk *echFrontKeys) find(configID uint8, suite ech.CipherSuite) *echFrontKey {
	for i := range fk.keys {
		if k := &fk.keys[i]; k.configID == configID && slices.Contains(k.suites, suite) {
			return k
		}
	}
	return nil
}

// matching are the keys that can open a hello made with configID and
// suite, for crypto/tls; usually none or one.
func (fk *echFrontKeys) matching(configID uint8, suite ech.CipherSuite) []tls.EncryptedClientHelloKey {
	var out []tls.EncryptedClientHelloKey
	for i := range fk.keys {
		if k := &fk.keys[i]; k.configID == configID && slices.Contains(k.suites, suite) {
			out = append(out, k.tlsKey)
		}
	}
	if out == nil {
		return noECHKeys
	}
	return out
}

// echFront sits in front of crypto/tls on a connection's read side during
// the handshake, until it has seen the client's ClientHello (or, after an
// accepted ECH and a HelloRetryRequest, both of them).
type echFront struct {
	keys     *echFrontKeys
	in       []byte          // read from the socket, not yet looked at
	out      []byte          // for crypto/tls
	ctx      *hpke.Recipient // of an accepted first ClientHello, for the second (RFC 9849 §6.1.5)
	suite    ech.CipherSuite
	configID uint8
	hellos   int
	passing  bool // done looking: what is left goes through as it is
	accepted bool // the first ClientHello was opened

	// What the first ClientHelloOuter asked for, whether it could be
	// opened or not (outerSeen: it had a well-formed outer extension).
	outerSeen     bool
	outerConfigID uint8
	outerSuite    ech.CipherSuite
}

// newECHFront starts with the bytes the client sent first (its whole
// ClientHello, read while it waited in the poller).
func newECHFront(keys *echFrontKeys, first []byte) *echFront {
	return &echFront{keys: keys, in: first}
}

// drained reports whether the front has nothing more to do or to give.
func (f *echFront) drained() bool {
	return f.passing && len(f.in) == 0 && len(f.out) == 0
}

// read fills p for crypto/tls, reading whole records from the socket
// through readMore while it still looks for ClientHellos.
func (f *echFront) read(p []byte, readMore func([]byte) (int, error)) (int, error) {
	for len(f.out) == 0 {
		if f.passing {
			if len(f.in) == 0 {
				return readMore(p)
			}
			f.out, f.in = f.in, nil
			break
		}
		if len(f.in) >= recordHeaderLen {
			n := int(binary.BigEndian.Uint16(f.in[3:5]))
			if n > maxRecordPlaintext+256 { // not a record we can hold: crypto/tls will say so
				f.passing = true
				continue
			}
			if len(f.in) >= recordHeaderLen+n {
				rec := f.in[:recordHeaderLen+n]
				f.out = f.take(rec)
				f.in = f.in[len(rec):]
				continue
			}
			if need := recordHeaderLen + n; cap(f.in) < need {
				f.in = append(make([]byte, 0, need), f.in...)
			}
		}
		if len(f.in) == cap(f.in) {
			f.in = slices.Grow(f.in, recordHeaderLen)
		}
		n, err := readMore(f.in[len(f.in):cap(f.in)])
		f.in = f.in[:len(f.in)+n]
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, f.out)
	f.out = f.out[n:]
	return n, nil
}

// take looks at one whole record and returns what crypto/tls gets for it,
// which may be rec itself: read only ever appends to f.in behind rec.
func (f *echFront) take(rec []byte) []byte {
	switch {
	case rec[0] == recordTypeHandshake && (f.hellos == 0 || f.ctx != nil && f.hellos == 1):
		f.hellos++
		inner, ok := f.openHello(rec[recordHeaderLen:], [2]byte(rec[1:3]))
		if f.hellos == 2 || !ok {
			f.passing = true
			f.ctx = nil
		}
		if !ok {
			return rec
		}
		return inner
	case rec[0] == recordTypeCCS && f.ctx != nil:
		// The compatibility change_cipher_spec between a HelloRetryRequest
		// and the second ClientHello (RFC 8446 §D.4).
		return rec
	}
	f.passing = true
	return rec
}

// openHello decrypts the ClientHelloOuter in msg (one whole handshake
// message) and returns the ClientHelloInner as records of version vers (the
// outer record's: crypto/tls checks it after the first hello), or false.
func (f *echFront) openHello(msg []byte, vers [2]byte) ([]byte, bool) {
	hello, ok := parseOuterHello(msg)
	if !ok || hello.ech == nil {
		return nil, false
	}
	ext := cryptobyte.String(hello.ech)
	var typ, configID uint8
	var suite ech.CipherSuite
	var enc, payload cryptobyte.String
	if !ext.ReadUint8(&typ) || typ != echClientHelloOuter ||
		!ext.ReadUint16(&suite.KDF) || !ext.ReadUint16(&suite.AEAD) || !ext.ReadUint8(&configID) ||
		!ext.ReadUint16LengthPrefixed(&enc) || !ext.ReadUint16LengthPrefixed(&payload) || !ext.Empty() || len(payload) == 0 {
		return nil, false
	}
	if f.hellos == 1 {
		f.outerSeen, f.outerConfigID, f.outerSuite = true, configID, suite
	}
	ctx := f.ctx
	if ctx == nil {
		k := f.keys.find(configID, suite)
		if k == nil {
			return nil, false
		}
		kdf, err := hpke.NewKDF(suite.KDF)
		if err != nil {
			return nil, false
		}
		aead, err := hpke.NewAEAD(suite.AEAD)
		if err != nil {
			return nil, false
		}
		if ctx, err = hpke.NewRecipient(enc, k.priv, kdf, aead, k.info); err != nil {
			return nil, false
		}
	} else if configID != f.configID || suite != f.suite || len(enc) != 0 {
		// The second ClientHello must use the first one's context, with an
		// empty enc (RFC 9849 §6.1.5).
		return nil, false
	}
	// ClientHelloOuterAAD is the outer ClientHello (without its handshake
	// header) with the payload, the extension's last field, zeroed (RFC 9849
	// §5.2).
	payloadEnd := hello.echAt + len(hello.ech) - 4
	aad := slices.Clone(msg[4:])
	clear(aad[payloadEnd-len(payload) : payloadEnd])
	encoded, err := ctx.Open(aad, payload)
	if err != nil {
		return nil, false
	}
	inner, ok := decodeInnerHello(encoded, hello)
	if !ok {
		return nil, false
	}
	if f.hellos == 1 {
		f.ctx, f.configID, f.suite, f.accepted = ctx, configID, suite, true
	}
	return appendHandshakeRecords(nil, vers, inner), true
}

var errInnerHello = errors.New("edge: invalid ClientHelloInner")

// outerHello is what openHello needs of a ClientHelloOuter.
type outerHello struct {
	sessionID []byte
	exts      []rawExtension
	ech       []byte // the encrypted_client_hello extension's data
	echAt     int    // where that data starts in the message
}

type rawExtension struct {
	typ  uint16
	data []byte // the whole extension: type, length and data
}

// parseOuterHello parses a ClientHello handshake message (RFC 8446 §4.1.2)
// as far as ECH needs it. Anything it does not like makes it give up: the
// hello then goes to crypto/tls unchanged, which judges it.
func parseOuterHello(msg []byte) (outerHello, bool) {
	var h outerHello
	s := cryptobyte.String(msg)
	var typ uint8
	var body, sessionID, suites, compression, exts cryptobyte.String
	if !s.ReadUint8(&typ) || typ != handshakeClientHello || !s.ReadUint24LengthPrefixed(&body) || !s.Empty() ||
		!body.Skip(2+32) || !body.ReadUint8LengthPrefixed(&sessionID) ||
		!body.ReadUint16LengthPrefixed(&suites) || !body.ReadUint8LengthPrefixed(&compression) ||
		!body.ReadUint16LengthPrefixed(&exts) || !body.Empty() {
		return h, false
	}
	h.sessionID = sessionID
	for !exts.Empty() {
		start := len(msg) - len(exts)
		var typ uint16
		var data cryptobyte.String
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
			return h, false
		}
		for _, e := range h.exts {
			if e.typ == typ { // RFC 8446 §4.2: no type twice
				return h, false
			}
		}
		h.exts = append(h.exts, rawExtension{typ: typ, data: msg[start : len(msg)-len(exts)]})
		if typ == extensionECH {
			h.ech, h.echAt = data, start+4
		}
	}
	return h, true
}

// decodeInnerHello rebuilds the ClientHelloInner handshake message from
// EncodedClientHelloInner (RFC 9849 §5.1): the outer legacy_session_id goes
// back in, ech_outer_extensions is replaced by the outer extensions it
// names, in order, and the padding must be zeros.
func decodeInnerHello(encoded []byte, outer outerHello) ([]byte, bool) {
	s := cryptobyte.String(encoded)
	var versionRandom []byte
	var sessionID, suites, compression, exts cryptobyte.String
	if !s.ReadBytes(&versionRandom, 2+32) || !s.ReadUint8LengthPrefixed(&sessionID) || len(sessionID) != 0 ||
		!s.ReadUint16LengthPrefixed(&suites) || !s.ReadUint8LengthPrefixed(&compression) ||
		!s.ReadUint16LengthPrefixed(&exts) {
		return nil, false
	}
	for _, b := range s {
		if b != 0 {
			return nil, false
		}
	}
	var b cryptobyte.Builder
	b.AddUint8(handshakeClientHello)
	var innerECH, tls13 bool
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddBytes(versionRandom)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(outer.sessionID) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(suites) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(compression) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			next := 0 // outer extensions are referenced in their order
			for !exts.Empty() {
				var typ uint16
				var data cryptobyte.String
				if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&data) {
					b.SetError(errInnerHello)
					return
				}
				switch typ {
				case extECHOuterExtensions:
					var types cryptobyte.String
					if !data.ReadUint8LengthPrefixed(&types) || !data.Empty() || types.Empty() {
						b.SetError(errInnerHello)
						return
					}
					for !types.Empty() {
						var ref uint16
						if !types.ReadUint16(&ref) || ref == extensionECH {
							b.SetError(errInnerHello)
							return
						}
						for next < len(outer.exts) && outer.exts[next].typ != ref {
							next++
						}
						if next == len(outer.exts) {
							b.SetError(errInnerHello)
							return
						}
						b.AddBytes(outer.exts[next].data)
						if ref == extSupportedVersions {
							tls13 = offersOnlyTLS13(outer.exts[next].data[4:])
						}
						next++
					}
					continue
				case extensionECH:
					innerECH = len(data) == 1 && data[0] == echClientHelloInner
				case extSupportedVersions:
					tls13 = offersOnlyTLS13(data)
				}
				b.AddUint16(typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(data) })
			}
		})
	})
	msg, err := b.Bytes()
	// The inner hello must say it is one, and offer TLS 1.3 and nothing
	// older (RFC 9849 §5, §7.1): else crypto/tls's own path rejects it.
	if err != nil || !innerECH || !tls13 {
		return nil, false
	}
	return msg, true
}

// offersOnlyTLS13 reads a ClientHello's supported_versions: TLS 1.3 is
// there and nothing below it (GREASE values aside, RFC 8701).
func offersOnlyTLS13(data []byte) bool {
	s := cryptobyte.String(data)
	var versions cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&versions) || !s.Empty() {
		return false
	}
	found := false
	for !versions.Empty() {
		var v uint16
		if !versions.ReadUint16(&v) {
			return false
		}
		switch {
		case v&0x0f0f == 0x0a0a && v&0xff == v>>8: // GREASE
		case v == tls.VersionTLS13:
			found = true
		case v < tls.VersionTLS13:
			return false
		}
	}
	return found
}

// appendHandshakeRecords frames a handshake message as plaintext records
// (RFC 8446 §5.1), fragmented if it is longer than a record may be.
func appendHandshakeRecords(out []byte, vers [2]byte, msg []byte) []byte {
	for len(msg) > 0 {
		n := min(len(msg), maxRecordPlaintext)
		out = append(out, recordTypeHandshake, vers[0], vers[1], byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}
