package mail

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Fuzz targets of the checks' parsers: everything a mail server sends goes
// through them. Each target compares with a reference written another way
// (regular expressions, strings.Split) where one is simple, and checks the
// bounds: no line longer than the protocol's limit, no more than
// maxCheckBytes read, nothing but well-formed command lines sent.

// replayConn is a server that sends the fuzzer's bytes and then closes; it
// keeps what the client wrote. Deadlines do not matter: the input ends.
type replayConn struct {
	in      *bytes.Reader
	read    int
	written bytes.Buffer
}

func (c *replayConn) Read(p []byte) (int, error) {
	n, err := c.in.Read(p)
	c.read += n
	return n, err
}
func (c *replayConn) Write(p []byte) (int, error)      { return c.written.Write(p) }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *replayConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }

// Real server output for the seed corpora: Dovecot 2.3 (Debian 12), go-imap's
// server, Postfix 3.7, and the quirks the checks were fixed for.
var (
	imapGreetingSeeds = []string{
		"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot (Debian) ready.",
		"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN] IMAP server ready",
		"* OK IMAP4rev2 server ready",
		"* PREAUTH [CAPABILITY IMAP4rev2] logged in as smith",
		"* BYE [UNAVAILABLE] mail.example.org backend down",
		"* BYE Autologout; idle for too long",
		strings.TrimSuffix(spinningGreeting, "\r\n"),
		"* OK [CAPABILITY IMAP4rev1  IDLE] two spaces",
		"* OK [ALERT] System shutdown in 10 minutes",
		"* ok [capability imap4rev1] lower case",
		"* OK [CAPABILITY IMAP4rev1",
		"* OK [CAPABILITY]",
		"* OK",
		"220 mail.example.org ESMTP Postfix",
	}
	imapSessionSeeds = []string{
		"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot (Debian) ready.\r\n" +
			"* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN\r\nc1 OK Pre-login capabilities listed, post-login capabilities have more.\r\n" +
			"+ OK\r\n+ OK\r\n" +
			"c2 OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE] Logged in\r\n" +
			"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n" +
			"* 2 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1714560000] UIDs valid\r\n* OK [UIDNEXT 3] Predicted next UID\r\nc3 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n" +
			"* BYE Logging out\r\nc4 OK Logout completed (0.001 + 0.000 secs).\r\n",
		"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN] IMAP server ready\r\n* CAPABILITY IMAP4rev1 IMAP4rev2 AUTH=PLAIN\r\nc1 OK CAPABILITY completed\r\n" +
			"c2 OK LOGIN completed\r\n* 0 EXISTS\r\n* LIST () \"/\" {5}\r\nINBOX\r\n* FLAGS (\\Seen)\r\nc3 OK [READ-WRITE] SELECT completed\r\n* BYE\r\n",
		spinningGreeting,
		"* OK ready\r\n* CAPABILITY (IMAP4rev1)\r\nc1 OK done\r\n",
		"* OK ready\r\n* X {3}\r\nabc{1}\r\nd\r\nc1 OK\r\n",
	}
	smtpSeeds = []string{
		"220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n" +
			"250-mail.example.org\r\n250-PIPELINING\r\n250-SIZE 31457280\r\n250-ETRN\r\n250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n" +
			"235 2.7.0 Authentication successful\r\n221 2.0.0 Bye\r\n",
		"220-mail.example.org ESMTP\r\n220 second line\r\n502 5.5.2 Error: command not recognized\r\n250 mail.example.org\r\n221 Bye\r\n",
		"421 4.3.0 mail.example.org too many connections\r\n",
		"554 5.7.1 no\r\n",
		"220 a\r\n250-a\r\n250 b\r\n535 5.7.8 Error: authentication failed\r\n",
		"220\r\n250\r\n221\r\n",
		"220-a\r\n250 b\r\n",
	}
)

