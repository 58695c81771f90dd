package acme

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/acmetest"
)

// With the first CA unreachable, the certificate comes from the fallback
// CA, which demands external account binding (RFC 8555 §7.3.4): the edge
// gets the credentials for its e-mail address, as ZeroSSL hands them out.
func TestManagerFallsBackToSecondCA(t *testing.T) {
	domain := "fallback.test"
	primary := acmetest.Start(t, acmetest.Options{})
	fallback := acmetest.Start(t, acmetest.Options{RequireEAB: true})
	const kid, hmacKey = "kid-1", "YS0zMi1ieXRlLWxvbmctaG1hYy1rZXktZm9yLWVhYiE" // 32 bytes: HS256 wants no less
	if err := fallback.AddEAB(kid, hmacKey); err != nil {
		t.Fatal(err)
	}
	var askedFor string
	eabAPI := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		askedFor = r.PostForm.Get("email")
		json.NewEncoder(w).Encode(map[string]any{"success": true, "eab_kid": kid, "eab_hmac_key": hmacKey})
	}))
	t.Cleanup(eabAPI.Close)

	cfg := Config{
		Domain: domain, CA: primary.URL, CARootFile: primary.RootFile, FallbackCA: fallback.URL,
		EABEndpoint: eabAPI.URL, Email: "postmaster@fallback.test",
		StorageDir: filepath.Join(t.TempDir(), "storage"), Retry: fastRetry,
	}
	m, err := NewManager(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	e := startTestEdge(t, m)
	httpPort, tlsPort := e.ports()
	dns := acmetest.StartDNS(t, domain)
	primary.Validate(dns, httpPort, tlsPort)
	fallback.Validate(dns, httpPort, tlsPort)
	primary.SetMode(acmetest.Down)
	if err := m.Start(context.Background(), e.listeners()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	if _, err := e.served(t, domain, fallback.Roots()); err != nil {
		t.Fatalf("no certificate from the fallback CA: %v", err)
	}
	if askedFor != cfg.Email {
		t.Fatalf("EAB asked for %q", askedFor)
	}
	// Once the first CA is back, the next renewal goes to it again.
	primary.SetMode(acmetest.Up)
	renewNow(t, m, domain)
	waitFor(t, 20*time.Second, "a certificate from the first CA", func() error {
		_, err := e.served(t, domain, primary.Roots())
		return err
	})
	if s := statusOf(m, domain); s.LastError != "" || !strings.Contains(s.Issuer, "Pebble") {
		t.Fatalf("status %+v", s)
	}
}
