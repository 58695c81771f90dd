package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as chatmail-edge: with this variable set it runs
// main with its arguments, so tests can start real processes of it.
const runMainEnv = "CHATMAIL_EDGE_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// command runs chatmail-edge with args as a child process.
func command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	return cmd
}

// TestDemoProcessContract runs `demo` as scripts do: it must print its
// banner and a line containing "ready", the printed probe command must pass
// every check with ECH, and SIGTERM must stop it cleanly.
func TestDemoProcessContract(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	state := t.TempDir()
	demo := command(ctx, "demo", "--state", state, "--https-port", "0", "--imaps-port", "0", "--smtps-port", "0", "--http-port", "0", "--admin-port", "0")
	stdout, err := demo.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	demo.Stderr = &stderr
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	// demoLog stops the demo first: its log is written to stderr by a
	// goroutine of os/exec until the process has exited.
	demoLog := func() string {
		demo.Process.Kill()
		demo.Wait()
		return stderr.String()
	}
	var banner []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		banner = append(banner, sc.Text())
		if strings.Contains(sc.Text(), "ready") {
			break
		}
	}
	if len(banner) == 0 || !strings.Contains(banner[len(banner)-1], "ready") {
		t.Fatalf("no ready line; stdout %q, stderr %s", banner, demoLog())
	}
	go io.Copy(io.Discard, stdout)
	text := strings.Join(banner, "\n")
	for _, want := range []string{state + "/demo-ca.pem", "ECH config list (base64)", "demo account"} {
		if !strings.Contains(text, want) {
			t.Errorf("banner lacks %q:\n%s", want, text)
		}
	}

	// The printed probe command, run as printed.
	var probeArgs []string
	for _, line := range banner {
		if f := strings.Fields(line); slices.Contains(f, "--ca") {
			probeArgs = f[slices.Index(f, "probe")+1:]
		}
	}
	if probeArgs == nil {
		t.Fatalf("no probe command in the banner:\n%s", text)
	}
	for i, a := range probeArgs {
		probeArgs[i] = shellUnquote(a)
	}
	out, err := command(ctx, append([]string{"probe"}, probeArgs...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "all 6 checks passed") {
		t.Fatalf("probe: %v\n%s\ndemo log:\n%s", err, out, demoLog())
	}
	if strings.Count(string(out), " accepted ") != 5 {
		t.Errorf("want ECH accepted on the 5 service checks:\n%s", out)
	}

	// `ech show` works on the demo's state folder and agrees with the banner.
	show, err := command(ctx, "ech", "show", "--state", state).Output()
	if err != nil || !strings.Contains(text, strings.TrimSpace(string(show))) {
		t.Fatalf("ech show: %v %q", err, show)
	}

	demo.Process.Signal(syscall.SIGTERM)
	if err := demo.Wait(); err != nil {
		t.Fatalf("demo did not stop cleanly on SIGTERM: %v\n%s", err, stderr.String())
	}
}

// shellUnquote undoes shellQuote for one word: quotes around it, and each
// quote inside written as quote, backslash, quote, quote.
func shellUnquote(a string) string {
	if len(a) >= 2 && strings.HasPrefix(a, "'") && strings.HasSuffix(a, "'") {
		return strings.ReplaceAll(a[1:len(a)-1], `'\''`, "'")
	}
	return a
}