// refGreeting, refCode, refCapabilityCode and refAtoms are the greeting
// and its CAPABILITY code of RFC 9051 §9 as regular expressions: keywords
// in ASCII of either case (the ABNF's strings), and the ATOM-CHARs listed one
// by one rather than as CHAR minus atom-specials.
var (
	refGreeting       = regexp.MustCompile(`(?s)^\* ([Oo][Kk]|[Pp][Rr][Ee][Aa][Uu][Tt][Hh]|[Bb][Yy][Ee])(?: (.*))?$`)
	refCode           = regexp.MustCompile(`(?s)^\[([^\]]+)\](?: .*)?$`)
	refCapabilityCode = regexp.MustCompile(`^[Cc][Aa][Pp][Aa][Bb][Ii][Ll][Ii][Tt][Yy](?: |$)`)
	refAtoms          = regexp.MustCompile("^(?: *[!#$&'+,\\-./0-9:;<=>?@A-Z\\[^_`a-z|}~]+)+ *$")
)

// referenceGreeting parses a greeting with the expressions above.
func referenceGreeting(line string) (status string, caps []string, ok bool) {
	m := refGreeting.FindStringSubmatch(line)
	if m == nil {
		return "", nil, false
	}
	status, text := strings.ToUpper(m[1]), m[2]
	if !strings.HasPrefix(text, "[") {
		return status, nil, true
	}
	code := refCode.FindStringSubmatch(text)
	if code == nil {
		return "", nil, false
	}
	if !refCapabilityCode.MatchString(code[1]) {
		return status, nil, true
	}
	list := code[1][len("CAPABILITY"):]
	if !refAtoms.MatchString(list) {
		return "", nil, false
	}
	return status, strings.Fields(list), true
}

func FuzzIMAPGreeting(f *testing.F) {
	for _, s := range imapGreetingSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		g, err := parseIMAPGreeting(line)
		status, caps, ok := referenceGreeting(line)
		if (err == nil) != ok {
			t.Fatalf("parseIMAPGreeting(%q): error %v, the reference says ok=%v", line, err, ok)
		}
		if err != nil {
			return
		}
		if g.status != status || !slices.Equal(g.capabilities, caps) {
			t.Fatalf("parseIMAPGreeting(%q) = %s %q, the reference %s %q", line, g.status, g.capabilities, status, caps)
		}
		if len(g.capabilities) > len(line)/2 || len(g.text) > len(line) {
			t.Fatalf("parseIMAPGreeting(%q) returned more than it read: %+v", line, g)
		}
	})
}

// checkInvariants holds for every check, whatever the server sent: the
// error names one of the steps, the greeting is the first line sent and
// within the line limit, the capabilities are sorted and unique words of
// the input, no more than maxCheckBytes were read, every command sent is a
// whole line, and the credentials never appear in an error.
func checkInvariants(t *testing.T, p Protocol, input []byte, conn *replayConn, res CheckResult, err error, creds *Credentials, steps []string, maxLine int) {
	t.Helper()
	if err != nil {
		if !slices.ContainsFunc(steps, func(s string) bool { return strings.HasPrefix(err.Error(), p.String()+" "+s+": ") }) {
			t.Fatalf("error %q names no step of %q", err, steps)
		}
		shows := func(s string) bool { return strings.Contains(err.Error(), s) && !bytes.Contains(input, []byte(s)) }
		if creds != nil && (shows(creds.User) || shows(creds.Password)) {
			t.Fatalf("error %q shows the credentials", err)
		}
	}
	if conn.read > maxCheckBytes {
		t.Fatalf("read %d bytes, more than %d", conn.read, maxCheckBytes)
	}
	if res.Greeting != "" && p == IMAP {
		first, _, _ := strings.Cut(string(input), "\n")
		if res.Greeting != strings.TrimSuffix(first, "\r") || len(res.Greeting) > maxLine {
			t.Fatalf("greeting %q, not the first line of the input or too long", res.Greeting)
		}
	}
	unique := len(slices.Compact(slices.Clone(res.Capabilities))) == len(res.Capabilities)
	if !slices.IsSorted(res.Capabilities) || (p == IMAP && !unique) {
		t.Fatalf("capabilities %q not sorted (IMAP: and unique)", res.Capabilities)
	}
	for _, c := range res.Capabilities {
		if c == "" || !bytes.Contains(input, []byte(c)) {
			t.Fatalf("capability %q is not in the input", c)
		}
	}
	if err == nil && res.Greeting == "" {
		t.Fatal("a check without a greeting succeeded")
	}
	if w := conn.written.String(); w != "" && !strings.HasSuffix(w, "\r\n") {
		t.Fatalf("the client sent a partial line: %q", w)
	}
}

