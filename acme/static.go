package acme

import (
	"crypto/tls"
	"sync/atomic"
)

// Static serves one certificate for every name: the demo's leaf, or a
// certificate loaded from files. Set swaps it for new handshakes.
type Static struct {
	cert   atomic.Pointer[tls.Certificate]
	source string
}

// NewStatic serves cert; source names where it came from on the status page
// ("local-ca", "external", ...).
func NewStatic(cert *tls.Certificate, source string) *Static {
	s := &Static{source: source}
	s.cert.Store(cert)
	return s
}

func (s *Static) Set(cert *tls.Certificate) { s.cert.Store(cert) }

func (s *Static) Certificate() *tls.Certificate { return s.cert.Load() }

// GetCertificate is a tls.Config.GetCertificate. Clients without SNI, or with
// another name, get the same certificate, as chatmail's nginx default_server.
func (s *Static) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.Load(), nil
}
