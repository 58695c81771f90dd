package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/buildinfo"
)

// flagLines are the flag lines of a -h output ("  -name value").
func flagLines(help string) []string {
	var lines []string
	for _, l := range strings.Split(help, "\n") {
		if strings.HasPrefix(l, "  -") {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestHelpNamesFlagValues checks every command's -h: a backquoted word in
// a flag's usage string is taken by package flag as the name of its value,
// so "see `chatmail-edge config describe`" printed "-config chatmail-edge
// config describe". Each flag line must be the flag and at most one word.
func TestHelpNamesFlagValues(t *testing.T) {
	commands := [][]string{
		{"demo"}, {"upgrade"}, {"probe"}, {"ech", "show"}, {"ech", "rotate"}, {"ech", "retire"},
		{"install"}, {"uninstall"}, {"dns"}, {"acme", "account-url"}, {"metadata-proxy"},
	}
	check := func(name string, code int, help string) {
		t.Helper()
		lines := flagLines(help)
		if code != 0 || !strings.HasPrefix(help, "Usage: chatmail-edge ") || len(lines) == 0 {
			t.Errorf("%s -h: exit %d\n%s", name, code, help)
		}
		for _, l := range lines {
			if len(strings.Fields(l)) > 2 {
				t.Errorf("%s -h: flag line %q names its value with more than one word", name, l)
			}
		}
	}
	for _, args := range commands {
		code, out := runCommand(append(args, "-h")...)
		check(strings.Join(args, " "), code, out)
	}
	// serve catches signals from its start: a process of its own.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := command(ctx, "serve", "-h").CombinedOutput()
	code := 0
	if err != nil {
		code = -1
	}
	check("serve", code, string(out))
	if !strings.Contains(string(out), "  -config file\n") {
		t.Errorf("serve -h does not name --config's value \"file\":\n%s", out)
	}
}

// TestBadFlagPrintedOnce: the flag set prints the error and the usage; run
// must not print the error again.
func TestBadFlagPrintedOnce(t *testing.T) {
	for _, args := range [][]string{{"dns", "--no-such-flag"}, {"probe", "--no-such-flag", "x"}, {"install", "--no-such-flag"}} {
		code, out := runCommand(args...)
		if code != 2 || strings.Count(out, "flag provided but not defined: -no-such-flag") != 1 || !strings.Contains(out, "Usage: chatmail-edge "+args[0]) {
			t.Errorf("%v: exit %d, want 2 and the error once with the usage:\n%s", args, code, out)
		}
	}
	// A usage error that no flag set printed is printed by run.
	code, out := runCommand("install", "surplus")
	if code != 2 || out != "chatmail-edge install: usage: unexpected argument \"surplus\"\n" {
		t.Errorf("install surplus: exit %d\n%s", code, out)
	}
}

// TestVersionSpellings: version, -version and --version print the same
// line. (release/'s TestStampedVersion checks the stamped values.)
func TestVersionSpellings(t *testing.T) {
	want := buildinfo.Read().String() + "\n"
	for _, arg := range []string{"version", "-version", "--version"} {
		code, out := runCommand(arg)
		if code != 0 || out != want {
			t.Errorf("%s: exit %d, %q; want %q", arg, code, out, want)
		}
	}
}

// runCommand runs chatmail-edge in process and returns its exit status and output.
func runCommand(args ...string) (int, string) {
	var out bytes.Buffer
	code := run(args, &out, &out)
	return code, out.String()
}
