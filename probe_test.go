package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"chatmail-edge/ech"
	"chatmail-edge/service"
)

func TestProbeReportsFailures(t *testing.T) {
	log, err := service.NewLogger(io.Discard, "info")
	if err != nil {
		t.Fatal(err)
	}
	d, err := service.StartDemo(service.DemoConfig{StateDir: t.TempDir(), Domain: "chatmail.localhost", Host: "127.0.0.1"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Shutdown)

	// JSON output for scripts, without ECH.
	var out bytes.Buffer
	code := run(append(d.ProbeArgs(), "--ech", "off", "--json", "chatmail.localhost"), &out, io.Discard)
	var report struct {
		OK     bool
		Checks []struct {
			Name, ECH string
			OK        bool
			LatencyMS float64 `json:"latency_ms"`
		}
	}
	if err := json.Unmarshal(out.Bytes(), &report); err != nil || code != 0 || !report.OK || len(report.Checks) != 5 {
		t.Fatalf("probe --ech off --json: exit %d, %v\n%s", code, err, out.String())
	}
	for _, c := range report.Checks {
		if c.ECH != "off" || c.LatencyMS <= 0 {
			t.Errorf("check %+v: want ECH off and a latency", c)
		}
	}

	// A stale config: every ECH check fails and says why; exit status 1.
	other, err := ech.GenerateKey("chatmail.localhost", 32, 99, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	stale := base64.StdEncoding.EncodeToString(ech.NewKeySet(other).ConfigList())
	out.Reset()
	code = run(append(d.ProbeArgs(), "--ech", stale, "chatmail.localhost"), &out, io.Discard)
	if code != 1 || strings.Count(out.String(), "ECH rejected by the server") != 5 || !strings.Contains(out.String(), "5 of 5 checks FAILED") {
		t.Fatalf("probe with a stale config: exit %d\n%s", code, out.String())
	}

	// Wrong credentials fail the IMAP and SMTP checks.
	out.Reset()
	code = run(append(d.ProbeArgs(), "--user", "nobody@chatmail.localhost", "--password", "wrong", "chatmail.localhost"), &out, io.Discard)
	if code != 1 || !strings.Contains(out.String(), "4 of 6 checks FAILED") {
		t.Fatalf("probe with bad credentials: exit %d\n%s", code, out.String())
	}

	// Nothing listening: failures, not a hang or a crash.
	out.Reset()
	code = run([]string{"probe", "--connect", "127.0.0.1", "--https-port", "1", "--imaps-port", "1", "--smtps-port", "1", "--timeout", "2s", "chatmail.localhost"}, &out, io.Discard)
	if code != 1 || !strings.Contains(out.String(), "6 of 6 checks FAILED") {
		t.Fatalf("probe against nothing: exit %d\n%s", code, out.String())
	}
}
