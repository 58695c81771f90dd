package acme

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
)

// chatmail's TLS modes (chatmaild config.py), and the demo's.
const (
	ModeACME     = "acme"     // a normal mail domain: certificates from an ACME CA
	ModeSelf     = "self"     // a mail domain no public CA certifies: "_" or an IP address
	ModeExternal = "external" // files another program renews (tls_external_cert_and_key)
	ModeLocalCA  = "local-ca" // the demo's own CA
)

// Source is where the edge's certificates come from, in any mode: it
// serves them to handshakes, answers ACME challenges where there are any,
// and reports them for the status page.
type Source interface {
	// GetCertificate is a tls.Config.GetCertificate.
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Status is for the status page and metrics.
	Status() []CertStatus
	// Start runs once the listeners accept (an ACME CA validates through
	// them). A first start in acme mode without any certificate for the
	// mail domain waits for one, and fails if none can be had.
	Start(ctx context.Context, ln Listeners) error
	// Stop ends renewals or file checks and waits for them.
	Stop()
	// HTTPHandler answers ACME HTTP-01 challenges (acme mode) and passes
	// every other request to next.
	HTTPHandler(next http.Handler) http.Handler
	// Recheck looks again now, as on SIGHUP: failed ACME attempts are
	// retried at once, external files read again.
	Recheck()
	// Mode is one of the Mode constants.
	Mode() string
}

// SourceConfig chooses and configures a Source.
type SourceConfig struct {
	Domain string // the mail domain

	// ExternalCert and ExternalKey are chatmail's tls_external_cert_and_key;
	// set, they make the mode external. They are read again every
	// CheckInterval.
	ExternalCert, ExternalKey string
	CheckInterval             time.Duration

	// SelfCert and SelfKey are self mode's files, made as cmdeploy makes
	// them when both are missing.
	SelfCert, SelfKey string

	ACME Config // acme mode
}

// Mode is chatmail's TLS mode for c: external when the operator gives the
// files, self for a domain no public CA certifies, acme otherwise.
func (c SourceConfig) Mode() string {
	switch {
	case c.ExternalCert != "":
		return ModeExternal
	case IsSelfSignedDomain(c.Domain):
		return ModeSelf
	}
	return ModeACME
}

// NewSource makes the Source for c's mode. It contacts no CA; Start does.
func NewSource(c SourceConfig, log *zap.Logger) (Source, error) {
	switch c.Mode() {
	case ModeExternal:
		w, err := WatchFiles(c.ExternalCert, c.ExternalKey, c.CheckInterval, log.Named("tls"))
		if err != nil {
			return nil, err
		}
		return w, nil
	case ModeSelf:
		s, created, err := SelfSigned(c.Domain, c.SelfCert, c.SelfKey, time.Now())
		if err != nil {
			return nil, err
		}
		if created {
			log.Info("created the self-signed certificate", zap.String("cert", c.SelfCert), zap.String("key", c.SelfKey))
		}
		return s, nil
	}
	m, err := NewManager(c.ACME, log.Named("acme"))
	if err != nil {
		return nil, err
	}
	return m, nil
}

// IsSelfSignedDomain tells chatmail's "self" mode: a mail domain that no
// public CA can certify, one starting with "_" or an IP address.
func IsSelfSignedDomain(domain string) bool {
	return strings.HasPrefix(domain, "_") || isIP(strings.Trim(domain, "[]"))
}

var (
	_ Source = (*Manager)(nil)
	_ Source = (*Static)(nil)
	_ Source = (*Watched)(nil)
)
