package mail

import (
	"chatmail-edge/internal/testcert"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

func newTestBackend(t *testing.T, cfg BackendConfig) *Backend {
	t.Helper()
	b, err := NewBackend(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// check runs the protocol check of b's protocol on conn.
func check(ctx context.Context, p Protocol, conn net.Conn, creds *Credentials) (CheckResult, error) {
	if p == IMAP {
		return CheckIMAP(ctx, conn, creds)
	}
	return CheckSMTP(ctx, conn, "edge.test", creds)
}

func TestNewBackend(t *testing.T) {
	b := newTestBackend(t, BackendConfig{Protocol: IMAP, Address: "127.0.0.1:993"})
	cfg := b.Config()
	if cfg.Mode != ModeTLS || cfg.DialTimeout != DefaultDialTimeout || cfg.TLSServerName != "127.0.0.1" {
		t.Errorf("defaults not filled in: %+v", cfg)
	}

	bad := []BackendConfig{
		{Address: "127.0.0.1:993"},
		{Protocol: SMTP, Mode: "starttls", Address: "127.0.0.1:465"},
		{Protocol: SMTP, Address: "127.0.0.1"},
		{Protocol: SMTP, Address: ":465"},
		{Protocol: SMTP, Address: "localhost:"},
		{Protocol: IMAP, Address: "127.0.0.1:993", DialTimeout: -time.Second},
	}
	for _, cfg := range bad {
		if _, err := NewBackend(cfg); err == nil {
			t.Errorf("NewBackend(%+v) accepted it", cfg)
		}
	}
}

func TestBackendProxyMode(t *testing.T) {
	daemons := startTestDaemons(t, requireProxyHeader)
	info := ClientInfo{
		Source:      netip.MustParseAddrPort("203.0.113.7:50123"),
		Destination: netip.MustParseAddrPort("192.0.2.1:993"),
		TLSVersion:  tls.VersionTLS13, CipherSuite: tls.TLS_CHACHA20_POLY1305_SHA256,
		ServerName: "mail.example.org", ALPN: "imap",
	}
	email, password, err := daemons.delivery.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []Protocol{IMAP, SMTP} {
		t.Run(p.String(), func(t *testing.T) {
			addr := map[Protocol]string{IMAP: daemons.imapAddr, SMTP: daemons.smtpAddr}[p]
			b := newTestBackend(t, BackendConfig{Protocol: p, Mode: ModeProxy, Address: addr})
			ctx := testContext(t, 10*time.Second)
			conn, err := b.Dial(ctx, info)
			if err != nil {
				t.Fatal(err)
			}
			// The daemon serves a login after the header, so it read exactly the header.
			got := loginWithHeader(ctx, t, daemons, p, conn, &Credentials{email, password}, info)
			if got.ssl == nil || !got.ssl.ClientSSL() {
				t.Fatalf("daemon saw no SSL TLV with PP2_CLIENT_SSL: %+v", got.ssl)
			}
			if version, cipher, _ := sslFields(got.ssl); version != "TLSv1.3" || cipher != "TLS_CHACHA20_POLY1305_SHA256" {
				t.Errorf("daemon saw TLS %q %q", version, cipher)
			}
			if got.authority != info.ServerName || got.alpn != info.ALPN {
				t.Errorf("daemon saw SNI %q ALPN %q", got.authority, got.alpn)
			}
		})
	}
}

// loginWithHeader logs in on conn, through a backend to daemons, and
// checks that the daemon got a PROXY header with info's addresses, which
// it returns.
func loginWithHeader(ctx context.Context, t *testing.T, daemons *testDaemons, p Protocol, conn net.Conn, creds *Credentials, info ClientInfo) parsedHeader {
	t.Helper()
	res, err := check(ctx, p, conn, creds)
	if err != nil || !res.LoggedIn {
		t.Fatalf("check through the backend: %+v, %v", res, err)
	}
	got := headerFields(t, daemons.nextHeader(t))
	if got.command != proxyproto.PROXY || got.source != info.Source || got.destination != info.Destination {
		t.Errorf("daemon saw %v %v -> %v, want PROXY %v -> %v", got.command, got.source, got.destination, info.Source, info.Destination)
	}
	return got
}

func TestBackendTLSMode(t *testing.T) {
	cert, roots := testcert.SelfSigned(t, "mail.example.org")
	daemons := startTestDaemons(t, implicitTLS(cert))
	for _, p := range []Protocol{IMAP, SMTP} {
		t.Run(p.String(), func(t *testing.T) {
			addr := map[Protocol]string{IMAP: daemons.imapAddr, SMTP: daemons.smtpAddr}[p]
			b := newTestBackend(t, BackendConfig{
				Protocol: p, Address: addr,
				TLSServerName: "mail.example.org", TLSVerify: true, RootCAs: roots,
			})
			ctx := testContext(t, 10*time.Second)
			for i, wantResumed := range []bool{false, true} {
				conn, err := b.Dial(ctx, ClientInfo{})
				if err != nil {
					t.Fatal(err)
				}
				state := conn.(*tls.Conn).ConnectionState()
				if state.Version != tls.VersionTLS13 || state.DidResume != wantResumed {
					t.Errorf("connection %d: version %#x resumed %v, want TLS 1.3 resumed %v", i, state.Version, state.DidResume, wantResumed)
				}
				// Reading the greeting also takes in the session ticket.
				if _, err := check(ctx, p, conn, nil); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestBackendProxyTLSMode: the daemon reads a PROXY header with the
// client's addresses and nothing else (no SNI, ALPN or TLS details, which
// would cross the network in the clear), then a verified TLS handshake,
// and serves a login.
func TestBackendProxyTLSMode(t *testing.T) {
	cert, roots := testcert.SelfSigned(t, "mail.example.org")
	daemons := startTestDaemons(t, proxyThenTLS(cert))
	email, password, err := daemons.delivery.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	info := ClientInfo{
		Source:      netip.MustParseAddrPort("203.0.113.7:50123"),
		Destination: netip.MustParseAddrPort("192.0.2.1:993"),
		TLSVersion:  tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256,
		ServerName: "hidden-by-ech.example.org", ALPN: "imap",
	}
	for _, p := range []Protocol{IMAP, SMTP} {
		t.Run(p.String(), func(t *testing.T) {
			addr := map[Protocol]string{IMAP: daemons.imapAddr, SMTP: daemons.smtpAddr}[p]
			b := newTestBackend(t, BackendConfig{Protocol: p, Mode: ModeProxyTLS, Address: addr,
				TLSServerName: "mail.example.org", TLSVerify: true, RootCAs: roots})
			ctx := testContext(t, 10*time.Second)
			raw, err := net.Dial("tcp", b.Address())
			if err != nil {
				t.Fatal(err)
			}
			conn, err := b.Open(ctx, raw, info)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if state := conn.(*tls.Conn).ConnectionState(); state.Version != tls.VersionTLS13 || len(state.VerifiedChains) == 0 {
				t.Errorf("TLS %#x, verified chains %d", state.Version, len(state.VerifiedChains))
			}
			got := loginWithHeader(ctx, t, daemons, p, conn, &Credentials{email, password}, info)
			if got.hasAuth || got.hasALPN || got.ssl != nil {
				t.Errorf("the header in the clear carries more than addresses: %+v", got)
			}
		})
	}
	t.Run("probe", func(t *testing.T) {
		b := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: ModeProxyTLS, Address: daemons.imapAddr,
			TLSServerName: "mail.example.org", TLSVerify: true, RootCAs: roots})
		if res, err := b.Probe(t.Context()); err != nil || !slices.Contains(res.Capabilities, "IMAP4rev2") {
			t.Fatalf("probe: %+v, %v", res, err)
		}
		if h := daemons.nextHeader(t); h.Command != proxyproto.LOCAL {
			t.Errorf("probe sent a %v header, want LOCAL", h.Command)
		}
	})
	t.Run("wrong name", func(t *testing.T) {
		b := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: ModeProxyTLS, Address: daemons.imapAddr,
			TLSServerName: "other.example.org", TLSVerify: true, RootCAs: roots})
		if _, err := b.Dial(testContext(t, 10*time.Second), info); err == nil || !strings.Contains(err.Error(), "TLS handshake with other.example.org: ") ||
			!strings.Contains(err.Error(), "certificate is valid for mail.example.org") {
			t.Fatalf("Dial: %v, want a verification error", err)
		}
		daemons.nextHeader(t) // the header went out before the handshake failed
	})
}

func TestBackendTLSVerify(t *testing.T) {
	cert, roots := testcert.SelfSigned(t, "mail.example.org")
	daemons := startTestDaemons(t, implicitTLS(cert))
	tests := []struct {
		name string
		cfg  BackendConfig
		want string // in the error; "" for success
	}{
		{"self-signed, not verified", BackendConfig{}, ""},
		{"wrong name", BackendConfig{TLSServerName: "other.example.org", TLSVerify: true, RootCAs: roots}, "certificate is valid for mail.example.org"},
		{"unknown authority", BackendConfig{TLSServerName: "mail.example.org", TLSVerify: true}, "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Protocol, tt.cfg.Address = IMAP, daemons.imapAddr
			conn, err := newTestBackend(t, tt.cfg).Dial(testContext(t, 10*time.Second), ClientInfo{})
			if err == nil {
				conn.Close()
			}
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Dial error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestBackendDialDeadAddress(t *testing.T) {
	ln := listenLoopback(t)
	addr := ln.Addr().String()
	ln.Close()
	for _, mode := range []Mode{ModeProxy, ModeTLS, ModeProxyTLS} {
		b := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: mode, Address: addr})
		_, err := b.Dial(testContext(t, 10*time.Second), ClientInfo{})
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: error %v, want connection refused", mode, err)
		}
		if want := "dial imap backend " + addr + " (" + string(mode) + "): "; err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: error %q does not start with %q", mode, err, want)
		}
	}
}

func TestBackendDialTimesOutOnSilentTLS(t *testing.T) {
	b := newTestBackend(t, BackendConfig{Protocol: SMTP, Address: scriptedServer(t, nil), DialTimeout: 200 * time.Millisecond})
	outer := testContext(t, time.Minute)
	_, err := b.Dial(outer, ClientInfo{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the dial timeout", err)
	}
	if outer.Err() != nil {
		t.Error("Dial returned only when the caller's context ended, not after DialTimeout")
	}
}

// TestBackendOpen: on a connection the caller dialed (the edge dials its
// own), Open starts the session: the daemon gets the PROXY header and
// greets; a daemon that is gone closes the connection with an error.
func TestBackendOpen(t *testing.T) {
	daemons := startTestDaemons(t, requireProxyHeader)
	b := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: ModeProxy, Address: daemons.imapAddr})
	if b.Address() != daemons.imapAddr {
		t.Fatalf("Address %q", b.Address())
	}
	raw, err := net.Dial("tcp", b.Address())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := b.Open(testContext(t, 10*time.Second), raw, ClientInfo{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if res, err := CheckIMAP(testContext(t, 10*time.Second), conn, nil); err != nil || !strings.HasPrefix(res.Greeting, "* OK") {
		t.Fatalf("after Open: %+v, %v", res, err)
	}
}

func TestBackendProbe(t *testing.T) {
	cert, _ := testcert.SelfSigned(t, "mail.example.org")
	proxied := startTestDaemons(t, requireProxyHeader)
	encrypted := startTestDaemons(t, implicitTLS(cert))
	tests := []struct {
		mode     Mode
		daemons  *testDaemons
		protocol Protocol
		greeting string
		cap      string
	}{
		{ModeProxy, proxied, IMAP, "* OK ", "AUTH=PLAIN"},
		{ModeProxy, proxied, SMTP, "220 example.org ESMTP", "AUTH PLAIN"},
		{ModeTLS, encrypted, IMAP, "* OK ", "IMAP4rev2"},
		{ModeTLS, encrypted, SMTP, "220 example.org ESMTP", "SIZE 31457280"},
	}
	for _, tt := range tests {
		t.Run(string(tt.mode)+"/"+tt.protocol.String(), func(t *testing.T) {
			addr := map[Protocol]string{IMAP: tt.daemons.imapAddr, SMTP: tt.daemons.smtpAddr}[tt.protocol]
			b := newTestBackend(t, BackendConfig{Protocol: tt.protocol, Mode: tt.mode, Address: addr})
			res, err := b.Probe(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(res.Greeting, tt.greeting) || !slices.Contains(res.Capabilities, tt.cap) {
				t.Errorf("greeting %q capabilities %q, want %q... and %q", res.Greeting, res.Capabilities, tt.greeting, tt.cap)
			}
			if res.DialLatency <= 0 || res.Latency <= 0 || res.LoggedIn || res.Address != addr {
				t.Errorf("result %+v", res)
			}
			if tt.mode == ModeProxy {
				if h := tt.daemons.nextHeader(t); h.Command != proxyproto.LOCAL {
					t.Errorf("probe sent a %v header, want LOCAL", h.Command)
				}
			}
		})
	}
}
