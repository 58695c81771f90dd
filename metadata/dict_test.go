package metadata

import (
	"strings"
	"testing"
)

func TestTabEscapeAsDovecot(t *testing.T) {
	// str_append_tabescaped_n and str_tabunescape (src/lib/strescape.c).
	for _, tc := range []struct{ plain, escaped string }{
		{"", ""},
		{"plain/key", "plain/key"},
		{"a\tb", "a\001tb"},
		{"line\r\n", "line\001r\001n"},
		{"\001", "\0011"},
		{"nul\x00", "nul\0010"},
		{"\t\t\001\n", "\001t\001t\0011\001n"},
	} {
		if got := tabEscape(tc.plain); got != tc.escaped {
			t.Errorf("tabEscape(%q) = %q, want %q", tc.plain, got, tc.escaped)
		}
		if got := tabUnescape([]byte(tc.escaped)); got != tc.plain {
			t.Errorf("tabUnescape(%q) = %q, want %q", tc.escaped, got, tc.plain)
		}
	}
	// Dovecot's unescaping, beyond what its escaping makes: an unknown
	// escape stands for the byte itself, a trailing \001 is dropped.
	for escaped, plain := range map[string]string{"a\001xb": "axb", "end\001": "end", "\001\001": "\001"} {
		if got := tabUnescape([]byte(escaped)); got != plain {
			t.Errorf("tabUnescape(%q) = %q, want %q", escaped, got, plain)
		}
	}
}

const echKeyOfInbox = "shared/0b2ad00f6d4a5a66e2300000b9d9a3ab/vendor/vendor.dovecot/pvt/server/vendor/deltachat/ech"

