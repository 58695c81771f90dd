package edge

import (
	"crypto/tls"
	"slices"
)

// acmeTLSALPN is the protocol of TLS-ALPN-01 validations (RFC 8737 §6.2); the
// certificate source answers them inside the handshake.
const acmeTLSALPN = "acme-tls/1"

// extensionECH is the encrypted_client_hello extension (RFC 9849 §5). A hello
// carries it when the client attempts ECH (outer) and in the decrypted inner
// hello too, so its presence means "offered" whatever the outcome.
const extensionECH = 0xfe0d

// newTLSConfig builds a listener's TLS configuration once. Everything that
// changes at run time (ECH keys, certificates, ticket keys) is read through
// callbacks or set with SetSessionTicketKeys, so no handshake ever clones or
// allocates a tls.Config.
//
// ECH keys sit on this base config only, and GetConfigForClient returns nil,
// so the same keys also serve the retry_configs of a rejected ECH (RFC 9849
// §7.1): crypto/tls builds those from the config GetConfigForClient returns.
func (e *Edge) newTLSConfig(kind Kind) *tls.Config {
	return &tls.Config{
		MinVersion:                  e.cfg.MinTLSVersion,
		NextProtos:                  nextProtos(kind),
		GetCertificate:              e.getCert,
		GetEncryptedClientHelloKeys: e.currentECHKeys,
		GetConfigForClient:          noteECHOffer,
		// Full-size records from the first byte: mail is bulk data, and
		// fewer records cost less CPU per byte.
		DynamicRecordSizingDisabled: true,
	}
}

func nextProtos(kind Kind) []string {
	switch kind {
	case KindIMAP:
		return []string{"imap"}
	case KindSMTP:
		return []string{"smtp"}
	}
	return []string{"smtp", "imap", "h2", "http/1.1", acmeTLSALPN}
}

func (e *Edge) currentECHKeys(*tls.ClientHelloInfo) ([]tls.EncryptedClientHelloKey, error) {
	return *e.echKeys.Load(), nil
}

// noteECHOffer runs on the hello that will be answered (the inner one when
// ECH was accepted) and records whether the client attempted ECH at all.
func noteECHOffer(chi *tls.ClientHelloInfo) (*tls.Config, error) {
	if tc, ok := chi.Conn.(*tcpConn); ok {
		tc.echOffered = slices.Contains(chi.Extensions, extensionECH)
	}
	return nil, nil
}
