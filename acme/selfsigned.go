package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"chatmail-edge/internal/atomicfile"
)

// Where cmdeploy puts the self-signed certificate (selfsigned/deployer.py);
// Postfix and Dovecot read the same files.
const (
	SelfSignedCertFile = "/etc/ssl/certs/mailserver.pem"
	SelfSignedKeyFile  = "/etc/ssl/private/mailserver.key"
)

// selfSignedLifetime is cmdeploy's "-days 36500".
const selfSignedLifetime = 36500 * 24 * time.Hour

func isIP(s string) bool { return net.ParseIP(s) != nil }

// SelfSigned serves chatmail's self-signed certificate: the existing files,
// or, when neither exists, new ones made as cmdeploy makes them (EC P-256,
// 36500 days, for domain, www.domain and mta-sts.domain; an IP address as
// an IP SAN). created says whether it made them. One file without the
// other is an error: the missing half is never made up.
func SelfSigned(domain, certFile, keyFile string, now time.Time) (s *Static, created bool, err error) {
	_, certErr := os.Stat(certFile)
	_, keyErr := os.Stat(keyFile)
	switch {
	case certErr == nil && keyErr == nil:
		pair, err := loadKeyPair(certFile, keyFile)
		if err != nil {
			return nil, false, fmt.Errorf("self-signed certificate: %w", err)
		}
		return NewStatic(pair, ModeSelf), false, nil
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("self-signed certificate: %w", certErr)
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("self-signed certificate key: %w", keyErr)
	case certErr != nil:
		return nil, false, fmt.Errorf("self-signed certificate %s is missing but its key %s exists", certFile, keyFile)
	default:
		return nil, false, fmt.Errorf("self-signed certificate key %s is missing but the certificate %s exists", keyFile, certFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, err
	}
	host := strings.Trim(domain, "[]")
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: host},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(selfSignedLifetime),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host, "www." + host, "mta-sts." + host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, false, fmt.Errorf("create self-signed certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, false, err
	}
	for dir, mode := range map[string]os.FileMode{filepath.Dir(certFile): 0o755, filepath.Dir(keyFile): 0o700} {
		if err := os.MkdirAll(dir, mode); err != nil {
			return nil, false, fmt.Errorf("create self-signed certificate: %w", err)
		}
	}
	if err := atomicfile.WriteNew(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, false, fmt.Errorf("create self-signed certificate: %w", err)
	}
	if err := atomicfile.WriteNew(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, false, fmt.Errorf("create self-signed certificate: %w", err)
	}
	pair, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, false, err
	}
	return NewStatic(pair, ModeSelf), true, nil
}
