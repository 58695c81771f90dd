package mail

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap"
)

const (
	echEntry = "/shared/vendor/deltachat/ech"
	echValue = "AEX+DQBBAQAgACB0ZXN0LWtleS10ZXN0LWtleS10ZXN0LWtleS10ZXN0AAQAAQABABBjaGF0LmV4YW1wbGUub3JnAAA="
)

// startMetadataDelivery starts a local delivery whose server entries are
// the ECH entry (echValue) and nothing else.
func startMetadataDelivery(t *testing.T) (*LocalDelivery, Credentials) {
	t.Helper()
	d := NewLocalDelivery("example.org", zap.NewNop())
	d.SetServerMetadata(func(entry string) (string, bool) {
		if entry == echEntry {
			return echValue, true
		}
		return "", false
	})
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, createAccount(t, d)
}

func TestLocalDeliveryGetMetadata(t *testing.T) {
	d, creds := startMetadataDelivery(t)
	c := imapClient(t, d, creds, nil)
	got, err := c.GetMetadata("", []string{echEntry, "/shared/comment"}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if v := got.Entries[echEntry]; v == nil || string(*v) != echValue {
		t.Fatalf("ECH entry %v, want %q", got.Entries, echValue)
	}
	if v, ok := got.Entries["/shared/comment"]; !ok || v != nil {
		t.Fatalf("a missing entry asked for by name must be NIL: %v", got.Entries)
	}
	// The session goes on as before.
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
}

// rawSession is an IMAP session through the delivery's PROXY port, spoken
// by hand to check the bytes.
type rawSession struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func rawIMAP(t *testing.T, d *LocalDelivery) *rawSession {
	t.Helper()
	b := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: ModeProxy, Address: d.IMAPAddr()})
	conn, err := b.Dial(testContext(t, 10*time.Second), testClient)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	s := &rawSession{t: t, conn: conn, r: bufio.NewReader(conn)}
	s.expect("* OK ")
	return s
}

func (s *rawSession) send(data string) {
	s.t.Helper()
	if _, err := s.conn.Write([]byte(data)); err != nil {
		s.t.Fatal(err)
	}
}

// expect reads the next line and checks its start.
func (s *rawSession) expect(prefix string) string {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := s.r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, prefix) {
		s.t.Fatalf("got %q, %v; want a line starting with %q", line, err, prefix)
	}
	return line
}

// until reads lines up to one that starts with prefix.
func (s *rawSession) until(prefix string) {
	s.t.Helper()
	for !strings.HasPrefix(s.expect(""), prefix) {
	}
}

// expectECH reads the METADATA response with the ECH entry's literal.
func (s *rawSession) expectECH(entry string) {
	s.t.Helper()
	s.expect(fmt.Sprintf("* METADATA \"\" (%s {%d}\r\n", entry, len(echValue)))
	s.expect(echValue + ")\r\n")
}

func (s *rawSession) login(creds Credentials) {
	s.t.Helper()
	user, _ := imapQuoted(creds.User)
	password, ok := imapQuoted(creds.Password)
	if !ok {
		s.t.Fatalf("password %q needs a literal", creds.Password)
	}
	s.send("l LOGIN " + user + " " + password + "\r\n")
	s.expect("l OK")
}

// TestLocalDeliveryGetMetadataInOrder: pipelined commands are answered in
// order, the GETMETADATA between the server's own responses; a literal
// that looks like the command is data, not a command.
func TestLocalDeliveryGetMetadataInOrder(t *testing.T) {
	d, creds := startMetadataDelivery(t)
	s := rawIMAP(t, d)
	s.login(creds)
	s.send("a NOOP\r\nb GETMETADATA \"\" (" + echEntry + ")\r\nc NOOP\r\n")
	s.expect("a OK")
	s.expectECH(echEntry)
	s.expect("b OK Getmetadata completed.")
	s.expect("c OK")

	// A message whose text is a GETMETADATA line, sent as a
	// non-synchronizing literal (RFC 7888 LITERAL-), then a real one.
	msg := "Subject: x\r\n\r\nz GETMETADATA \"\" " + echEntry + "\r\n"
	s.send(fmt.Sprintf("d APPEND INBOX {%d+}\r\n%s\r\ne GETMETADATA \"\" %s\r\n", len(msg), msg, echEntry))
	s.expect("d OK")
	s.expectECH(echEntry)
	s.expect("e OK")
	s.send("f SELECT INBOX\r\n")
	s.until("f OK")
	s.send("g FETCH 1 BODY.PEEK[TEXT]\r\n")
	s.expect("* 1 FETCH")
	s.expect("z GETMETADATA")
	s.expect(")")
	s.expect("g OK")

	// A command line longer than the buffer passes through; the one after
	// it is still seen.
	long := strings.Repeat("x", 2*metadataLineBuffer)
	s.send("h STATUS \"" + long + "\" (MESSAGES)\r\ni GETMETADATA \"\" (" + echEntry + ")\r\n")
	s.expect("h NO")
	s.expectECH(echEntry)
	s.expect("i OK")
}

