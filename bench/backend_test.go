package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"chatmail-edge/ech"
	"chatmail-edge/internal/testcert"
	"chatmail-edge/mail"
)

func TestSkipProxyHeader(t *testing.T) {
	v2 := mail.AppendProxyV2(nil, mail.ClientInfo{
		Source:      netip.MustParseAddrPort("192.0.2.1:5000"),
		Destination: netip.MustParseAddrPort("127.0.0.1:443"),
		TLSVersion:  tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256, ServerName: "bench.example", ALPN: "imap",
	})
	for name, header := range map[string][]byte{
		"v2 with TLVs": v2,
		"v2 local":     mail.AppendProxyV2Local(nil),
		"v1 (nginx)":   []byte("PROXY TCP4 127.0.0.1 127.0.0.1 40000 443\r\n"),
	} {
		r := bufio.NewReader(io.MultiReader(bytes.NewReader(header), strings.NewReader("SINK 1\r\n")))
		if err := skipProxyHeader(r); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if rest, _ := r.ReadString('\n'); rest != "SINK 1\r\n" {
			t.Errorf("%s: after the header comes %q", name, rest)
		}
	}
	for name, bad := range map[string]string{
		"none":        "SINK 1\r\n    ",
		"v1 too long": "PROXY " + strings.Repeat("x", 200),
		"short":       "PRO",
	} {
		if err := skipProxyHeader(bufio.NewReader(strings.NewReader(bad))); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestBackendCommands(t *testing.T) {
	in := "SINK 5\r\nhelloECHO 3\r\nabcSOURCE 4\r\nNOPE 1\r\nSINK x\r\n"
	var out bytes.Buffer
	err := serveBackendCommands(bufio.NewReader(strings.NewReader(in)), &out)
	if err != io.EOF {
		t.Errorf("end of input: %v, want EOF", err)
	}
	want := "OK\r\nabc\x00\x00\x00\x00BAD unknown command \"NOPE\"\r\nBAD bad count \"x\"\r\n"
	if out.String() != want {
		t.Errorf("backend wrote %q, want %q", out.String(), want)
	}
}

// startTLSBackend serves the bench backend over TLS with ECH in this
// process, as a stand-in for a front end. The target offers ECH.
func startTLSBackend(t *testing.T) *target {
	t.Helper()
	cert, pool := testcert.SelfSigned(t, "bench.example")
	keys := echKeySet(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates:             []tls.Certificate{cert},
		EncryptedClientHelloKeys: keys.TLSKeys(),
		MinVersion:               tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go serveBackend(ln, false)
	return &target{Addr: ln.Addr().String(), ServerName: "bench.example", ALPN: []string{"imap"}, Roots: pool, ECH: keys.ConfigList()}
}

func echKeySet(t *testing.T) *ech.KeySet {
	t.Helper()
	k, err := ech.GenerateKey("bench.example", 32, 1, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return ech.NewKeySet(k)
}

// The modes against an in-process server, at tiny sizes; only counts are
// checked, never times.
func TestModesInProcess(t *testing.T) {
	tg := startTLSBackend(t)
	// The servers are in this process, which never goes quiet while the
	// client runs; watch an idle child instead, and poll quickly.
	idleChild := exec.Command("sleep", "60")
	if err := idleChild.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idleChild.Process.Kill(); idleChild.Wait() })
	defer func(p time.Duration) { quietPoll = p }(quietPoll)
	quietPoll = 5 * time.Millisecond
	self := []procGroup{{Label: "idle child", Roots: fixedRoots(idleChild.Process.Pid)}}
	ctx := context.Background()

	hs, err := runHandshakes(ctx, tg, self, handshakeConfig{N: 20, Concurrency: 4, Resume: true, Warmup: 2, Timeout: 10 * time.Second})
	if err != nil || hs.Errors != 0 || hs.Resumed != 20 || hs.ECHAccepted != 20 || len(hs.CPU) != 1 {
		t.Errorf("handshake: %+v, %v", hs, err)
	}

	idle, err := runIdle(ctx, tg, self, idleConfig{N: 10, Concurrency: 4, Traffic: 4096, SettleTimeout: time.Second, Timeout: 10 * time.Second})
	if err != nil || idle.Opened != 10 || idle.Alive != 10 {
		t.Errorf("idle: %+v, %v", idle, err)
	}

	for _, dir := range []bulkDirection{bulkUp, bulkDown, bulkBoth} {
		b, err := runBulk(ctx, tg, self, bulkConfig{Conns: 2, Bytes: 1 << 20, Direction: dir, Timeout: 10 * time.Second})
		want := int64(1 << 20)
		if dir == bulkBoth {
			want *= 2
		}
		if err != nil || b.Moved != want {
			t.Errorf("bulk %s: moved %d, %v; want %d", dir, b.Moved, err, want)
		}
	}

	for _, prepare := range []bool{false, true} {
		restarted := false
		st, err := runStorm(ctx, tg, self, stormConfig{N: 20, Window: 50 * time.Millisecond, Tickets: true, Concurrency: 4, PrepareHellos: prepare,
			Restart: func(context.Context) error { restarted = true; return nil }, Timeout: 10 * time.Second, Sample: 5 * time.Millisecond})
		if err != nil || st.Served != 20 || st.Errors != 0 || st.Resumed != 20 || st.ECHAccepted != 20 || !restarted || st.PeakRSSKiB[0] == 0 {
			t.Errorf("storm (hellos prepared: %v): %+v, %v (restart ran: %v)", prepare, st, err, restarted)
		}
	}
}

// A client on a helloFirstConn has written its whole ClientHello before
// the connection is opened, and the handshake then completes over it, ECH
// and a resumed session included.
func TestHelloFirstConnSendsThePreparedHello(t *testing.T) {
	tg := startTLSBackend(t)
	cache := tls.NewLRUClientSessionCache(1)
	for round, wantResumed := range []bool{false, true} {
		opened := 0
		var hc *helloFirstConn
		hc = &helloFirstConn{open: func() (net.Conn, error) {
			opened++
			held := hc.held
			// One complete record of type handshake (22) holding a
			// ClientHello (1), RFC 8446 §5.1 and §4.
			if len(held) < 6 || held[0] != 22 || int(held[3])<<8|int(held[4]) != len(held)-5 || held[5] != 1 {
				t.Errorf("round %d: held before opening: % x…, want one ClientHello record", round, held[:min(len(held), 8)])
			}
			return tg.connectTCP(context.Background(), 0, time.Now().Add(10*time.Second))
		}}
		conn, info, err := tg.handshake(context.Background(), tls.Client(hc, tg.tlsConfig(cache)))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		conn.Close()
		if opened != 1 || !info.ECHAccepted || info.Resumed != wantResumed || !strings.HasPrefix(info.Greeting, "* OK") {
			t.Errorf("round %d: opened %d times, %+v; want once, ECH accepted, resumed %v, a greeting", round, opened, info, wantResumed)
		}
	}
}

func TestHelloFirstConnClosedBeforeOpen(t *testing.T) {
	hc := &helloFirstConn{open: func() (net.Conn, error) {
		t.Error("opened after Close")
		return nil, errors.New("unreachable")
	}}
	if _, err := hc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	hc.Close()
	if _, err := hc.Read(make([]byte, 1)); !errors.Is(err, errClosedBeforeOpen) {
		t.Errorf("Read after Close: %v, want %v", err, errClosedBeforeOpen)
	}
	if _, err := hc.Write([]byte("more")); !errors.Is(err, errClosedBeforeOpen) {
		t.Errorf("Write after Close: %v, want %v", err, errClosedBeforeOpen)
	}
}

func TestDialRefusesRejectedECH(t *testing.T) {
	tg := startTLSBackend(t)
	// A config of other keys: the server rejects ECH and completes the
	// handshake with its retry configs; the client must not count that as
	// a connection with ECH.
	tg.ECH = echKeySet(t).ConfigList()
	conn, _, err := tg.dial(context.Background(), 0, nil, time.Now().Add(10*time.Second))
	if err == nil {
		conn.Close()
		t.Fatal("a connection without ECH was accepted as one with ECH")
	}
}

func TestLoopbackSources(t *testing.T) {
	got, err := loopbackSources("127.0.0.1:993", 3)
	if err != nil || len(got) != 3 || got[2].String() != "127.0.0.3" {
		t.Errorf("loopbackSources = %v, %v", got, err)
	}
	for _, addr := range []string{"192.0.2.1:993", "[::1]:993", "localhost:993"} {
		if got, _ := loopbackSources(addr, 3); got != nil {
			t.Errorf("loopbackSources(%s) = %v, want none", addr, got)
		}
	}
	if _, err := loopbackSources("nonsense", 2); err == nil {
		t.Error("bad address accepted")
	}
}
