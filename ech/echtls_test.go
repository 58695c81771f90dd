package ech

import (
	"bytes"
	"chatmail-edge/internal/testcert"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// These tests cross-check the wire format and key handling against crypto/tls
// itself: a real server and client handshake over an in-memory pipe.

const testInnerName = "mail.example.org"

type handshakeResult struct {
	client, server       tls.ConnectionState
	clientErr, serverErr error
}

// echHandshake runs one TLS 1.3 handshake: the server holds serverKeys, the
// client uses clientList and asks for testInnerName.
func echHandshake(t *testing.T, serverKeys []tls.EncryptedClientHelloKey, clientList []byte) handshakeResult {
	t.Helper()
	cert, pool := testcert.SelfSigned(t, testPublicName, testInnerName)
	clientConn, serverConn := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	clientConn.SetDeadline(deadline)
	serverConn.SetDeadline(deadline)

	server := tls.Server(serverConn, &tls.Config{
		Certificates:             []tls.Certificate{cert},
		EncryptedClientHelloKeys: serverKeys,
	})
	client := tls.Client(clientConn, &tls.Config{
		ServerName:                     testInnerName,
		RootCAs:                        pool,
		EncryptedClientHelloConfigList: clientList,
	})
	serverDone := make(chan error, 1)
	go func() {
		err := server.Handshake()
		serverConn.Close()
		serverDone <- err
	}()
	var r handshakeResult
	r.clientErr = client.Handshake()
	clientConn.Close()
	r.serverErr = <-serverDone
	r.client, r.server = client.ConnectionState(), server.ConnectionState()
	return r
}

func TestCryptoTLSAcceptsOurECHKeys(t *testing.T) {
	set := NewKeySet(testECHKey(t, 0x2a, testEpoch))
	r := echHandshake(t, set.TLSKeys(), set.ConfigList())
	if r.clientErr != nil || r.serverErr != nil {
		t.Fatalf("handshake: client %v, server %v", r.clientErr, r.serverErr)
	}
	if !r.client.ECHAccepted || !r.server.ECHAccepted {
		t.Errorf("ECHAccepted: client %v, server %v; want both true", r.client.ECHAccepted, r.server.ECHAccepted)
	}
	if r.server.ServerName != testInnerName {
		t.Errorf("server saw SNI %q, want the inner name %q", r.server.ServerName, testInnerName)
	}
}

func TestCryptoTLSAcceptsHandMarshalledList(t *testing.T) {
	// A list assembled from a parsed-and-remarshalled config, with an
	// unknown-version config ahead of it that the client must skip.
	k := testECHKey(t, 9, testEpoch)
	parsed := k.Parsed()
	unknown := []byte{0xfe, 0x0c, 0x00, 0x02, 0xaa, 0xbb}
	list := MarshalConfigList(unknown, parsed.Marshal())
	r := echHandshake(t, NewKeySet(k).TLSKeys(), list)
	if r.clientErr != nil || !r.client.ECHAccepted || !r.server.ECHAccepted {
		t.Fatalf("handshake: client %v (accepted %v), server %v (accepted %v)",
			r.clientErr, r.client.ECHAccepted, r.serverErr, r.server.ECHAccepted)
	}
}

func TestCryptoTLSOldKeyStillDecryptsAfterRotation(t *testing.T) {
	old := testECHKey(t, 1, testEpoch)
	cachedList := NewKeySet(old).ConfigList()
	rotated := NewKeySet(old, testECHKey(t, 2, testEpoch.Add(time.Hour)))
	r := echHandshake(t, rotated.TLSKeys(), cachedList)
	if r.clientErr != nil || !r.client.ECHAccepted || !r.server.ECHAccepted {
		t.Fatalf("client with the old config: client %v (accepted %v), server %v (accepted %v)",
			r.clientErr, r.client.ECHAccepted, r.serverErr, r.server.ECHAccepted)
	}
}

func TestCryptoTLSRetryConfigsAreThePublishedList(t *testing.T) {
	set := NewKeySet(testECHKey(t, 1, testEpoch), testECHKey(t, 2, testEpoch.Add(time.Hour)))
	retired := NewKeySet(testECHKey(t, 3, testEpoch.Add(-time.Hour))) // unknown to the server
	r := echHandshake(t, set.TLSKeys(), retired.ConfigList())
	var rejection *tls.ECHRejectionError
	if !errors.As(r.clientErr, &rejection) {
		t.Fatalf("client error = %v, want an ECHRejectionError", r.clientErr)
	}
	if !bytes.Equal(rejection.RetryConfigList, set.ConfigList()) {
		t.Errorf("retry_configs = %x, want the published list %x", rejection.RetryConfigList, set.ConfigList())
	}
	if r.server.ECHAccepted {
		t.Errorf("server reports ECH accepted for an unknown config")
	}
}
