package acme

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLocalCAPersistsAndVerifies(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := LoadOrCreateLocalCA(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"chatmail.localhost", "www.chatmail.localhost", "127.0.0.1"}
	leaf, err := ca.Leaf(dir, names, now)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM)
	for _, name := range []string{"chatmail.localhost", "www.chatmail.localhost", "127.0.0.1"} {
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("leaf does not verify for %s: %v", name, err)
		}
	}
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: roots}); err == nil {
		t.Error("leaf verifies for a name it was not issued for")
	}

	// A restart keeps the CA and the leaf byte for byte.
	ca2, err := LoadOrCreateLocalCA(dir, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if string(ca2.CertPEM) != string(ca.CertPEM) {
		t.Fatal("CA changed across a restart")
	}
	leaf2, err := ca2.Leaf(dir, names, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if string(leaf2.Certificate[0]) != string(leaf.Certificate[0]) {
		t.Fatal("leaf reissued although still good")
	}
	// New names or an aging leaf get a new one.
	leaf3, err := ca2.Leaf(dir, append(names, "mta-sts.chatmail.localhost"), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if string(leaf3.Certificate[0]) == string(leaf.Certificate[0]) {
		t.Fatal("leaf not reissued for new names")
	}
	leaf4, err := ca2.Leaf(dir, append(names, "mta-sts.chatmail.localhost"), now.Add(80*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if string(leaf4.Certificate[0]) == string(leaf3.Certificate[0]) {
		t.Fatal("leaf not renewed near its end")
	}

	for file, want := range map[string]os.FileMode{localCAKeyFile: 0o600, localLeafKey: 0o600, localCAFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", file, fi.Mode().Perm(), want)
		}
	}
}

func TestLocalCACorruptIsAnError(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateLocalCA(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, localCAFile)
	if err := os.WriteFile(caFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateLocalCA(dir, time.Now())
	if err == nil || !strings.Contains(err.Error(), caFile) {
		t.Fatalf("want an error naming %s, got %v", caFile, err)
	}
	if b, _ := os.ReadFile(caFile); string(b) != "garbage" {
		t.Fatal("corrupt CA file was replaced")
	}
}
