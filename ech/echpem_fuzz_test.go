package ech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"
)

// opensslX25519Key is `openssl genpkey -algorithm X25519` (OpenSSL 3.0.19),
// a test key: the private key block of a file an operator assembles.
const opensslX25519Key = `-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VuBCIEICh9wZtwyXVaOhx1+HNbgPt6LLSFQrckZhu/xoLURWti
-----END PRIVATE KEY-----
`

// echPEMSeeds are key files as the edge writes them (with and without the
// "created:" header), one with OpenSSL's private key block, and broken ones.
func echPEMSeeds(f *testing.F) [][]byte {
	f.Helper()
	opensslBlock, _ := pem.Decode([]byte(opensslX25519Key))
	opensslKey, err := x509.ParsePKCS8PrivateKey(opensslBlock.Bytes)
	if err != nil {
		f.Fatal(err)
	}
	var seeds [][]byte
	for i, scalar := range [][]byte{bytes.Repeat([]byte{1}, 32), opensslKey.(*ecdh.PrivateKey).Bytes()} {
		k, err := GenerateKey("chat.example", 32, uint8(7+i), time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC), bytes.NewReader(scalar))
		if err != nil {
			f.Fatal(err)
		}
		data, err := encodeECHKeyPEM(k)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, data, append([]byte("# chatmail-edge ECH key\n# created: 2026-05-01T00:00:00Z\n\n"), data...))
	}
	// block is the nth PEM block of data, 0 the first.
	block := func(data []byte, n int) *pem.Block {
		for ; ; n-- {
			var b *pem.Block
			if b, data = pem.Decode(data); n == 0 {
				return b
			}
		}
	}
	good, other := seeds[0], seeds[2]
	keyPEM, configPEM := pem.EncodeToMemory(block(good, 0)), pem.EncodeToMemory(block(good, 1))
	config := block(good, 1).Bytes[2:]
	twoConfigs := pem.EncodeToMemory(&pem.Block{Type: pemTypeECHConfig, Bytes: MarshalConfigList(config, config)})
	certificate := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})
	return append(seeds,
		joinPEM([]byte(opensslX25519Key), pem.EncodeToMemory(block(other, 1))), // OpenSSL's block, our config
		joinPEM(configPEM, keyPEM),                           // blocks swapped
		joinPEM(good, certificate),                           // a third block
		joinPEM(keyPEM, twoConfigs),                          // two configs in the list
		joinPEM(keyPEM, pem.EncodeToMemory(block(other, 1))), // another key's config
		good[:len(good)/2],                                   // cut short
		[]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"),
		nil)
}

func joinPEM(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// FuzzDecodeECHKeyPEM: decoding never panics, and what decodes is a key
// the edge can serve: one X25519 Config of our version whose public key
// is the private key's, which encodes back to a file that decodes to the
// same key and config.
func FuzzDecodeECHKeyPEM(f *testing.F) {
	seeds := echPEMSeeds(f)
	for _, i := range []int{0, 1, 4} {
		if _, _, err := decodeECHKeyPEM(seeds[i]); err != nil {
			f.Fatalf("seed %d, a good key file, does not decode: %v", i, err)
		}
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		config, priv, err := decodeECHKeyPEM(data)
		if err != nil {
			if config != nil || priv != nil {
				t.Fatalf("error %v with a result", err)
			}
			return
		}
		if len(config) > len(data) || len(priv) != 32 {
			t.Fatalf("config of %d bytes from %d of input, private key of %d", len(config), len(data), len(priv))
		}
		c, err := ParseConfig(config)
		if err != nil || c.Version != Version || c.KEMID != HPKEKEMX25519 || !bytes.Equal(c.Marshal(), config) {
			t.Fatalf("decoded config %x does not parse back to one of ours: %v", config, err)
		}
		key, err := ecdh.X25519().NewPrivateKey(priv)
		if err != nil || !bytes.Equal(key.PublicKey().Bytes(), c.PublicKey) {
			t.Fatalf("private key does not match the config's public key: %v", err)
		}
		again, err := encodeECHKeyPEM(&Key{Config: config, PrivateKey: priv})
		if err != nil {
			t.Fatalf("encode the decoded key: %v", err)
		}
		config2, priv2, err := decodeECHKeyPEM(again)
		if err != nil || !bytes.Equal(config2, config) || !bytes.Equal(priv2, priv) {
			t.Fatalf("re-encoded key does not decode to the same: %v", err)
		}
	})
}
