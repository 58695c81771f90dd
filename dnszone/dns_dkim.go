package dnszone

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"

	"chatmail-edge/internal/filelimit"
)

// chatmail's DKIM key: cmdeploy keeps the selector "opendkim" and the file
// name opendkim-genkey gave it, for dkim-milter too.
const (
	defaultDKIMSelector = "opendkim"
	defaultDKIMKey      = "/etc/dkimkeys/opendkim.private"
)

// dkimKey is the relay's DKIM key record value, or why it is not known.
type dkimKey struct {
	selector, file string
	value          string // the TXT value, "" when err says why not
	err            string
}

// readDKIMKey derives the DKIM key record (RFC 6376 §3.6.1) from the
// private key in file: PKCS #1 (opendkim-genkey) or PKCS #8 (openssl
// genpkey, as dkim-milter's deployer makes it), RSA or Ed25519 (RFC 8463).
// The tags are cmdeploy's: s=email, and t=s (no subdomains).
func readDKIMKey(selector, file string) dkimKey {
	k := dkimKey{selector: selector, file: file}
	value, err := dkimRecordValue(file)
	if err != nil {
		k.err = err.Error()
		return k
	}
	k.value = value
	return k
}

func dkimRecordValue(file string) (string, error) {
	data, err := filelimit.ReadFile(file, filelimit.Small)
	if err != nil {
		return "", fmt.Errorf("DKIM key not readable (%v); run as root or give --dkim-key", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return "", fmt.Errorf("DKIM key %s: no PEM block", file)
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		err = fmt.Errorf("PEM type %q", block.Type)
	}
	if err != nil {
		return "", fmt.Errorf("DKIM key %s: %w", file, err)
	}
	var algo string
	var pub []byte
	switch key := key.(type) {
	case *rsa.PrivateKey:
		// p= is the DER SubjectPublicKeyInfo, base64 (RFC 6376 §3.6.1).
		algo = "rsa"
		if pub, err = x509.MarshalPKIXPublicKey(&key.PublicKey); err != nil {
			return "", fmt.Errorf("DKIM key %s: %w", file, err)
		}
	case ed25519.PrivateKey:
		// p= is the raw 32-byte public key (RFC 8463 §4.2).
		algo, pub = "ed25519", key.Public().(ed25519.PublicKey)
	default:
		return "", errors.New("DKIM key " + file + ": neither RSA nor Ed25519")
	}
	return "v=DKIM1;k=" + algo + ";p=" + base64.StdEncoding.EncodeToString(pub) + ";s=email;t=s", nil
}
