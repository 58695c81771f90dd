package ech

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// handBuiltECHConfigList is an ECHConfigList written out field by field from
// RFC 9849 §4, independently of the code under test.
var handBuiltECHConfigList = []byte{
	0x00, 0x4d, // ECHConfigList length: 77 bytes follow
	0xfe, 0x0d, // Config.version
	0x00, 0x49, // Config.length: 73 bytes of contents
	0x2a,       // config_id 42
	0x00, 0x20, // kem_id DHKEM(X25519, HKDF-SHA256)
	0x00, 0x20, // public_key length 32
	0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10,
	0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20,
	0x00, 0x08, // cipher_suites length: 2 suites of 4 bytes
	0x00, 0x01, 0x00, 0x01, // HKDF-SHA256, AES-128-GCM
	0x00, 0x01, 0x00, 0x03, // HKDF-SHA256, ChaCha20-Poly1305
	0x40, // maximum_name_length 64
	0x10, // public_name length 16
	'c', 'h', 'a', 't', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'o', 'r', 'g',
	0x00, 0x06, // extensions length 6
	0x00, 0x2b, 0x00, 0x02, 0xab, 0xcd, // one extension: type 0x002b, 2 bytes of data
}

func handBuiltECHConfig() Config {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	return Config{
		Version:    0xfe0d,
		ConfigID:   42,
		KEMID:      0x0020,
		PublicKey:  key,
		Suites:     []CipherSuite{{KDF: 1, AEAD: 1}, {KDF: 1, AEAD: 3}},
		MaxNameLen: 64,
		PublicName: "chat.example.org",
		Extensions: []byte{0x00, 0x2b, 0x00, 0x02, 0xab, 0xcd},
	}
}

func TestECHConfigHandBuiltVector(t *testing.T) {
	want := handBuiltECHConfig()

	configs, err := ParseConfigList(handBuiltECHConfigList)
	if err != nil {
		t.Fatalf("ParseConfigList: %v", err)
	}
	if len(configs) != 1 || !reflect.DeepEqual(configs[0], want) {
		t.Fatalf("ParseConfigList = %+v, want [%+v]", configs, want)
	}
	one, err := ParseConfig(handBuiltECHConfigList[2:])
	if err != nil || !reflect.DeepEqual(one, want) {
		t.Fatalf("ParseConfig = %+v, %v; want %+v", one, err, want)
	}

	if got := want.Marshal(); !bytes.Equal(got, handBuiltECHConfigList[2:]) {
		t.Errorf("Marshal =\n%x\nwant\n%x", got, handBuiltECHConfigList[2:])
	}
	if got := MarshalConfigList(want.Marshal()); !bytes.Equal(got, handBuiltECHConfigList) {
		t.Errorf("MarshalConfigList =\n%x\nwant\n%x", got, handBuiltECHConfigList)
	}
}

func TestECHConfigRoundTripOfGeneratedKey(t *testing.T) {
	k := testECHKey(t, 7, testEpoch)
	c, err := ParseConfig(k.Config)
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if !bytes.Equal(c.Marshal(), k.Config) {
		t.Errorf("Marshal(Parse(config)) differs:\n%x\n%x", c.Marshal(), k.Config)
	}
	// Two configs in one list keep their order and bytes.
	other := testECHKey(t, 8, testEpoch)
	list := MarshalConfigList(k.Config, other.Config)
	configs, err := ParseConfigList(list)
	if err != nil {
		t.Fatalf("ParseConfigList: %v", err)
	}
	if len(configs) != 2 || configs[0].ConfigID != 7 || configs[1].ConfigID != 8 {
		t.Fatalf("ParseConfigList gave %d configs %+v", len(configs), configs)
	}
	if got := MarshalConfigList(configs[0].Marshal(), configs[1].Marshal()); !bytes.Equal(got, list) {
		t.Errorf("re-marshalled list differs")
	}
}

func TestParseECHConfigListSkipsUnknownVersions(t *testing.T) {
	unknown := []byte{0xfe, 0x0c, 0x00, 0x03, 0xff, 0xff, 0xff} // draft version, 3 opaque bytes
	list := MarshalConfigList(unknown, handBuiltECHConfigList[2:], unknown)
	configs, err := ParseConfigList(list)
	if err != nil {
		t.Fatalf("ParseConfigList: %v", err)
	}
	if len(configs) != 1 || configs[0].ConfigID != 42 {
		t.Fatalf("got %+v, want only config 42", configs)
	}

	if _, err := ParseConfig(unknown); err == nil || !strings.Contains(err.Error(), "version 0xfe0c") {
		t.Errorf("ParseConfig(unknown version) error = %v, want one naming the version", err)
	}
	truncatedUnknown := MarshalConfigList([]byte{0xfe, 0x0c, 0x00, 0x09, 0xff})
	if _, err := ParseConfigList(truncatedUnknown); err == nil {
		t.Errorf("an unknown-version config running past the list was accepted")
	}
}

