package acme

import "time"

// CertStatus describes one certificate the edge serves or manages, for the
// status page and metrics. It holds no key material.
type CertStatus struct {
	Names    []string  // DNS names (and IPs) the certificate covers, or should
	Source   string    // "acme", "self", "external", "local-ca"
	Issuer   string    // issuer common name, "" when there is no certificate yet
	NotAfter time.Time // zero when there is no certificate yet
	// LastError is the last failure obtaining or renewing it ("" if none),
	// with its time; NextAttempt is when the next try is due (zero: none).
	LastError   string
	LastErrorAt time.Time
	NextAttempt time.Time
}

// StatusSource is what a certificate source offers the status page.
type StatusSource interface {
	Status() []CertStatus
}

// Status reports the one certificate a Static serves.
func (s *Static) Status() []CertStatus {
	c := s.cert.Load()
	if c == nil || c.Leaf == nil {
		return nil
	}
	names := append([]string(nil), c.Leaf.DNSNames...)
	for _, ip := range c.Leaf.IPAddresses {
		names = append(names, ip.String())
	}
	return []CertStatus{{Names: names, Source: s.source, Issuer: c.Leaf.Issuer.CommonName, NotAfter: c.Leaf.NotAfter}}
}
