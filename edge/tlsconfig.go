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
// ECH keys sit on this base config only, so the same keys also serve the
// retry_configs of a rejected ECH (RFC 9849 §7.1).
func (e *Edge) newTLSConfig(kind Kind) *tls.Config {
	return &tls.Config{
		MinVersion:                  e.cfg.MinTLSVersion,
		NextProtos:                  nextProtos(kind),
		GetCertificate:              e.getCert,
		GetEncryptedClientHelloKeys: e.echKeysFor,
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

// handshakeInfo is what the edge learns about one handshake while crypto/tls
// runs it. It travels in the handshake's context (ClientHelloInfo.Context).
type handshakeInfo struct {
	front     *echFront // opens the ECH hello in front of crypto/tls; nil without ECH keys
	keysAsked int       // calls of GetEncryptedClientHelloKeys
	offered   bool      // the hello carried an encrypted_client_hello extension
}

type handshakeInfoKey struct{}

func handshakeInfoOf(chi *tls.ClientHelloInfo) *handshakeInfo {
	hi, _ := chi.Context().Value(handshakeInfoKey{}).(*handshakeInfo)
	return hi
}

// echOffered reports whether the client attempted ECH (or sent GREASE).
func (hi *handshakeInfo) echOffered() bool { return hi.offered }

// echKeysFor gives crypto/tls the ECH keys for a handshake. crypto/tls asks
// for a hello with an encrypted_client_hello extension to decrypt it, and
// then for every TLS 1.3 handshake for the retry_configs of a rejected ECH.
//
// For the first, only the keys with the config_id and cipher suite the
// client named can open its hello (RFC 9849 §7.1). The ECH front has
// opened it already if one could; what is left is a stale config, GREASE
// (§6.2) or a suite the edge does not offer. crypto/tls would try every key
// and, for a suite it does not implement, abort with internal_error, where
// §7.1 says to go on without ECH: with no key left, it does, and sends the
// retry configs.
func (e *Edge) echKeysFor(chi *tls.ClientHelloInfo) ([]tls.EncryptedClientHelloKey, error) {
	keys := *e.echKeys.Load()
	hi := handshakeInfoOf(chi)
	if hi == nil {
		return keys, nil
	}
	hi.keysAsked++
	if slices.Contains(chi.Extensions, extensionECH) {
		hi.offered = true
	}
	if f := hi.front; hi.keysAsked == 1 && hi.offered && f != nil && f.outerSeen && !f.accepted {
		return f.keys.matching(f.outerConfigID, f.outerSuite), nil
	}
	return keys, nil
}
