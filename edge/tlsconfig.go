package edge

import (
	"crypto/tls"
	"fmt"
	"slices"
)

// acmeTLSALPN is the protocol of TLS-ALPN-01 validations (RFC 8737 §6.2); the
// certificate source answers them inside the handshake.
const acmeTLSALPN = "acme-tls/1"

// extensionECH is the encrypted_client_hello extension (RFC 9849 §5). A hello
// carries it when the client attempts ECH (outer) and in the decrypted inner
// hello too, so its presence means "offered" whatever the outcome.
const extensionECH = 0xfe0d

// newTLSConfigs builds a listener's TLS configurations once: the one every
// handshake starts with, and one per lowest TLS version, which its
// GetConfigForClient hands to crypto/tls by the route the ClientHello asks
// for (configForClient). Everything that changes at run time (ECH keys,
// certificates, ticket keys, the minimum versions) is read through
// callbacks or set with SetSessionTicketKeys, so no handshake ever clones
// or allocates a tls.Config.
//
// Every configuration has the same ECH keys, so they also serve the
// retry_configs of a rejected ECH (RFC 9849 §7.1). The session ticket keys
// are set on the first only: crypto/tls takes a GetConfigForClient
// result's keys from the original configuration when it has none of its
// own (tls.Config.ticketKeys).
func (l *listener) newTLSConfigs() {
	build := func(minVersion uint16) *tls.Config {
		return &tls.Config{
			MinVersion:                  minVersion,
			NextProtos:                  nextProtos(l.cfg.Kind),
			GetCertificate:              l.e.getCert,
			GetEncryptedClientHelloKeys: l.e.echKeysFor,
			// Full-size records from the first byte: mail is bulk data, and
			// fewer records cost less CPU per byte.
			DynamicRecordSizingDisabled: true,
		}
	}
	l.tls12, l.tls13 = build(tls.VersionTLS12), build(tls.VersionTLS13)
	l.tlsConfig = build(tls.VersionTLS12)
	l.tlsConfig.GetConfigForClient = l.configForClient
}

// configForClient picks the configuration with the lowest TLS version of
// the route the ClientHello asks for: crypto/tls agrees on the version
// before it picks the application protocol, with the configuration this
// returns, so that a TLS 1.2 hello asking for imap on 443 gets a
// protocol_version alert (RFC 8446 §4.2.1) while one asking for h2 gets the
// site. It sees the inner hello when ECH was accepted. It allocates nothing.
func (l *listener) configForClient(chi *tls.ClientHelloInfo) (*tls.Config, error) {
	route := l.route(negotiatedALPN(l.tlsConfig.NextProtos, chi.SupportedProtos))
	minVersion := l.e.limits.Load().MinTLS.forRoute(route)
	if hi := handshakeInfoOf(chi); hi != nil {
		hi.route, hi.minTLS, hi.clientMaxTLS = route, minVersion, 0
		for _, v := range chi.SupportedVersions {
			hi.clientMaxTLS = max(hi.clientMaxTLS, v)
		}
	}
	if minVersion == tls.VersionTLS13 {
		return l.tls13, nil
	}
	return l.tls12, nil
}

// negotiatedALPN is the protocol crypto/tls will pick from the client's
// list: the first of the server's that the client offers (server
// preference, as its negotiateALPN); "" for none.
func negotiatedALPN(server, client []string) string {
	for _, s := range server {
		if slices.Contains(client, s) {
			return s
		}
	}
	return ""
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
	// The route the hello asks for, its lowest TLS version and the
	// highest the client offers (configForClient): 0 before.
	route        Route
	minTLS       uint16
	clientMaxTLS uint16
}

// versionRefusal explains a handshake that failed because the client
// offers only TLS versions below its route's minimum; "" otherwise.
func (hi *handshakeInfo) versionRefusal() string {
	if hi.minTLS == 0 || hi.clientMaxTLS >= hi.minTLS {
		return ""
	}
	return fmt.Sprintf("the %s route needs %s or later, the client offers up to %s", hi.route, tls.VersionName(hi.minTLS), tls.VersionName(hi.clientMaxTLS))
}

type handshakeInfoKey struct{}

func handshakeInfoOf(chi *tls.ClientHelloInfo) *handshakeInfo {
	ctx := chi.Context()
	if ctx == nil { // a hello that did not come through a handshake (tests)
		return nil
	}
	hi, _ := ctx.Value(handshakeInfoKey{}).(*handshakeInfo)
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