func TestParseECHConfigListRejectsMalformed(t *testing.T) {
	withConfig := func(edit func(c *Config)) []byte {
		c := handBuiltECHConfig()
		edit(&c)
		return MarshalConfigList(c.Marshal())
	}
	withByte := func(i int, v byte) []byte {
		b := bytes.Clone(handBuiltECHConfigList)
		b[i] = v
		return b
	}
	// listOf wraps raw ECHConfigContents in a config and a list with correct
	// lengths, to reach the checks inside the contents.
	listOf := func(contents []byte) []byte {
		return MarshalConfigList(appendVector16([]byte{0xfe, 0x0d}, contents))
	}
	contents := handBuiltECHConfigList[6:]
	const suitesAt = 1 + 2 + 2 + 32 // config_id, kem_id, public_key
	suitesOf6 := slices.Concat(contents[:suitesAt], []byte{0x00, 0x06, 0, 1, 0, 1, 0, 1}, contents[suitesAt+2+8:])
	tests := []struct {
		name, wantErr string
		list          []byte
	}{
		{"nothing", "list length", nil},
		{"one byte", "list length", []byte{0x00}},
		{"empty list", "empty list", []byte{0x00, 0x00}},
		{"list length too big", "length field says 78 bytes, 77 follow", withByte(1, 0x4e)},
		{"list length too small", "length field says 76 bytes, 77 follow", withByte(1, 0x4c)},
		{"trailing byte after list", "length field says 77 bytes, 78 follow", append(bytes.Clone(handBuiltECHConfigList), 0)},
		{"truncated config header", "config at offset 2: version", MarshalConfigList([]byte{0xfe})},
		{"config length past end", "contents: need 74 bytes, only 73 left", withByte(5, 0x4a)},
		{"byte after extensions", "1 bytes left after extensions", listOf(append(bytes.Clone(contents), 0))},
		{"short contents", "public_key: need 32 bytes", withByte(5, 0x10)},
		{"empty public key", "public_key: empty", withConfig(func(c *Config) { c.PublicKey = nil })},
		{"no cipher suites", "cipher_suites: 0 bytes", withConfig(func(c *Config) { c.Suites = nil })},
		{"cipher suites of 6 bytes", "cipher_suites: 6 bytes", listOf(suitesOf6)},
		{"empty public name", "public_name: empty", withConfig(func(c *Config) { c.PublicName = "" })},
		{"truncated extension", "extensions: extension data", withConfig(func(c *Config) { c.Extensions = []byte{0, 1, 0, 5, 0} })},
		{"half extension type", "extensions: extension type", withConfig(func(c *Config) { c.Extensions = []byte{0} })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			configs, err := ParseConfigList(tt.list)
			if err == nil {
				t.Fatalf("accepted %x as %+v", tt.list, configs)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "parse ECHConfigList: ") {
				t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseECHConfigRejectsTrailingBytes(t *testing.T) {
	_, err := ParseConfig(append(bytes.Clone(handBuiltECHConfigList[2:]), 0, 0))
	if err == nil || !strings.Contains(err.Error(), "2 trailing bytes") {
		t.Errorf("error = %v, want 2 trailing bytes", err)
	}
	// A list is not a config: this is the mistake that breaks every ECH
	// handshake in crypto/tls (ech-facts §1.1).
	if _, err := ParseConfig(handBuiltECHConfigList); err == nil {
		t.Errorf("ParseConfig accepted an ECHConfigList")
	}
}

func TestECHConfigMarshalPanicsOnOversizedName(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Errorf("Marshal of a 256-byte public_name did not panic")
		}
	}()
	c := handBuiltECHConfig()
	c.PublicName = strings.Repeat("a", 256)
	c.Marshal()
}

// FuzzParseECHConfigList checks that parsing never panics and that whatever
// parses, when it has no skipped versions, marshals back to the same bytes.
func FuzzParseECHConfigList(f *testing.F) {
	f.Add(handBuiltECHConfigList)
	f.Add(MarshalConfigList([]byte{0xfe, 0x0c, 0x00, 0x01, 0x00}, handBuiltECHConfigList[2:]))
	f.Add(MarshalConfigList(handBuiltECHConfigList[2:], handBuiltECHConfigList[2:]))
	f.Add([]byte{0x00, 0x04, 0xfe, 0x0d, 0x00, 0x00})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		configs, err := ParseConfigList(b)
		if err != nil {
			return
		}
		if !allVersionsAre(b, Version) {
			return
		}
		var marshalled [][]byte
		for _, c := range configs {
			if c.Version != Version {
				t.Fatalf("parsed config has version 0x%04x", c.Version)
			}
			marshalled = append(marshalled, c.Marshal())
		}
		if got := MarshalConfigList(marshalled...); !bytes.Equal(got, b) {
			t.Fatalf("re-marshalled list differs:\n in %x\nout %x", b, got)
		}
	})
}

// allVersionsAre walks a list that parsed and reports whether every config
// header carries version v.
func allVersionsAre(list []byte, v uint16) bool {
	for rest := list[2:]; len(rest) >= 4; rest = rest[4+int(binary.BigEndian.Uint16(rest[2:])):] {
		if binary.BigEndian.Uint16(rest) != v {
			return false
		}
	}
	return true
}
