package service

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"chatmail-edge/ech"

	"golang.org/x/crypto/cryptobyte"
)

// TestCatalogueECH: Encrypted Client Hello that is malformed, made for a
// key or suite the edge does not have, GREASE, tampered with, or hiding an
// inner ClientHello that breaks RFC 9849's rules.
func TestCatalogueECH(t *testing.T) {
	env := startCatalogue(t, "")
	set := env.edge.echKeys.Load()
	cur := set.Current().Parsed()
	suite := cur.Suites[0]
	unusedID := cur.ConfigID + 1
	// A config of another key set (stale: the key was retired), and one
	// with the current config_id but another key (its payload cannot be
	// opened).
	otherKey := func(id uint8) []byte {
		k, err := ech.GenerateKey(reloadDomain, cur.MaxNameLen, id, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return ech.MarshalConfigList(k.Config)
	}
	stale, sameIDOtherKey := otherKey(unusedID), otherKey(cur.ConfigID)

	// The control: a good inner hello, sealed by hand, is opened and
	// answered. Every alert below then comes after the edge opened the
	// payload, from its checks of what was inside.
	c := env.send(t, "https", echHello(t, set, innerHello().encoded(make([]byte, 8)), nil))
	expectServerHello(t, c)
	c.Close()
	eventually(t, "the control's close counted", func() bool { return env.metric(t, failures("https", "handshake")) == 1 })

	sealed := func(inner helloSpec, padding []byte) []byte { return echHello(t, set, inner.encoded(padding), nil) }
	withExts := func(exts ...[]byte) helloSpec { h := innerHello(); h.exts = exts; return h }
	tls12Too := innerHello()
	tls12Too.versions = []uint16{tls.VersionTLS13, tls.VersionTLS12}
	withSessionID := innerHello()
	withSessionID.sessionID = randomBytes(32)
	// The outer hello's extensions are, in order: server_name,
	// supported_groups, signature_algorithms, supported_versions, key_share.
	referencing := func(types ...uint16) helloSpec {
		h := innerHello()
		h.shares, h.groups = nil, nil
		h.exts = [][]byte{outerExtensions(types...), innerECHExt()}
		return h
	}
	malformed := tls13Hello()
	malformed.exts = [][]byte{extension(extECH, func(b *cryptobyte.Builder) { b.AddUint8(echOuter) })} // the type, then nothing
	unknownSuite := tls13Hello()
	unknownSuite.exts = [][]byte{outerECH(0x7777, suite.AEAD, cur.ConfigID, randomBytes(32), randomBytes(200))}
	grease := tls13Hello() // RFC 9849 §6.2: a random config_id, enc and payload
	grease.exts = [][]byte{outerECH(suite.KDF, suite.AEAD, unusedID, randomBytes(32), randomBytes(239))}
	flipped := echHello(t, set, innerHello().encoded(make([]byte, 8)), func(ct []byte) { ct[len(ct)/2] ^= 1 })

	illegal := func(b []byte) func(*testing.T, *catalogueEnv) {
		return func(t *testing.T, env *catalogueEnv) { expectAlert(t, env.send(t, "https", b), alertIllegalParameter) }
	}
	// RFC 9849 §7.1: what cannot be opened is ignored and the handshake
	// goes on with the outer hello (and retry configs). These hand-built
	// clients cannot finish it: they leave after the ServerHello.
	goesOnWithoutECH := func(listener string, b []byte) func(*testing.T, *catalogueEnv) {
		return func(t *testing.T, env *catalogueEnv) {
			c := env.send(t, listener, b)
			expectServerHello(t, c)
			c.(*net.TCPConn).CloseWrite()
			readToClose(t, c)
		}
	}
	env.run(t, []badInput{
		{name: "malformed extension", send: func(t *testing.T, env *catalogueEnv) {
			expectAlert(t, env.send(t, "https", malformed.record()), alertDecodeError)
		}, counts: failures("https", "handshake"), log: dropped("tls: client sent invalid encrypted_client_hello extension")},
		{name: "unknown HPKE suite", send: goesOnWithoutECH("https", unknownSuite.record()),
			counts: failures("https", "handshake"), log: dropped("EOF")},
		{name: "GREASE", send: goesOnWithoutECH("imaps", grease.record()),
			counts: failures("imaps", "handshake"), log: dropped("EOF")},
		{name: "corrupted payload", send: goesOnWithoutECH("https", flipped),
			counts: failures("https", "handshake"), log: dropped("EOF")},
		{name: "stale config id gets retry configs", send: retried(stale),
			counts: echRejected("imaps"), log: rejectedECH},
		{name: "payload for another key under the current config id gets retry configs", send: retried(sameIDOtherKey),
			counts: echRejected("imaps"), log: rejectedECH},
		{name: "ech_outer_extensions naming encrypted_client_hello", send: illegal(sealed(withExts(outerExtensions(extECH), innerECHExt()), nil)),
			counts: failures("https", "handshake"), log: invalidInnerHello},
		{name: "ech_outer_extensions naming what the outer hello lacks", send: illegal(sealed(withExts(outerExtensions(0x001b), innerECHExt()), nil)),
			counts: failures("https", "handshake"), log: invalidInnerHello},
		{name: "ech_outer_extensions out of order", send: illegal(sealed(referencing(extKeyShare, extGroups), nil)),
			counts: failures("https", "handshake"), log: invalidInnerHello},
		{name: "inner hello offering TLS 1.2", send: illegal(sealed(tls12Too, nil)),
			counts: failures("https", "handshake"), log: invalidInnerHello},
		{name: "inner hello without the inner ECH extension", send: illegal(sealed(withExts(), nil)),
			counts: failures("https", "handshake"), log: invalidInnerHello},
		{name: "inner hello with a legacy_session_id", send: illegal(sealed(withSessionID, nil)),
			counts: failures("https", "handshake"), log: invalidInnerHello},
		{name: "inner padding not zeros", send: illegal(sealed(innerHello(), []byte{0, 0, 1})),
			counts: failures("https", "handshake"), log: invalidInnerHello},
	})

	// The control again, referencing outer extensions in their order: the
	// out-of-order case above failed for its order only.
	c = env.send(t, "https", sealed(referencing(extGroups, extKeyShare), nil))
	expectServerHello(t, c)
	c.Close()
}

// invalidInnerHello is crypto/tls's word for every inner hello it opened
// and refused (crypto/tls/ech.go, errInvalidECHExt).
var invalidInnerHello = dropped("tls: client sent invalid encrypted_client_hello extension")

// rejectedECH is the line of a handshake whose ECH was not accepted; the
// client then leaves with an ech_required alert (RFC 9849 §6.1.6).
var rejectedECH = logLine{"connection", "rejected"}

func echRejected(listener string) string {
	return `chatmail_edge_handshakes_total{ech="rejected",listener="` + listener + `"}`
}

// retried is a Go client on 993 with an ECH config list the edge cannot
// open: it gets the rejection with the published configs as retry configs
// (RFC 9849 §6.1.6), and with them its ECH is accepted.
func retried(list []byte) func(*testing.T, *catalogueEnv) {
	return func(t *testing.T, env *catalogueEnv) {
		cfg := env.tlsConfig()
		cfg.EncryptedClientHelloConfigList = list
		_, err := tls.Dial("tcp", env.addr("imaps"), cfg)
		rej, ok := errors.AsType[*tls.ECHRejectionError](err)
		if !ok {
			t.Fatalf("got %v, want an ECH rejection", err)
		}
		if !bytes.Equal(rej.RetryConfigList, env.echList()) {
			t.Fatal("the retry configs are not the published ones")
		}
		cfg.EncryptedClientHelloConfigList = rej.RetryConfigList
		c, err := tls.Dial("tcp", env.addr("imaps"), cfg)
		if err != nil || !c.ConnectionState().ECHAccepted {
			t.Fatalf("with the retry configs: %v", err)
		}
		c.Close()
	}
}
