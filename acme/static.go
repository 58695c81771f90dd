package acme

import (
	"context"
	"crypto/tls"
	"net/http"
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

// Mode is where the certificate came from (a Mode constant).
func (s *Static) Mode() string { return s.source }

// Start, Stop and Recheck have nothing to do: the certificate is fixed.
func (s *Static) Start(context.Context, Listeners) error { return nil }

func (s *Static) Stop() {}

func (s *Static) Recheck() {}

// HTTPHandler is next: there are no challenges to answer.
func (s *Static) HTTPHandler(next http.Handler) http.Handler { return next }
