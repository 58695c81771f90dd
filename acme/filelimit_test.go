package acme

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/filelimit"
	"chatmail-edge/internal/testcert"
)

// writeOversized makes path one byte larger than limit.
func writeOversized(t *testing.T, path string, limit int) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o700)
	if err := os.WriteFile(path, []byte(strings.Repeat("#", limit+1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// wantTooLarge checks that err names path and says its limit.
func wantTooLarge(t *testing.T, what string, err error, path string, limit int) {
	t.Helper()
	if !errors.Is(err, filelimit.ErrTooLarge) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "more than "+strconv.Itoa(limit)+" bytes") {
		t.Errorf("%s: got %v, want the file %s over its limit of %d bytes", what, err, path, limit)
	}
}

// TestFilesOverTheirLimit: every file the certificate side reads has a
// size limit, and the error names the file and the limit.
func TestFilesOverTheirLimit(t *testing.T) {
	dir := t.TempDir()
	pair, _ := testcert.SelfSigned(t, "chat.example")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")

	writeTestPair(t, certFile, keyFile, pair)
	writeOversized(t, certFile, filelimit.PEM)
	_, err := WatchFiles(certFile, keyFile, time.Hour, testLogger(t))
	wantTooLarge(t, "external certificate", err, certFile, filelimit.PEM)

	writeTestPair(t, certFile, keyFile, pair)
	writeOversized(t, keyFile, filelimit.Small)
	_, err = WatchFiles(certFile, keyFile, time.Hour, testLogger(t))
	wantTooLarge(t, "external key", err, keyFile, filelimit.Small)

	caDir := filepath.Join(dir, "ca")
	writeOversized(t, filepath.Join(caDir, localCAFile), filelimit.PEM)
	_, err = LoadOrCreateLocalCA(caDir, time.Now())
	wantTooLarge(t, "local CA", err, filepath.Join(caDir, localCAFile), filelimit.PEM)

	acmetool := filepath.Join(dir, "acmetool")
	chain := filepath.Join(acmetool, "live", "chat.example", "fullchain")
	writeOversized(t, chain, filelimit.PEM)
	_, err = readAcmetoolLive(acmetool, "chat.example")
	wantTooLarge(t, "acmetool's certificate", err, chain, filelimit.PEM)
	writeTestPair(t, chain, filepath.Join(acmetool, "live", "chat.example", "privkey"), pair)
	url := filepath.Join(acmetool, "live", "chat.example", "url")
	writeOversized(t, url, filelimit.Small)
	if live, err := readAcmetoolLive(acmetool, "chat.example"); err != nil || live.certURL != "" {
		t.Errorf("an oversized url file (optional) is not skipped: %v, %q", err, live.certURL)
	}

	m := &Manager{cfg: Config{CARootFile: filepath.Join(dir, "root.pem")}}
	writeOversized(t, m.cfg.CARootFile, filelimit.PEM)
	_, _, err = m.roots()
	wantTooLarge(t, "CA root file", err, m.cfg.CARootFile, filelimit.PEM)
}