func TestParseCommand(t *testing.T) {
	for _, tc := range []struct {
		line  string
		want  command
		error string
	}{
		// What Dovecot 2.3.19's dict client sends (dict-client.c).
		{line: "H3\t2\t0\t\tmetadata", want: command{op: 'H'}},
		{line: "L" + echKeyOfInbox + "\talice@chat.example", want: command{op: 'L', reply: oneLine, key: echKeyOfInbox}},
		{line: "Lpriv/guid/devicetoken\tal\001tice", want: command{op: 'L', reply: oneLine, key: "priv/guid/devicetoken"}},
		{line: "Lkey\001twith\001ntabs\tuser", want: command{op: 'L', reply: oneLine, key: "key\twith\ntabs"}},
		{line: "Lonly-a-key", want: command{op: 'L', reply: oneLine, key: "only-a-key"}},
		{line: "I12\t0\tshared/guid/\talice", want: command{op: 'I', reply: untilEndRow}},
		{line: "B1\talice@chat.example", want: command{op: 'B'}},
		{line: "S1\tpriv/guid/devicetoken\ttoken\001t1", want: command{op: 'S'}},
		{line: "U7\tpriv/guid/x", want: command{op: 'U'}},
		{line: "A7\tkey\t-1", want: command{op: 'A'}},
		{line: "T7\t1700000000\t5", want: command{op: 'T'}},
		{line: "R7", want: command{op: 'R'}},
		{line: "C1", want: command{op: 'C', reply: oneLine, id: "1"}},
		{line: "D42", want: command{op: 'D', reply: oneLine, id: "42"}},

		{line: "", error: "empty line"},
		{line: "H2\t0\t0\t\tmetadata", error: "protocol version"},
		{line: "H3\tx\t0\t\tmetadata", error: "protocol version"},
		{line: "H3\t2\t0\t" + strings.Repeat("u", 2000), error: "at most"},
		{line: "Iflags\t0\tpath", error: "iterate"},
		{line: "I1\t0", error: "iterate"},
		{line: "C", error: "transaction id"},
		{line: "Cone", error: "transaction id"},
		{line: "C99999999999", error: "transaction id"},
		{line: "C4294967296", error: "out of range"},
		{line: "S\tkey\tvalue", error: "transaction id"},
		{line: "B-1\tuser", error: "transaction id"},
		{line: "X1", error: "unknown command"},
		{line: "\x00", error: "unknown command"},
	} {
		got, err := parseCommand([]byte(tc.line))
		if tc.error != "" {
			if err == nil || !strings.Contains(err.Error(), tc.error) {
				t.Errorf("parseCommand(%q): error %v, want one with %q", tc.line, err, tc.error)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseCommand(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
}

func TestParseUpstreamLine(t *testing.T) {
	for _, tc := range []struct {
		line  string
		want  upstreamLine
		error string
	}{
		{line: "Ohttps://chat.example", want: upstreamLine{body: []byte("Ohttps://chat.example")}},
		{line: "", want: upstreamLine{body: []byte{}}},
		{line: "*7", want: upstreamLine{assigns: 7}},
		{line: "+7\tOvalue\t1\t2\t3\t4", want: upstreamLine{asyncID: 7, body: []byte("Ovalue\t1\t2\t3\t4")}},
		{line: "+7\t", want: upstreamLine{asyncID: 7, body: []byte{}}},
		{line: "*0", error: "out of range"},
		{line: "*", error: "not a number"},
		{line: "*x", error: "not a number"},
		{line: "*4294967296", error: "out of range"},
		{line: "+7", error: "without a tab"},
		{line: "+\tO", error: "not a number"},
	} {
		got, err := parseUpstreamLine([]byte(tc.line))
		if tc.error != "" {
			if err == nil || !strings.Contains(err.Error(), tc.error) {
				t.Errorf("parseUpstreamLine(%q): error %v, want one with %q", tc.line, err, tc.error)
			}
			continue
		}
		if err != nil || got.assigns != tc.want.assigns || got.asyncID != tc.want.asyncID || string(got.body) != string(tc.want.body) {
			t.Errorf("parseUpstreamLine(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
	for line, ends := range map[string]bool{"": true, "\t1\t2\t3\t4": true, "Fbroken": true, "Okey\tvalue": false} {
		if endsIteration([]byte(line)) != ends {
			t.Errorf("endsIteration(%q) = %v", line, !ends)
		}
	}
}

func TestIsECHKey(t *testing.T) {
	for key, want := range map[string]bool{
		echKeyOfInbox: true,
		"shared/x/vendor/vendor.dovecot/pvt/server/vendor/deltachat/ech": true,
		// The same entry on a mailbox, not the server.
		"shared/0b2ad00f6d4a5a66e2300000b9d9a3ab/vendor/deltachat/ech":                                false,
		"priv/0b2ad00f6d4a5a66e2300000b9d9a3ab/vendor/vendor.dovecot/pvt/server/vendor/deltachat/ech": false,
		"shared//vendor/vendor.dovecot/pvt/server/vendor/deltachat/ech":                               false,
		"shared/a/b/vendor/vendor.dovecot/pvt/server/vendor/deltachat/ech":                            false,
		"shared/x/vendor/vendor.dovecot/pvt/server/vendor/deltachat/ech2":                             false,
		"shared/x/vendor/vendor.dovecot/pvt/server/vendor/deltachat/irohrelay":                        false,
	} {
		if isECHKey(key) != want {
			t.Errorf("isECHKey(%q) = %v", key, !want)
		}
	}
	if ECHEntry != "/shared/vendor/deltachat/ech" {
		t.Errorf("ECHEntry = %q", ECHEntry)
	}
}

func TestFailureReplyAsDovecotsServer(t *testing.T) {
	// cmd_lookup_callback, cmd_iterate_flush_finish, cmd_commit_finish.
	for _, tc := range []struct {
		cmd  command
		want string
	}{
		{command{op: 'L'}, "Fdown:\001tnow"},
		{command{op: 'I'}, "Fdown:\001tnow"},
		{command{op: 'C', id: "3"}, "F3\tdown:\001tnow"},
		{command{op: 'D', id: "3"}, "AF3\tdown:\001tnow"},
	} {
		if got := string(failureReply(tc.cmd, "down:\tnow")); got != tc.want {
			t.Errorf("failureReply(%c) = %q, want %q", tc.cmd.op, got, tc.want)
		}
	}
}

func TestDovecotAttributeDict(t *testing.T) {
	want := "mail_attribute_dict = proxy:/run/chatmail-edge-metadata/metadata.socket:metadata"
	if got := DovecotAttributeDict(DefaultSocket); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
