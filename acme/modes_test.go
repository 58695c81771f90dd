package acme

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/testcert"
)

func TestBackoffDoublesUpToMax(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: 5 * time.Second}
	var got []time.Duration
	for f := 1; f <= 5; f++ {
		got = append(got, b.Delay(f))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("delays %v, want %v", got, want)
	}
	if d := (Backoff{}).Delay(1); d != time.Minute {
		t.Fatalf("default first delay %v", d)
	}
}

func TestSelfSignedAsCmdeployMakesIt(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "certs", "mailserver.pem"), filepath.Join(dir, "private", "mailserver.key")
	now := time.Now()
	s, created, err := SelfSigned("_chat.example", certFile, keyFile, now)
	if err != nil || !created {
		t.Fatalf("create: %v, created %v", err, created)
	}
	leaf := s.Certificate().Leaf
	if !slices.Equal(leaf.DNSNames, []string{"_chat.example", "www._chat.example", "mta-sts._chat.example"}) {
		t.Errorf("SANs %v", leaf.DNSNames)
	}
	if key, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || key.Curve != elliptic.P256() {
		t.Errorf("key %T, want EC P-256", leaf.PublicKey)
	}
	if days := leaf.NotAfter.Sub(now).Hours() / 24; days < 36499 || days > 36501 {
		t.Errorf("valid %.0f days, want 36500", days)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", fi.Mode().Perm())
	}
	again, created, err := SelfSigned("_chat.example", certFile, keyFile, now)
	if err != nil || created || !again.Certificate().Leaf.Equal(leaf) {
		t.Fatalf("existing files not reused: %v, created %v", err, created)
	}
	if st := again.Status(); len(st) != 1 || st[0].Source != "self" {
		t.Fatalf("status %+v", st)
	}

	ip, _, err := SelfSigned("192.0.2.7", filepath.Join(dir, "ip.pem"), filepath.Join(dir, "ip.key"), now)
	if err != nil || len(ip.Certificate().Leaf.IPAddresses) != 1 || ip.Certificate().Leaf.IPAddresses[0].String() != "192.0.2.7" {
		t.Fatalf("IP domain: %v", err)
	}

	// Half a pair is an error naming the missing file; nothing is made up.
	os.Remove(certFile)
	if _, _, err := SelfSigned("_chat.example", certFile, keyFile, now); err == nil || !strings.Contains(err.Error(), certFile) {
		t.Fatalf("missing certificate: %v", err)
	}
	if _, err := os.Stat(certFile); err == nil {
		t.Fatal("a certificate was made for an existing key")
	}
	if !IsSelfSignedDomain("_x.example") || !IsSelfSignedDomain("192.0.2.1") || IsSelfSignedDomain("chat.example") {
		t.Fatal("IsSelfSignedDomain")
	}
}

func writeTestPair(t *testing.T, certFile, keyFile string, c tls.Certificate) {
	t.Helper()
	der, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWatchedSwapsChangedFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first, _ := testcert.SelfSigned(t, "chat.example")
	writeTestPair(t, certFile, keyFile, first)
	w, err := WatchFiles(certFile, keyFile, 10*time.Millisecond, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	w.Start(context.Background(), Listeners{})
	t.Cleanup(w.Stop)

	// A garbled certificate keeps the current one and shows the error.
	os.WriteFile(certFile, []byte("garbage"), 0o644)
	waitFor(t, 5*time.Second, "the error in Status", func() error {
		if st := w.Status(); !strings.Contains(st[0].LastError, certFile) {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if c, _ := w.GetCertificate(&tls.ClientHelloInfo{}); !c.Leaf.Equal(first.Leaf) {
		t.Fatal("a garbled file replaced the served certificate")
	}

	second, _ := testcert.SelfSigned(t, "chat.example")
	writeTestPair(t, certFile, keyFile, second)
	select {
	case <-w.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("the new files were not noticed")
	}
	if c, _ := w.GetCertificate(&tls.ClientHelloInfo{}); !c.Leaf.Equal(second.Leaf) {
		t.Fatal("the served certificate was not swapped")
	}
	if st := w.Status(); st[0].LastError != "" || st[0].Source != "external" {
		t.Fatalf("status %+v", st)
	}
}

// A failing reload command is retried with backoff until it works; the
// failure shows meanwhile.
func TestExportRetriesFailedReload(t *testing.T) {
	dir := t.TempDir()
	reload, calls := recordingCommand(t, 2)
	e := newExporter(filepath.Join(dir, "live", "fullchain"), filepath.Join(dir, "live", "privkey"), [][]string{reload}, fastRetry, testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	c, _ := testcert.SelfSigned(t, "chat.example")
	e.set(&c)
	waitFor(t, 5*time.Second, "the reload to succeed on the third call", func() error {
		if n := len(calls()); n != 3 {
			return fmt.Errorf("%d calls", n)
		}
		if msg, _, _ := e.status(); msg != "" {
			return fmt.Errorf("status %q", msg)
		}
		return nil
	})
}
