package ech

import (
	"bytes"
	"crypto/ecdh"
	"reflect"
	"strings"
	"testing"
	"time"
)

var testEpoch = time.Date(2026, 11, 25, 8, 1, 0, 0, time.UTC)

const testPublicName = "chat.example.org"

// testECHKey is a deterministic key: its scalar is derived from configID.
func testECHKey(t testing.TB, configID uint8, created time.Time) *Key {
	t.Helper()
	rnd := bytes.NewReader(bytes.Repeat([]byte{configID ^ 0x5a}, 32))
	k, err := GenerateKey(testPublicName, 32, configID, created, rnd)
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	return k
}

func TestGenerateECHKey(t *testing.T) {
	now := testEpoch.Add(1234 * time.Millisecond).In(time.FixedZone("CET", 3600))
	k, err := GenerateKey(testPublicName, 40, 0x2a, now, nil)
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	c, err := ParseConfig(k.Config)
	if err != nil {
		t.Fatalf("config does not parse: %v", err)
	}
	priv, err := ecdh.X25519().NewPrivateKey(k.PrivateKey)
	if err != nil {
		t.Fatalf("private key is not an X25519 scalar: %v", err)
	}
	want := Config{
		Version:    0xfe0d,
		ConfigID:   0x2a,
		KEMID:      0x0020,
		PublicKey:  priv.PublicKey().Bytes(),
		Suites:     []CipherSuite{{1, 1}, {1, 2}, {1, 3}},
		MaxNameLen: 40,
		PublicName: testPublicName,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("config = %+v\nwant %+v", c, want)
	}
	if !reflect.DeepEqual(k.Parsed(), want) || k.ConfigID() != 0x2a || k.PublicName() != testPublicName {
		t.Errorf("Parsed/ConfigID/PublicName disagree with the config")
	}
	if wantCreated := now.UTC().Truncate(time.Millisecond); !k.Created.Equal(wantCreated) || k.Created.Location() != time.UTC {
		t.Errorf("Created = %v, want %v in UTC", k.Created, wantCreated)
	}
	if k.File != "" {
		t.Errorf("File = %q for a key never stored", k.File)
	}
	if other, _ := GenerateKey(testPublicName, 40, 0x2a, now, nil); bytes.Equal(other.PrivateKey, k.PrivateKey) {
		t.Errorf("two keys from crypto/rand are equal")
	}
}

func TestGenerateECHKeyUsesGivenRandom(t *testing.T) {
	a, b := testECHKey(t, 1, testEpoch), testECHKey(t, 1, testEpoch)
	if !bytes.Equal(a.PrivateKey, b.PrivateKey) || !bytes.Equal(a.Config, b.Config) {
		t.Errorf("the same random bytes gave different keys")
	}
	if _, err := GenerateKey(testPublicName, 0, 1, testEpoch, bytes.NewReader(make([]byte, 31))); err == nil {
		t.Errorf("a short random source was accepted")
	}
}

func TestGenerateECHKeyRefusesBadPublicNames(t *testing.T) {
	for _, name := range []string{
		"", "localhost", "chat.example.org.", ".example.org", "chat..example.org",
		"192.0.2.1", "::1", "2001:db8::1", "10.0.0.999", "example.123",
		"-chat.example.org", "chat-.example.org", "chat_1.example.org", "chät.example.org",
		strings.Repeat("a", 64) + ".example.org",
		strings.Repeat("abcdefg.", 32) + "org", // 259 bytes
	} {
		if _, err := GenerateKey(name, 0, 1, testEpoch, nil); err == nil {
			t.Errorf("public_name %q accepted", name)
		}
	}
	for _, name := range []string{"chat.example.org", "a.b", "xn--bcher-kva.example", "mail-1.example.org", "0.example.org"} {
		if _, err := GenerateKey(name, 0, 1, testEpoch, nil); err != nil {
			t.Errorf("public_name %q refused: %v", name, err)
		}
	}
}

func TestMaxNameLength(t *testing.T) {
	tests := []struct {
		names []string
		want  uint8
	}{
		{nil, 0},
		{[]string{"chat.example.org", "mta-sts.chat.example.org", "a.b"}, 24},
		{[]string{"mta-sts.chat.example.org."}, 24},
		{[]string{strings.Repeat("a", 300)}, 255},
	}
	for _, tt := range tests {
		if got := MaxNameLength(tt.names...); got != tt.want {
			t.Errorf("MaxNameLength(%q) = %d, want %d", tt.names, got, tt.want)
		}
	}
}

func TestECHKeySetOrderAndPublication(t *testing.T) {
	oldest := testECHKey(t, 1, testEpoch)
	middle := testECHKey(t, 2, testEpoch.Add(24*time.Hour))
	newest := testECHKey(t, 3, testEpoch.Add(48*time.Hour))
	set := NewKeySet(middle, newest, oldest)

	if got := []*Key{set.Keys[0], set.Keys[1], set.Keys[2]}; got[0] != newest || got[1] != middle || got[2] != oldest {
		t.Fatalf("keys not newest first: ids %d %d %d", got[0].ConfigID(), got[1].ConfigID(), got[2].ConfigID())
	}
	if set.Current() != newest {
		t.Errorf("Current is config %d, want 3", set.Current().ConfigID())
	}
	if got, want := set.ConfigList(), MarshalConfigList(newest.Config); !bytes.Equal(got, want) {
		t.Errorf("ConfigList = %x, want only the newest config %x", got, want)
	}
	tlsKeys := set.TLSKeys()
	if len(tlsKeys) != 3 {
		t.Fatalf("TLSKeys has %d keys, want 3", len(tlsKeys))
	}
	for i, tk := range tlsKeys {
		if !bytes.Equal(tk.Config, set.Keys[i].Config) || !bytes.Equal(tk.PrivateKey, set.Keys[i].PrivateKey) {
			t.Errorf("TLSKeys[%d] is not key %d", i, i)
		}
		if tk.SendAsRetry != (i == 0) {
			t.Errorf("TLSKeys[%d].SendAsRetry = %v", i, tk.SendAsRetry)
		}
	}
}

func TestECHKeySetBreaksTiesDeterministically(t *testing.T) {
	a, b := testECHKey(t, 1, testEpoch), testECHKey(t, 2, testEpoch)
	first, second := NewKeySet(a, b), NewKeySet(b, a)
	if first.Current() != second.Current() {
		t.Errorf("input order decided the current key")
	}
}

func TestEmptyECHKeySet(t *testing.T) {
	set := NewKeySet()
	if set.Current() != nil || set.ConfigList() != nil || len(set.TLSKeys()) != 0 {
		t.Errorf("empty set: Current %v, ConfigList %x, %d TLS keys", set.Current(), set.ConfigList(), len(set.TLSKeys()))
	}
}

func TestRandomConfigIDAvoidsUsedIDs(t *testing.T) {
	used := make(map[uint8]bool)
	for id := range 255 {
		used[uint8(id)] = true
	}
	if id, err := randomConfigID(used); err != nil || id != 255 {
		t.Errorf("randomConfigID = %d, %v; want the only free id 255", id, err)
	}
	used[255] = true
	if _, err := randomConfigID(used); err == nil {
		t.Errorf("randomConfigID found an id with all 256 in use")
	}
}
