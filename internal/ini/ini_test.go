package ini

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"chatmail-edge/internal/filelimit"
)

func TestParseChatmailStyle(t *testing.T) {
	src := "\ufeff# comment\n[params]\nmail_domain = chat.example.org\nmax_message_size=31457280\n; other comment\npassthrough_recipients =\n    a@b.example\n    c@d.example\n[other]\nkey: value\n"
	f, err := Parse("chatmail.ini", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if v := f.Get("params", "mail_domain"); v == nil || v.Value != "chat.example.org" || v.Line != 3 {
		t.Fatalf("mail_domain = %+v", v)
	}
	if v := f.Get("params", "passthrough_recipients"); v == nil || v.Value != "a@b.example\nc@d.example" {
		t.Fatalf("continuation = %+v", v)
	}
	if v := f.Get("other", "key"); v == nil || v.Value != "value" {
		t.Fatalf("colon form = %+v", v)
	}
	// configparser ends the key at the first "=" or ":" (found by FuzzParse).
	if f, err := Parse("f.ini", []byte("[a]\nk:v = w\n")); err != nil || f.Get("a", "k") == nil || f.Get("a", "k").Value != "v = w" {
		t.Fatalf("key before a colon: %v", err)
	}
	if f.Get("params", "missing") != nil || f.Get("missing", "x") != nil {
		t.Fatal("found what is not there")
	}
}

func TestParseErrorsNameFileAndLine(t *testing.T) {
	cases := map[string]string{
		"[a]\nx = 1\nx = 2\n": "f.ini:3: key \"x\" already set on line 2",
		"[a]\njust words\n":   "f.ini:2: expected",
		"[a\n":                "f.ini:1: malformed section header",
		"  indented first\n":  "f.ini:1: indented line",
		"[a]\n[b]\n[a]\n":     "f.ini:3: section [a] appears twice",
		// Found by FuzzParse: a repeated section right after itself, and
		// one without a name, were taken as new ones.
		"[a]\nx = 1\n[a]\ny = 2\n": "f.ini:3: section [a] appears twice",
		"x = 1\n[ ]\nx = 2\n":      "f.ini:2: malformed section header",
		"[a]\nx = a\x00b\n":        "f.ini:2: control character U+0000",
		"[a]\nx = \xffz\n":         "f.ini:2: not UTF-8 text",
		"[a]\nx\x1b[2J = 1\n":      "f.ini:2: control character U+001B",
	}
	for src, want := range cases {
		_, err := Parse("f.ini", []byte(src))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: got %v, want %q...", src, err, want)
		}
	}
}

// TestCRLFAndTabs: Windows line ends and tabs are text.
func TestCRLFAndTabs(t *testing.T) {
	f, err := Parse("f.ini", []byte("[a]\r\nx =\t1\r\n"))
	if err != nil || f.Get("a", "x") == nil || f.Get("a", "x").Value != "1" {
		t.Fatalf("%+v, %v", f, err)
	}
}

// TestReadFileLimit: a file over the limit is refused with its name and
// the limit, before it is parsed.
func TestReadFileLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge.ini")
	os.WriteFile(path, []byte("[a]\n"+strings.Repeat("# padding\n", filelimit.Config/10+1)), 0o644)
	_, err := ReadFile(path)
	if !errors.Is(err, filelimit.ErrTooLarge) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "more than 1048576 bytes") {
		t.Fatalf("got %v", err)
	}
}