func FuzzCheckIMAP(f *testing.F) {
	for _, s := range imapSessionSeeds {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	steps := []string{"greeting", "CAPABILITY", "LOGIN", "SELECT INBOX", "LOGOUT"}
	f.Fuzz(func(t *testing.T, input []byte, login bool) {
		var creds *Credentials
		if login {
			creds = &Credentials{User: "fuzz-user-7f3a", Password: "p\u00e4ss-9c1e"} // the password goes as a literal
		}
		conn := &replayConn{in: bytes.NewReader(input)}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := CheckIMAP(ctx, conn, creds)
		checkInvariants(t, IMAP, input, conn, res, err, creds, steps, maxIMAPLine)
		if err == nil {
			if _, gErr := parseIMAPGreeting(res.Greeting); gErr != nil || !hasIMAPVersion(res.Capabilities) {
				t.Fatalf("a check succeeded with greeting %q (%v), capabilities %q", res.Greeting, gErr, res.Capabilities)
			}
			if res.LoggedIn != login {
				t.Fatalf("LoggedIn %v, want %v", res.LoggedIn, login)
			}
		}
	})
}

// referenceReplies splits input into SMTP replies the simple way: lines at
// LF, a line valid when it matches refReplyLine, a reply ended by its line
// without "-". It stops at the first invalid line, a line over the limit,
// a reply over maxResponsesPerCommand lines, or an incomplete reply.
var refReplyLine = regexp.MustCompile(`^([2-5][0-5][0-9])(?:([ -])[^\x00\r]*)?$`)

func referenceReplies(input []byte) []smtpReply {
	var replies []smtpReply
	lines := strings.Split(string(input), "\n")
	lines = lines[:len(lines)-1] // after the last LF: no whole line
	var reply smtpReply
	for _, line := range lines {
		line = strings.TrimSuffix(line, "\r")
		m := refReplyLine.FindStringSubmatch(line)
		if m == nil || len(line) > maxSMTPLine || len(reply.lines) == maxResponsesPerCommand {
			break
		}
		code := int(m[1][0]-'0')*100 + int(m[1][1]-'0')*10 + int(m[1][2]-'0')
		if reply.lines != nil && code != reply.code {
			break
		}
		reply.code = code
		reply.lines = append(reply.lines, line)
		if m[2] != "-" {
			replies = append(replies, reply)
			reply = smtpReply{}
		}
	}
	return replies
}

func FuzzSMTPReply(f *testing.F) {
	for _, s := range smtpSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		if len(input) > maxCheckBytes {
			return // the budget cuts the reference's replies short; FuzzCheckSMTP covers it
		}
		conn := &replayConn{in: bytes.NewReader(input)}
		cc, err := newCheckConn(t.Context(), conn, maxSMTPLine)
		if err == nil {
			t.Fatal("a check conn without a deadline")
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if cc, err = newCheckConn(ctx, conn, maxSMTPLine); err != nil {
			t.Fatal(err)
		}
		var got []smtpReply
		for {
			r, err := cc.readSMTPReply()
			if err != nil {
				break
			}
			if len(r.lines) == 0 || len(r.lines) > maxResponsesPerCommand {
				t.Fatalf("a reply of %d lines", len(r.lines))
			}
			got = append(got, r)
		}
		want := referenceReplies(input)
		if len(got) != len(want) {
			t.Fatalf("read %d replies, the reference %d:\n%q\n%q", len(got), len(want), got, want)
		}
		for i := range got {
			if got[i].code != want[i].code || !slices.Equal(got[i].lines, want[i].lines) {
				t.Fatalf("reply %d: %d %q, the reference %d %q", i, got[i].code, got[i].lines, want[i].code, want[i].lines)
			}
		}
	})
}

