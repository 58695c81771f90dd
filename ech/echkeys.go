package ech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Key is one ECH key pair with its config, in the forms crypto/tls wants.
type Key struct {
	Config     []byte    // one marshalled Config (not a list)
	PrivateKey []byte    // raw 32-byte X25519 scalar (RFC 9180 §7.1.2 SerializePrivateKey)
	Created    time.Time // whole seconds, UTC
	File       string    // path it was loaded from / stored to ("" if not stored)
}

// Parsed returns the key's config unpacked. Keys made by GenerateKey or
// Load always parse; for any other it returns the zero Config.
func (k *Key) Parsed() Config {
	c, err := ParseConfig(k.Config)
	if err != nil {
		return Config{}
	}
	return c
}

// ConfigID is the config_id clients send with this key's config.
func (k *Key) ConfigID() uint8 { return k.Parsed().ConfigID }

// PublicName is the name in the outer ClientHello; the server must hold a
// certificate for it, since a client verifies it when ECH is rejected
// (RFC 9849 §6.1.7).
func (k *Key) PublicName() string { return k.Parsed().PublicName }

// echSuites are the HPKE suites offered: HKDF-SHA256 with each AEAD that Go's
// server and browsers support (RFC 9180 §7.2, §7.3). AES-128-GCM comes first
// since it is what every client implements.
func echSuites() []CipherSuite {
	return []CipherSuite{
		{KDF: HPKEKDFHKDFSHA256, AEAD: HPKEAEADAES128GCM},
		{KDF: HPKEKDFHKDFSHA256, AEAD: HPKEAEADAES256GCM},
		{KDF: HPKEKDFHKDFSHA256, AEAD: HPKEAEADChaCha20Poly},
	}
}

// GenerateKey makes an X25519 ECH key and its Config (version 0xfe0d, no
// extensions). maxNameLen is the padding hint of RFC 9849 §6.1.3 (see
// MaxNameLength). rnd supplies the 32-byte scalar; nil means crypto/rand.
func GenerateKey(publicName string, maxNameLen uint8, configID uint8, now time.Time, rnd io.Reader) (*Key, error) {
	if err := checkPublicName(publicName); err != nil {
		return nil, fmt.Errorf("generate ECH key: %w", err)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	// Read the scalar ourselves: ecdh's GenerateKey ignores a caller's reader
	// since Go 1.26, and tests need deterministic keys.
	scalar := make([]byte, 32)
	if _, err := io.ReadFull(rnd, scalar); err != nil {
		return nil, fmt.Errorf("generate ECH key: read random: %w", err)
	}
	priv, err := ecdh.X25519().NewPrivateKey(scalar)
	if err != nil {
		return nil, fmt.Errorf("generate ECH key: %w", err)
	}
	config := Config{
		Version:    Version,
		ConfigID:   configID,
		KEMID:      HPKEKEMX25519,
		PublicKey:  priv.PublicKey().Bytes(),
		Suites:     echSuites(),
		MaxNameLen: maxNameLen,
		PublicName: publicName,
	}
	return &Key{
		Config:     config.Marshal(),
		PrivateKey: priv.Bytes(),
		Created:    now.UTC().Truncate(time.Millisecond),
	}, nil
}

// checkPublicName accepts what Go's client accepts as public_name (crypto/tls
// validDNSName: at least two LDH labels; RFC 9849 §4 has clients ignore
// configs with other names) and refuses IP literals and anything a URL parser could read
// as an IPv4 address (an all-numeric last label), which RFC 9849 §4 rules out.
func checkPublicName(name string) error {
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("public_name %q is an IP address, want a DNS name", name)
	}
	if len(name) > 253 {
		return fmt.Errorf("public_name %q is longer than 253 bytes", name)
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return fmt.Errorf("public_name %q needs at least two labels", name)
	}
	for _, l := range labels {
		if !isLDHLabel(l) {
			return fmt.Errorf("public_name %q: label %q is not 1-63 letters, digits and inner hyphens", name, l)
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("public_name %q: the last label is numeric, so it reads as an IPv4 address", name)
	}
	return nil
}

func isLDHLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for _, c := range []byte(l) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// MaxNameLength is the maximum_name_length to publish: the longest name served
// behind the key, so clients pad every inner SNI to the same length and the
// length does not tell names apart (RFC 9849 §6.1.3). It is capped at 255.
func MaxNameLength(names ...string) uint8 {
	longest := 0
	for _, n := range names {
		longest = max(longest, len(strings.TrimSuffix(n, ".")))
	}
	return uint8(min(longest, 255))
}

// KeySet is every live ECH key, newest first. Build it with NewKeySet.
// Only the newest key is published; older ones stay to decrypt hellos from
// clients that still cache their configs.
type KeySet struct {
	Keys []*Key // newest first
}

// NewKeySet returns a set of the keys sorted newest first (ties by config
// bytes, so the order never depends on directory order).
func NewKeySet(keys ...*Key) *KeySet {
	sorted := slices.Clone(keys)
	slices.SortStableFunc(sorted, func(a, b *Key) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return bytes.Compare(a.Config, b.Config)
	})
	return &KeySet{Keys: sorted}
}

// Current is the newest key, the only one published; nil if the set is empty.
func (s *KeySet) Current() *Key {
	if len(s.Keys) == 0 {
		return nil
	}
	return s.Keys[0]
}

// ConfigList is the published ECHConfigList: the current key's config alone,
// or nil for an empty set. Older keys are never advertised, so clients move to
// the new key as their caches expire.
func (s *KeySet) ConfigList() []byte {
	cur := s.Current()
	if cur == nil {
		return nil
	}
	return MarshalConfigList(cur.Config)
}

// TLSKeys returns every key for tls.Config.EncryptedClientHelloKeys, newest
// first (Go trial-decrypts in this order, so fresh clients match at once).
// Only the current key has SendAsRetry: retry_configs (RFC 9849 §7.1) then
// equal the published list.
func (s *KeySet) TLSKeys() []tls.EncryptedClientHelloKey {
	keys := make([]tls.EncryptedClientHelloKey, len(s.Keys))
	for i, k := range s.Keys {
		keys[i] = tls.EncryptedClientHelloKey{Config: k.Config, PrivateKey: k.PrivateKey, SendAsRetry: i == 0}
	}
	return keys
}

// configIDs returns the config_ids in use, to keep new ones unique.
func (s *KeySet) configIDs() map[uint8]bool {
	used := make(map[uint8]bool, len(s.Keys))
	for _, k := range s.Keys {
		used[k.ConfigID()] = true
	}
	return used
}

// randomConfigID picks a config_id not in used. Random rather than counting
// up, so the id does not reveal how many keys a server went through.
func randomConfigID(used map[uint8]bool) (uint8, error) {
	var free []uint8
	for id := range 256 {
		if !used[uint8(id)] {
			free = append(free, uint8(id))
		}
	}
	if len(free) == 0 {
		return 0, errors.New("all 256 config_ids are in use")
	}
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	return free[(int(b[0])<<8|int(b[1]))%len(free)], nil
}
