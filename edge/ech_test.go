package edge

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/ech"
)

// testKeySet makes an ECH key set with public_name chat.example.
func testKeySet(t testing.TB, configIDs ...uint8) *ech.KeySet {
	t.Helper()
	var keys []*ech.Key
	now := time.Now()
	for i, id := range configIDs {
		k, err := ech.GenerateKey("chat.example", ech.MaxNameLength("chat.example", "www.chat.example"), id, now.Add(time.Duration(i)*time.Minute), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return ech.NewKeySet(keys...)
}

func (te *testEdge) useKeys(set *ech.KeySet) {
	te.SetECHKeys(set.TLSKeys(), set.Current().ConfigID())
}

func TestECHAcceptedOnEveryPortAndALPN(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	set := testKeySet(t, 7)
	te.useKeys(set)
	list := set.ConfigList()
	cases := []struct {
		listener string
		alpn     []string
		want     string
	}{
		{"https", []string{"imap"}, "* OK test imap"},
		{"https", []string{"smtp"}, "220 test smtp"},
		{"https", []string{"h2"}, "h2"},
		{"https", []string{"http/1.1"}, "web HTTP/1.1"},
		{"https", nil, "web HTTP/1.1"},
		{"imaps", nil, "* OK test imap"},
		{"smtps", nil, "220 test smtp"},
	}
	for _, c := range cases {
		conn, err := te.dial(t, c.listener, c.alpn, list)
		if err != nil {
			t.Fatalf("%s %v: %v", c.listener, c.alpn, err)
		}
		cs := conn.ConnectionState()
		if !cs.ECHAccepted || cs.ServerName != "chat.example" {
			t.Fatalf("%s %v: ECH accepted %v, SNI %q", c.listener, c.alpn, cs.ECHAccepted, cs.ServerName)
		}
		switch {
		case c.want == "h2":
			if cs.NegotiatedProtocol != "h2" {
				t.Fatalf("ALPN h2 negotiated %q", cs.NegotiatedProtocol)
			}
		case strings.HasPrefix(c.want, "web"):
			io.WriteString(conn, "GET / HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\r\n")
			body, _ := io.ReadAll(conn)
			if !strings.Contains(string(body), c.want) {
				t.Fatalf("%v: got %q", c.alpn, body)
			}
		default:
			if got := readLine(t, conn); !strings.HasPrefix(got, c.want) {
				t.Fatalf("%s %v: got %q", c.listener, c.alpn, got)
			}
		}
		conn.Close()
	}
	var accepted uint64
	for _, l := range te.Snapshot().Listeners {
		accepted += l.ECH["accepted"]
	}
	if accepted != uint64(len(cases)) {
		t.Fatalf("%d ECH accepted counted, want %d", accepted, len(cases))
	}
}

// TestStaleConfigGetsRetryConfigs: a client holding the config of a key the
// edge does not have is rejected with the current config as retry_configs
// (RFC 9849 §6.1.6), on every port, and succeeds with them.
func TestStaleConfigGetsRetryConfigs(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	current := testKeySet(t, 1)
	te.useKeys(current)
	stale := testKeySet(t, 2).ConfigList()
	for _, l := range []string{"https", "imaps", "smtps"} {
		_, err := te.dial(t, l, nil, stale)
		rej, ok := errors.AsType[*tls.ECHRejectionError](err)
		if !ok {
			t.Fatalf("%s: want an ECH rejection, got %v", l, err)
		}
		if !bytes.Equal(rej.RetryConfigList, current.ConfigList()) {
			t.Fatalf("%s: retry configs %x, want the current list %x", l, rej.RetryConfigList, current.ConfigList())
		}
		conn, err := te.dial(t, l, nil, rej.RetryConfigList)
		if err != nil {
			t.Fatalf("%s with retry configs: %v", l, err)
		}
		if !conn.ConnectionState().ECHAccepted {
			t.Fatalf("%s: ECH not accepted with the retry configs", l)
		}
		conn.Close()
	}
	// The edge counts a rejection when its side of the handshake ends,
	// which may be after the client has given up.
	waitFor(t, 5*time.Second, "3 rejections counted", func() bool {
		var rejected uint64
		for _, l := range te.Snapshot().Listeners {
			rejected += l.ECH["rejected"]
		}
		return rejected == 3
	})
}

// TestRotatedKeysStayUsable: after a rotation the old config still works
// (decrypt-only), and only the new one is sent as retry config.
func TestRotatedKeysStayUsable(t *testing.T) {
	te, _, _ := startEdgeWithBackends(t, nil)
	set := testKeySet(t, 10, 11) // 11 is newer
	te.useKeys(set)
	if set.Current().ConfigID() != 11 {
		t.Fatalf("current key %d, want 11", set.Current().ConfigID())
	}
	older := ech.NewKeySet(set.Keys[1]).ConfigList()
	conn, err := te.dial(t, "imaps", nil, older)
	if err != nil {
		t.Fatal(err)
	}
	if !conn.ConnectionState().ECHAccepted {
		t.Fatal("old key no longer accepted")
	}
	conn.Close()
	_, err = te.dial(t, "imaps", nil, testKeySet(t, 12).ConfigList())
	rej, ok := errors.AsType[*tls.ECHRejectionError](err)
	if !ok || !bytes.Equal(rej.RetryConfigList, set.ConfigList()) {
		t.Fatalf("retry configs after rotation: %v", err)
	}
}

// TestECHResumptionAcrossRestart: resumed handshakes with ECH are accepted,
// also by a restarted edge with the same ticket and ECH keys.
func TestECHResumptionAcrossRestart(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "tickets")
	set := testKeySet(t, 3)
	cache := tls.NewLRUClientSessionCache(8)
	connect := func(te *testEdge) (resumed bool) {
		conn, err := tls.Dial("tcp", te.addr("https"), &tls.Config{
			ServerName: "chat.example", RootCAs: te.roots, NextProtos: []string{"imap"},
			EncryptedClientHelloConfigList: set.ConfigList(), ClientSessionCache: cache,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		readLine(t, conn)
		if !conn.ConnectionState().ECHAccepted {
			t.Fatal("ECH not accepted")
		}
		return conn.ConnectionState().DidResume
	}
	first, _, _ := startEdgeWithBackends(t, func(c *Config) { c.TicketKeyFile = keyFile })
	first.useKeys(set)
	if connect(first) {
		t.Fatal("first connection resumed")
	}
	if !connect(first) {
		t.Fatal("no resumption with ECH")
	}
	first.Shutdown()
	second, _, _ := startEdgeWithBackends(t, func(c *Config) { c.TicketKeyFile = keyFile })
	second.useKeys(set)
	if !connect(second) {
		t.Fatal("no ECH resumption after a restart")
	}
}
