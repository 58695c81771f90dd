package web

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"chatmail-edge/acme"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

type fakeCerts []acme.CertStatus

func (f fakeCerts) Status() []acme.CertStatus { return f }

// statusTestServer has a failing ACME certificate, one service up and one
// down, some edge counters and a recorded error.
func statusTestServer(t *testing.T) *Server {
	recent := NewRecentLog(10)
	log := zap.New(recent.Core())
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s, err := New(Config{Domain: "chat.example", Version: "v1.2.3"}, Deps{
		Log:           log,
		ECHConfigList: func() []byte { return []byte{0, 3, 0xfe, 0x0d, 0} },
		ECHKey: func() ECHKeyInfo {
			return ECHKeyInfo{ConfigID: 42, PublicName: "chat.example", Created: now.Add(-72 * time.Hour), Keys: 2}
		},
		Certs: fakeCerts{{
			Names: []string{"chat.example", "mta-sts.chat.example"}, Source: "acme", Issuer: "R11",
			NotAfter: now.Add(10 * 24 * time.Hour), LastError: "acme: urn:ietf:params:acme:error:rateLimited",
			LastErrorAt: now.Add(-time.Hour), NextAttempt: now.Add(time.Hour),
		}},
		EdgeStats: func() EdgeStats {
			return EdgeStats{ActiveSessions: 3, Listeners: []ListenerStats{{
				Name: "https", Address: "[::]:443", Accepted: 10, Active: 4,
				ECH:              map[string]uint64{"accepted": 7, "rejected": 1, "none": 2},
				Routes:           map[string]uint64{"imap": 5, "http": 4},
				Failures:         map[string]uint64{"backend": 1, "timeout": 0},
				HandshakeBuckets: []time.Duration{time.Millisecond, time.Second}, HandshakeCounts: []uint64{6, 10},
				HandshakeCount: 10, HandshakeSum: 2 * time.Second,
			}}}
		},
		Probes: []Probe{
			{Name: "IMAP", Target: "127.0.0.1:993 (tls)", Run: func(context.Context) error { return nil }},
			{Name: "SMTP", Target: "127.0.0.1:465 (tls)", Run: func(context.Context) error { return errors.New("connection refused by 127.0.0.1:465") }},
		},
		Recent: recent,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return now }
	s.CheckHealth(t.Context())
	return s
}

func TestStatusPublicAndAdmin(t *testing.T) {
	s := statusTestServer(t)
	public := do(s.Handler(), "GET", "https://chat.example/status").Body.String()
	for _, want := range []string{"v1.2.3", "chat.example, mta-sts.chat.example", "2026-05-11 12:00 UTC", "soon", "<dd>42</dd>", "3d 0h ago", "Some services are down"} {
		if !strings.Contains(public, want) {
			t.Errorf("public page lacks %q", want)
		}
	}
	for _, secret := range []string{"rateLimited", "R11", "127.0.0.1", "connection refused", "[::]:443", "Keys held", "service down"} {
		if strings.Contains(public, secret) {
			t.Errorf("public page shows %q", secret)
		}
	}
	admin := do(s.AdminHandler(), "GET", "http://127.0.0.1:8081/").Body.String()
	for _, want := range []string{"rateLimited", "R11", "2026-05-01T13:00:00Z", "127.0.0.1:465 (tls)", "connection refused", "[::]:443",
		"<td>7</td><td>1</td><td>2</td>", "http 4, imap 5", "backend 1", "Keys held", "service down"} {
		if !strings.Contains(admin, want) {
			t.Errorf("admin page lacks %q", want)
		}
	}
	if rec := do(s.Handler(), "GET", "https://chat.example/"); strings.Contains(rec.Body.String(), "metrics") {
		t.Error("the public site links to metrics")
	}
}

func TestMetrics(t *testing.T) {
	s := statusTestServer(t)
	text := do(s.AdminHandler(), "GET", "http://127.0.0.1:8081/metrics").Body.String()
	for _, want := range []string{
		`chatmail_edge_build_info{version="v1.2.3"} 1`,
		`chatmail_edge_handshakes_total{ech="rejected",listener="https"} 1`,
		`chatmail_edge_connections_routed_total{listener="https",route="imap"} 5`,
		`chatmail_edge_backend_dial_errors_total{listener="https"} 1`,
		`chatmail_edge_connection_failures_total{listener="https",reason="timeout"} 0`,
		`chatmail_edge_handshake_duration_seconds_bucket{listener="https",le="0.001"} 6`,
		`chatmail_edge_handshake_duration_seconds_count{listener="https"} 10`,
		`chatmail_edge_sessions_active 3`,
		`chatmail_edge_ech_keys 2`,
		`chatmail_edge_certificate_expiry_timestamp_seconds{cert="chat.example,mta-sts.chat.example",source="acme"} 1.7785008e+09`,
		`chatmail_edge_acme_error{cert="chat.example,mta-sts.chat.example"} 1`,
		`chatmail_edge_service_up{service="SMTP"} 0`,
		`chatmail_edge_service_probe_failures_total{service="SMTP"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(text, `reason="backend"`) {
		t.Error("backend failures counted twice")
	}
	if rec := do(s.Handler(), "GET", "https://chat.example/metrics"); rec.Code != 404 {
		t.Errorf("public /metrics: %d", rec.Code)
	}
}

func TestRecentLog(t *testing.T) {
	recent := NewRecentLog(3)
	log := zap.New(recent.Core()).Named("edge").With(zap.String("listener", "https"))
	log.Info("not kept")
	for i := range 5 {
		log.Warn("warning", zap.Int("n", i))
	}
	log.Error(strings.Repeat("é", 500))
	got := recent.Entries()
	if len(got) != 3 || got[0].Level != "error" || got[1].Fields != "listener=https n=4" || got[2].Fields != "listener=https n=3" || got[1].Logger != "edge" {
		t.Fatalf("entries %+v", got)
	}
	if len(got[0].Message) > maxRecentText+4 || !strings.HasSuffix(got[0].Message, "…") {
		t.Fatalf("long message kept as %d bytes", len(got[0].Message))
	}
	// Installed beside another core, as main does.
	recent2 := NewRecentLog(3)
	zaptest.NewLogger(t).WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return zapcore.NewTee(c, recent2.Core()) })).Warn("tee")
	if e := recent2.Entries(); len(e) != 1 || e[0].Message != "tee" {
		t.Fatalf("tee: %+v", e)
	}
}
