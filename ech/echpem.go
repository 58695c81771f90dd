package ech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// PEM block types of an RFC 9934 ECH key file: the private key as PKCS#8
// (RFC 7468 §10, for X25519 RFC 8410 §7), then the ECHConfigList.
const (
	pemTypePrivateKey = "PRIVATE KEY"
	pemTypeECHConfig  = "ECHCONFIG"
)

// encodeECHKeyPEM returns the key in the RFC 9934 §3 file format that OpenSSL,
// nginx (ssl_ech_file) and HAProxy read: a PKCS#8 PRIVATE KEY block, then an
// ECHCONFIG block holding an ECHConfigList with the key's one config.
func encodeECHKeyPEM(k *Key) ([]byte, error) {
	priv, err := ecdh.X25519().NewPrivateKey(k.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("encode ECH key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode ECH key: %w", err)
	}
	var b bytes.Buffer
	// Writing to a bytes.Buffer cannot fail.
	_ = pem.Encode(&b, &pem.Block{Type: pemTypePrivateKey, Bytes: der})
	_ = pem.Encode(&b, &pem.Block{Type: pemTypeECHConfig, Bytes: MarshalConfigList(k.Config)})
	return b.Bytes(), nil
}

// decodeECHKeyPEM reads what encodeECHKeyPEM writes, with any text before the
// first block (RFC 7468 §2). It insists on what this package can serve: one
// X25519 Config of version 0xfe0d whose public key matches the private key.
func decodeECHKeyPEM(data []byte) (config, privateKey []byte, err error) {
	keyBlock, rest := pem.Decode(data)
	if keyBlock == nil {
		return nil, nil, errors.New("no PEM block")
	}
	if keyBlock.Type != pemTypePrivateKey {
		return nil, nil, fmt.Errorf("first PEM block is %q, want %q (RFC 9934 §3)", keyBlock.Type, pemTypePrivateKey)
	}
	configBlock, rest := pem.Decode(rest)
	if configBlock == nil || configBlock.Type != pemTypeECHConfig {
		return nil, nil, fmt.Errorf("no %q PEM block after the private key (RFC 9934 §3)", pemTypeECHConfig)
	}
	if extra, _ := pem.Decode(rest); extra != nil {
		return nil, nil, fmt.Errorf("unexpected %q PEM block after %q", extra.Type, pemTypeECHConfig)
	}

	parsedKey, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("private key: %w", err)
	}
	priv, ok := parsedKey.(*ecdh.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("private key is a %T, want X25519 (RFC 8410)", parsedKey)
	}
	if priv.Curve() != ecdh.X25519() {
		return nil, nil, fmt.Errorf("private key is on %v, want X25519 (RFC 8410)", priv.Curve())
	}

	configs, err := ParseConfigList(configBlock.Bytes)
	if err != nil {
		return nil, nil, err
	}
	// Re-marshalling must give the block back: this refuses lists with more
	// than one config, including skipped ones of unknown versions.
	if len(configs) != 1 || !bytes.Equal(MarshalConfigList(configs[0].Marshal()), configBlock.Bytes) {
		return nil, nil, fmt.Errorf("ECHConfigList must hold exactly one Config of version 0x%04x", Version)
	}
	c := configs[0]
	if c.KEMID != HPKEKEMX25519 {
		return nil, nil, fmt.Errorf("Config kem_id is 0x%04x, want X25519 (0x%04x)", c.KEMID, HPKEKEMX25519)
	}
	if !bytes.Equal(c.PublicKey, priv.PublicKey().Bytes()) {
		return nil, nil, errors.New("private key does not match the Config's public key")
	}
	return c.Marshal(), priv.Bytes(), nil
}