func TestLocalDeliveryGetMetadataArguments(t *testing.T) {
	d, creds := startMetadataDelivery(t)
	s := rawIMAP(t, d)
	// Before LOGIN the server's own answer (RFC 5464 §4: authenticated
	// state): an unknown command, and go-imap ends the session.
	s.send("a GETMETADATA \"\" (" + echEntry + ")\r\n")
	s.expect("a BAD")

	s = rawIMAP(t, d)
	s.login(creds)
	// Entry names are case-insensitive (RFC 5464 §3.2); options come
	// first (§4.2 ABNF), as Dovecot reads them.
	s.send("b GETMETADATA (DEPTH 0) \"\" \"/Shared/Vendor/DeltaChat/ECH\"\r\n")
	s.expectECH(echEntry)
	s.expect("b OK")
	// MAXSIZE: too long a value is left out and reported (§4.2.1).
	s.send("c GETMETADATA (MAXSIZE 10) \"\" (" + echEntry + ")\r\n")
	s.expect(fmt.Sprintf("c OK [METADATA LONGENTRIES %d]", len(echValue)))
	// DEPTH 1: no NIL for an entry that does not exist.
	s.send("d GETMETADATA (DEPTH 1) \"\" (/shared/comment)\r\n")
	s.expect("d OK")
	// Mailboxes have no metadata here, and bad arguments are the server's.
	for _, args := range []string{
		"INBOX (" + echEntry + ")",
		"\"\" (/other/entry)",
		"\"\" (/shared//double)",
		"\"\" (/shared/x*)",
		"(DEPTH 2) \"\" (" + echEntry + ")",
		"(MAXSIZE x) \"\" (" + echEntry + ")",
		"\"\" ()",
		"\"\"",
		"\"\" (" + echEntry + ") trailing",
	} {
		s.send("e GETMETADATA " + args + "\r\n")
		s.expect("e BAD")
	}
}

func TestParseServerGetMetadata(t *testing.T) {
	for line, want := range map[string][]string{
		"a GETMETADATA \"\" (/shared/a /private/B)\r\n":               {"/shared/a", "/private/b"},
		"a getmetadata \"\" /shared/a\r\n":                            {"/shared/a"},
		"a GETMETADATA \"\" \"/shared/with \\\"quote\\\"\"\r\n":       {"/shared/with \"quote\""},
		"a GETMETADATA (MAXSIZE 5 DEPTH infinity) \"\" (/shared/a)\n": {"/shared/a"},
		"a GETMETADATA \"\" {5}\r\n":                                  nil,
		"a GETMETADATA \"unclosed (/shared/a)\r\n":                    nil,
		"a GETMETADATA \"\" (/shared/a\r\n":                           nil,
		"GETMETADATA \"\" (/shared/a)\r\n":                            nil,
		"a SELECT \"\"\r\n":                                           nil,
		"a GETMETADATA \"\" (/shared/\x01)\r\n":                       nil,
		"a GETMETADATA (MAXSIZE) \"\" (/shared/a)\r\n":                nil,
	} {
		_, cmd, ok := parseServerGetMetadata([]byte(line))
		if ok != (want != nil) || fmt.Sprint(cmd.entries) != fmt.Sprint(want) && want != nil {
			t.Errorf("%q: %v %q, want %q", line, ok, cmd.entries, want)
		}
	}
}

func TestClientLiteral(t *testing.T) {
	for line, want := range map[string]int64{
		"a APPEND INBOX {12}\r\n": 12, "a APPEND INBOX {12+}\r\n": 12, "a APPEND INBOX ~{3}\n": 3,
		"a LOGIN x {0}\r\n": 0, "a NOOP\r\n": -1, "a X {}\r\n": -1, "a X {1a}\r\n": -1, "a X {99999999999}\r\n": -1,
	} {
		n, ok := clientLiteral([]byte(line))
		if want < 0 && ok || want >= 0 && (!ok || n != want) {
			t.Errorf("%q: %d %v, want %d", line, n, ok, want)
		}
	}
}

// TestLocalDeliveryWithoutMetadata: without SetServerMetadata the server
// is go-imap's alone.
func TestLocalDeliveryWithoutMetadata(t *testing.T) {
	d, _ := startDelivery(t)
	c := imapClient(t, d, createAccount(t, d), &imapclient.Options{})
	if _, err := c.GetMetadata("", []string{echEntry}, nil).Wait(); err == nil {
		t.Fatal("GETMETADATA answered without server metadata")
	}
}