func FuzzCheckSMTP(f *testing.F) {
	for _, s := range smtpSeeds {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	steps := []string{"greeting", "EHLO", "AUTH PLAIN", "QUIT"}
	f.Fuzz(func(t *testing.T, input []byte, login bool) {
		var creds *Credentials
		if login {
			creds = &Credentials{User: "fuzz-user-7f3a", Password: "p\u00e4ss-9c1e"}
		}
		conn := &replayConn{in: bytes.NewReader(input)}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res, err := CheckSMTP(ctx, conn, "edge.test", creds)
		checkInvariants(t, SMTP, input, conn, res, err, creds, steps, maxSMTPLine)
		if res.Greeting != "" {
			replies := referenceReplies(input)
			if len(replies) == 0 || res.Greeting != replies[0].String() {
				t.Fatalf("greeting %q, the reference's first reply %q", res.Greeting, replies)
			}
		}
		if err == nil && (!strings.HasPrefix(res.Greeting, "220") || res.LoggedIn != login) {
			t.Fatalf("a check succeeded with greeting %q, LoggedIn %v", res.Greeting, res.LoggedIn)
		}
	})
}

// referenceRefusalText is appendRefusalText's text the other way round:
// the printable words of s, joined by single spaces, cut at limit bytes.
func referenceRefusalText(s string, limit int) string {
	words := strings.FieldsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' })
	text := strings.Join(words, " ")
	if len(text) > limit {
		text = text[:limit]
	}
	return strings.TrimSuffix(text, " ")
}

// FuzzRefusal: whatever host and reason say, a refusal is one line of
// printable ASCII within RFC 5321's 512 octets, the text the reference
// expects, and the checks read it as the refusal it is.
func FuzzRefusal(f *testing.F) {
	f.Add("mail.example.org", "backend down")
	f.Add("mx", "evil\r\n250 OK\r\n")
	f.Add("", "\x00\t")
	f.Add("h\xc3\xa9st", "caf\xc3\xa9")
	f.Add(strings.Repeat("h", 300), strings.Repeat("r ", 150))
	f.Fuzz(func(t *testing.T, host, reason string) {
		for _, p := range []Protocol{IMAP, SMTP} {
			line := string(p.Refusal(host, reason))
			body, ok := strings.CutSuffix(line, "\r\n")
			if !ok || len(line) > 512 || strings.ContainsFunc(body, func(r rune) bool { return r < ' ' || r > '~' }) {
				t.Fatalf("%v refusal %q: not one printable line of at most 512 bytes", p, line)
			}
			want := strings.TrimSpace(referenceRefusalText(host, maxRefusalHost) + " " + referenceRefusalText(reason, maxRefusalReason))
			if want == "" {
				want = "service unavailable"
			}
			prefix := map[Protocol]string{IMAP: "* BYE [UNAVAILABLE] ", SMTP: "421 4.3.0 "}[p]
			if body != prefix+want {
				t.Fatalf("%v refusal %q, the reference %q", p, body, prefix+want)
			}
			conn := &replayConn{in: bytes.NewReader([]byte(line))}
			res, err := check(t.Context(), p, conn, nil)
			if err == nil || !strings.HasPrefix(err.Error(), p.String()+" greeting: ") || !strings.Contains(err.Error(), "refuses the connection") || res.Greeting != body {
				t.Fatalf("%v check of refusal %q: %+v, %v", p, line, res, err)
			}
			if conn.written.Len() != 0 {
				t.Fatalf("%v check answered a refusal with %q", p, conn.written.String())
			}
		}
	})
}

var _ net.Conn = (*replayConn)(nil)
