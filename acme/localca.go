// Package acme supplies the edge's certificates: the local CA of the demo,
// certificate files (chatmail's external mode) and, with certmagic, ACME.
package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"time"

	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/internal/filelimit"
)

// LocalCA is a small certificate authority kept in a state folder. The demo
// uses it to sign its leaf certificate; clients trust its certificate file.
type LocalCA struct {
	Cert     *x509.Certificate
	CertPEM  []byte
	CertFile string
	key      *ecdsa.PrivateKey
}

const (
	localCAFile     = "demo-ca.pem"
	localCAKeyFile  = "demo-ca-key.pem"
	localLeafFile   = "demo-leaf.pem"
	localLeafKey    = "demo-leaf-key.pem"
	localCALifetime = 10 * 365 * 24 * time.Hour
	// Leaves live 90 days like Let's Encrypt's and are reissued when a
	// third of that remains.
	localLeafLifetime = 90 * 24 * time.Hour
)

// LoadOrCreateLocalCA loads the CA from dir, creating it on first use. A CA
// file that exists but cannot be used is an error, never silently replaced:
// clients were told to trust it.
func LoadOrCreateLocalCA(dir string, now time.Time) (*LocalCA, error) {
	certPath, keyPath := filepath.Join(dir, localCAFile), filepath.Join(dir, localCAKeyFile)
	certPEM, err := filelimit.ReadFile(certPath, filelimit.PEM)
	if errors.Is(err, fs.ErrNotExist) {
		return createLocalCA(dir, now)
	}
	if err != nil {
		return nil, fmt.Errorf("read local CA %s: %w", certPath, err)
	}
	pair, err := loadKeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("load local CA: %w", err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || !pair.Leaf.IsCA {
		return nil, fmt.Errorf("load local CA %s: not an ECDSA CA certificate", certPath)
	}
	return &LocalCA{Cert: pair.Leaf, CertPEM: certPEM, CertFile: certPath, key: key}, nil
}

func createLocalCA(dir string, now time.Time) (*LocalCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate local CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "chatmail-edge demo CA", Organization: []string{"chatmail-edge"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(localCALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create local CA certificate: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certPath := filepath.Join(dir, localCAFile)
	if err := writePair(certPath, filepath.Join(dir, localCAKeyFile), certPEM, key); err != nil {
		return nil, fmt.Errorf("store local CA: %w", err)
	}
	return &LocalCA{Cert: cert, CertPEM: certPEM, CertFile: certPath, key: key}, nil
}

// Leaf returns the leaf certificate for names (DNS names or IP addresses),
// stored in dir next to the CA. It is reused across restarts while it covers
// the same names and has more than a third of its life left.
func (ca *LocalCA) Leaf(dir string, names []string, now time.Time) (*tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, localLeafFile), filepath.Join(dir, localLeafKey)
	if pair, err := loadKeyPair(certPath, keyPath); err == nil && ca.stillGood(pair.Leaf, names, now) {
		return pair, nil
	}
	return ca.issueLeaf(certPath, keyPath, names, now)
}

func (ca *LocalCA) stillGood(leaf *x509.Certificate, names []string, now time.Time) bool {
	if leaf.CheckSignatureFrom(ca.Cert) != nil || leaf.NotAfter.Sub(now) < localLeafLifetime/3 {
		return false
	}
	dns, ips := splitNames(names)
	var have []string
	for _, ip := range leaf.IPAddresses {
		have = append(have, ip.String())
	}
	var want []string
	for _, ip := range ips {
		want = append(want, ip.String())
	}
	return slices.Equal(leaf.DNSNames, dns) && slices.Equal(have, want)
}

func (ca *LocalCA) issueLeaf(certPath, keyPath string, names []string, now time.Time) (*tls.Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("issue leaf: no names")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate leaf key: %w", err)
	}
	dns, ips := splitNames(names)
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     dns,
		IPAddresses:  ips,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(localLeafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign leaf for %v: %w", names, err)
	}
	chainPEM := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), ca.CertPEM...)
	if err := writePair(certPath, keyPath, chainPEM, key); err != nil {
		return nil, fmt.Errorf("store leaf: %w", err)
	}
	return loadKeyPair(certPath, keyPath)
}

func splitNames(names []string) (dns []string, ips []net.IP) {
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	return dns, ips
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// loadKeyPair reads a PEM chain and key and parses the leaf.
func loadKeyPair(certPath, keyPath string) (*tls.Certificate, error) {
	certPEM, err := filelimit.ReadFile(certPath, filelimit.PEM)
	if err != nil {
		return nil, fmt.Errorf("load key pair: %w", err)
	}
	keyPEM, err := filelimit.ReadFile(keyPath, filelimit.Small)
	if err != nil {
		return nil, fmt.Errorf("load key pair: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load key pair %s, %s: %w", certPath, keyPath, err)
	}
	if pair.Leaf == nil {
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse %s: %w", certPath, err)
		}
	}
	return &pair, nil
}

// writePair stores a certificate (0644) and its key (0600), each atomically.
func writePair(certPath, keyPath string, certPEM []byte, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(certPath, certPEM, 0o644)
}
