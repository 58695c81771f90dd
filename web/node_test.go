package web

import (
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestForwardedElement(t *testing.T) {
	for remote, want := range map[string]string{
		"192.0.2.7:5000":          `for=192.0.2.7;host="chat.example";proto=https`,
		"[2001:db8::7]:5000":      `for="[2001:db8::7]";host="chat.example";proto=https`,
		"[::ffff:192.0.2.7]:5000": `for=192.0.2.7;host="chat.example";proto=https`,
		"pipe":                    `for=unknown;host="chat.example";proto=https`,
	} {
		r := httptest.NewRequest("GET", "https://chat.example/", nil)
		r.RemoteAddr = remote
		if got := forwardedElement(r); got != want {
			t.Errorf("%s: %s, want %s", remote, got, want)
		}
	}
}

// TestRelayReach: a service is up while its last attempt worked; the
// public status page shows the states, the admin page also the relay's
// addresses and the errors.
func TestRelayReach(t *testing.T) {
	reach := NewRelayReach()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	reach.now = func() time.Time { return now }
	reach.Record(RelayIMAP, nil)
	now = now.Add(time.Second)
	reach.Record(RelaySMTP, nil)
	reach.Record(RelaySMTP, errors.New("dial 192.0.2.1:465: connection refused"))
	up := map[string]bool{}
	for _, st := range reach.Snapshot() {
		up[st.Service] = st.Up()
	}
	if !up[RelayIMAP] || up[RelaySMTP] || up[RelayHTTPS] {
		t.Fatalf("up: %v", up)
	}

	s, err := New(Config{Domain: "chat.example", Node: &NodeConfig{Name: "node-7", Relay: "relay.internal:443", Reachable: reach, IMAP: "relay.internal:993 (tls)"}},
		Deps{ECHConfigList: func() []byte { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return now }
	public := do(s.Handler(), "GET", "https://chat.example/status").Body.String()
	admin := do(s.AdminHandler(), "GET", "http://127.0.0.1:8081/").Body.String()
	for _, want := range []string{"node-7", `<span class="badge up">up</span>`, `<span class="badge down">down</span>`, "never"} {
		if !strings.Contains(public, want) || !strings.Contains(admin, want) {
			t.Errorf("status pages lack %q", want)
		}
	}
	for _, secret := range []string{"relay.internal", "192.0.2.1", "connection refused"} {
		if strings.Contains(public, secret) {
			t.Errorf("the public page shows %q", secret)
		}
		if !strings.Contains(admin, secret) {
			t.Errorf("the admin page lacks %q", secret)
		}
	}
	if got := do(s.Handler(), "GET", "https://other.example/status").Code; got != 421 {
		t.Errorf("status for another name: %d, want 421", got)
	}
	metrics := do(s.AdminHandler(), "GET", "http://127.0.0.1:8081/metrics").Body.String()
	for _, want := range []string{`chatmail_edge_node_info{node="node-7"} 1`, `chatmail_edge_relay_connections_total{outcome="error",service="smtp"} 1`,
		`chatmail_edge_relay_last_success_timestamp_seconds{service="imap"} 1.7776368e+09`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
