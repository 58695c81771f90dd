package ech

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the ECHConfig version of RFC 9849 §4 (the ECH extension's
// code point). Every implementation seen in the wild uses it.
const Version uint16 = 0xfe0d

// HPKE identifiers (RFC 9180 §7) used by the keys this package makes.
const (
	HPKEKEMX25519        uint16 = 0x0020 // DHKEM(X25519, HKDF-SHA256)
	HPKEKDFHKDFSHA256    uint16 = 0x0001
	HPKEAEADAES128GCM    uint16 = 0x0001
	HPKEAEADAES256GCM    uint16 = 0x0002
	HPKEAEADChaCha20Poly uint16 = 0x0003
)

// CipherSuite is one HpkeSymmetricCipherSuite of RFC 9849 §4.
type CipherSuite struct{ KDF, AEAD uint16 }

// Config is one ECHConfig of RFC 9849 §4, with the ECHConfigContents of
// version 0xfe0d unpacked.
type Config struct {
	Version    uint16 // 0xfe0d
	ConfigID   uint8
	KEMID      uint16
	PublicKey  []byte
	Suites     []CipherSuite
	MaxNameLen uint8
	PublicName string
	Extensions []byte // raw bytes of the extensions vector contents
}

// Marshal returns the ECHConfig in wire form, including its 2-byte version and
// 2-byte length: the form tls.EncryptedClientHelloKey.Config needs, and the
// bytes the HPKE info string is built from (RFC 9849 §6.1.1), so it must be
// reproduced byte for byte.
//
// It panics if a field does not fit its length prefix; configs returned by
// ParseConfig and GenerateKey always fit.
func (c *Config) Marshal() []byte {
	contents := []byte{c.ConfigID}
	contents = binary.BigEndian.AppendUint16(contents, c.KEMID)
	contents = appendVector16(contents, c.PublicKey)
	suites := make([]byte, 0, 4*len(c.Suites))
	for _, s := range c.Suites {
		suites = binary.BigEndian.AppendUint16(suites, s.KDF)
		suites = binary.BigEndian.AppendUint16(suites, s.AEAD)
	}
	contents = appendVector16(contents, suites)
	contents = append(contents, c.MaxNameLen)
	contents = appendVector8(contents, []byte(c.PublicName))
	contents = appendVector16(contents, c.Extensions)

	out := binary.BigEndian.AppendUint16(nil, c.Version)
	return appendVector16(out, contents)
}

// MarshalConfigList builds an ECHConfigList (RFC 9849 §4): a 2-byte length
// followed by the given marshalled ECHConfigs, unchanged and in order (clients
// use the first one they support, RFC 9849 §6.1).
//
// It panics if the list would exceed 65535 bytes.
func MarshalConfigList(configs ...[]byte) []byte {
	var all []byte
	for _, c := range configs {
		all = append(all, c...)
	}
	return appendVector16(nil, all)
}

// ParseConfig parses exactly one ECHConfig of version 0xfe0d, with no
// trailing bytes.
func ParseConfig(b []byte) (Config, error) {
	c, n, err := parseECHConfigAt(b)
	if err != nil {
		return Config{}, fmt.Errorf("parse Config: %w", err)
	}
	if c == nil {
		return Config{}, fmt.Errorf("parse Config: version 0x%04x, want 0x%04x", binary.BigEndian.Uint16(b), Version)
	}
	if n != len(b) {
		return Config{}, fmt.Errorf("parse Config: %d trailing bytes", len(b)-n)
	}
	return *c, nil
}

// ParseConfigList parses an ECHConfigList (RFC 9849 §4). Configs with a
// version other than 0xfe0d are skipped, as §4 asks of clients, but their
// length must still be within bounds; a list of only such configs gives no
// configs and no error. An empty list is an error: the vector is
// ECHConfig ECHConfigList<4..2^16-1>.
func ParseConfigList(b []byte) ([]Config, error) {
	r := wireReader{b: b}
	total := r.u16("list length")
	if r.err != nil {
		return nil, fmt.Errorf("parse ECHConfigList: %w", r.err)
	}
	if int(total) != len(r.b) {
		return nil, fmt.Errorf("parse ECHConfigList: length field says %d bytes, %d follow", total, len(r.b))
	}
	if total == 0 {
		return nil, errors.New("parse ECHConfigList: empty list")
	}
	var configs []Config
	for off := 2; off < len(b); {
		c, n, err := parseECHConfigAt(b[off:])
		if err != nil {
			return nil, fmt.Errorf("parse ECHConfigList: config at offset %d: %w", off, err)
		}
		if c != nil {
			configs = append(configs, *c)
		}
		off += n
	}
	return configs, nil
}

// parseECHConfigAt parses the ECHConfig at the start of b and returns how many
// bytes it took. For an unknown version it returns a nil config and the length
// to skip.
func parseECHConfigAt(b []byte) (*Config, int, error) {
	r := wireReader{b: b}
	version := r.u16("version")
	contents := r.vector16("contents")
	if r.err != nil {
		return nil, 0, r.err
	}
	n := 4 + len(contents)
	if version != Version {
		return nil, n, nil
	}
	c, err := parseECHConfigContents(contents)
	if err != nil {
		return nil, 0, err
	}
	c.Version = version
	return &c, n, nil
}

// parseECHConfigContents parses ECHConfigContents (RFC 9849 §4) strictly:
// every length must fit and no byte may be left over.
func parseECHConfigContents(contents []byte) (Config, error) {
	var c Config
	r := wireReader{b: contents}
	c.ConfigID = r.u8("config_id")
	c.KEMID = r.u16("kem_id")
	c.PublicKey = append([]byte(nil), r.vector16("public_key")...)
	suites := wireReader{b: r.vector16("cipher_suites")}
	c.MaxNameLen = r.u8("maximum_name_length")
	c.PublicName = string(r.vector8("public_name"))
	c.Extensions = append([]byte(nil), r.vector16("extensions")...)
	switch {
	case r.err != nil:
		return Config{}, r.err
	case len(r.b) != 0:
		return Config{}, fmt.Errorf("%d bytes left after extensions", len(r.b))
	case len(c.PublicKey) == 0:
		return Config{}, errors.New("public_key: empty") // opaque public_key<1..2^16-1>
	case len(suites.b) < 4 || len(suites.b)%4 != 0:
		// HpkeSymmetricCipherSuite cipher_suites<4..2^16-4>, 4 bytes each.
		return Config{}, fmt.Errorf("cipher_suites: %d bytes, want a positive multiple of 4", len(suites.b))
	case c.PublicName == "":
		return Config{}, errors.New("public_name: empty") // opaque public_name<1..255>
	}
	for len(suites.b) > 0 {
		c.Suites = append(c.Suites, CipherSuite{KDF: suites.u16("kdf_id"), AEAD: suites.u16("aead_id")})
	}
	// Extension extensions<0..2^16-1> (RFC 9849 §4.1), each a TLS Extension
	// (RFC 8446 §4.2): uint16 type, opaque data<0..2^16-1>.
	exts := wireReader{b: c.Extensions}
	for len(exts.b) > 0 && exts.err == nil {
		exts.u16("extension type")
		exts.vector16("extension data")
	}
	if exts.err != nil {
		return Config{}, fmt.Errorf("extensions: %w", exts.err)
	}
	return c, nil
}

// wireReader reads the big-endian integers and length-prefixed vectors of the
// TLS presentation language (RFC 8446 §3). The first short read sets err, and
// later reads return zero values, so a parser can check once at the end.
type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) read(field string, n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = fmt.Errorf("%s: need %d bytes, only %d left", field, n, len(r.b))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *wireReader) u8(field string) uint8 {
	if v := r.read(field, 1); v != nil {
		return v[0]
	}
	return 0
}

func (r *wireReader) u16(field string) uint16 {
	if v := r.read(field, 2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *wireReader) vector8(field string) []byte {
	n := r.u8(field + " length")
	return r.read(field, int(n))
}

func (r *wireReader) vector16(field string) []byte {
	n := r.u16(field + " length")
	return r.read(field, int(n))
}

func appendVector8(b, v []byte) []byte {
	if len(v) > 0xff {
		panic(fmt.Sprintf("edge: %d bytes do not fit a uint8 length prefix", len(v)))
	}
	return append(append(b, uint8(len(v))), v...)
}

func appendVector16(b, v []byte) []byte {
	if len(v) > 0xffff {
		panic(fmt.Sprintf("edge: %d bytes do not fit a uint16 length prefix", len(v)))
	}
	return append(binary.BigEndian.AppendUint16(b, uint16(len(v))), v...)
}
