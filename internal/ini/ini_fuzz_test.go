package ini

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// chatmailINI is the start of a real chatmail.ini (cmdeploy's template).
const chatmailINI = `[params]

# mail domain (MUST be set to fully qualified chat mail domain)
mail_domain = chat.example.org

#
# If you only do private test deploys, you don't need to modify any settings below
#

# Maximum number of emails a user can send per minute
max_user_send_per_minute = 60

# Maximum mailbox size (in megabytes)
max_mailbox_size = 100M

# list of email addresses that may send mails to chatmail users without encryption
passthrough_senders =

# list of email addresses that can receive outgoing unencrypted mails
passthrough_recipients = xstore@testrun.org echo@chat.example.org

# where the filtermail and iroh-relay listen
filtermail_http_port_incoming = 10082

[privacy]
privacy_postal =
    Example GmbH
    Somestreet 1
privacy_mail = privacy@chat.example.org
`

// format writes f in the dialect Parse reads.
func format(f *File) string {
	var b strings.Builder
	for _, s := range f.Sections {
		if s.Name != "" {
			fmt.Fprintf(&b, "[%s]\n", s.Name)
		}
		for _, v := range s.Keys {
			fmt.Fprintf(&b, "%s = %s\n", v.Key, strings.ReplaceAll(v.Value, "\n", "\n    "))
		}
	}
	return b.String()
}

// FuzzParse: Parse never panics; an error names a line of the file; what
// parses has unique sections and keys that Get finds, values without
// outer blanks, lines in order, and it reads back the same from format.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		chatmailINI,
		"\ufeff# comment\n[params]\nmail_domain = chat.example.org\nmax_message_size=31457280\n; other\npassthrough_recipients =\n    a@b.example\n    c@d.example\n[other]\nkey: value\n",
		"[a]\nx = 1\nx = 2\n", "[a]\njust words\n", "[a\n", "  indented first\n", "[a]\n[b]\n[a]\n",
		"[a]\nx = 1\n[a]\ny = 2\n", "x = 1\n[ ]\nx = 2\n", "[a]\nk:v = w\n", "[a]\nk = v:w\n", "[a] # comment\n",
		"[a]\r\nx = 1\r\n  more\r\n", "",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("f.ini", data)
		if err != nil {
			var ie *Error
			if errors.As(err, &ie) {
				if ie.Path != "f.ini" || ie.Line < 1 || ie.Line > bytes.Count(data, []byte("\n"))+1 {
					t.Fatalf("error %v names no line of the %d-line input", err, bytes.Count(data, []byte("\n"))+1)
				}
			} else if !errors.Is(err, bufio.ErrTooLong) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		check(t, file, bytes.Count(data, []byte("\n"))+1)
		again, err := Parse("f.ini", []byte(format(file)))
		if err != nil {
			t.Fatalf("formatted file does not parse: %v\n%s", err, format(file))
		}
		if format(again) != format(file) {
			t.Fatalf("round trip differs:\n%q\n%q", format(file), format(again))
		}
	})
}

func check(t *testing.T, file *File, lines int) {
	t.Helper()
	prevLine := 0
	for i, s := range file.Sections {
		if got := file.Section(s.Name); got != s {
			t.Fatalf("section %q appears twice", s.Name)
		}
		if s.Name != strings.TrimSpace(s.Name) || (s.Name == "" && i > 0) {
			t.Fatalf("section name %q", s.Name)
		}
		for _, v := range s.Keys {
			if v.Key == "" || v.Key != strings.ToLower(v.Key) || v.Key != strings.TrimSpace(v.Key) || strings.ContainsAny(v.Key, "=:") {
				t.Fatalf("key %q", v.Key)
			}
			if v.Value != strings.TrimSpace(v.Value) || strings.Contains(v.Value, "\n\n") {
				t.Fatalf("value %q of %s", v.Value, v.Key)
			}
			if got := file.Get(s.Name, v.Key); got != v {
				t.Fatalf("Get(%q, %q) = %+v, want %+v", s.Name, v.Key, got, v)
			}
			if v.Line <= prevLine || v.Line > lines {
				t.Fatalf("key %s on line %d after line %d, of %d", v.Key, v.Line, prevLine, lines)
			}
			prevLine = v.Line
		}
	}
}
