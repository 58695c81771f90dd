//go:build integration

package integration

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// route is one way into the edge: a listener and the ALPN a client offers.
type route struct {
	name     string
	listener string
	alpn     []string
}

var (
	submit465 = route{"465", "smtps", nil}
	submit443 = route{"443-smtp", "https", []string{"smtp"}}
	read993   = route{"993", "imaps", nil}
	read443   = route{"443-imap", "https", []string{"imap"}}
)

// clientIP is where every test client connects from. It is not the edge's
// 127.0.0.1, so a daemon's log tells whether it learned the real client.
var clientIP = net.IPv4(127, 0, 0, 2)

const clientTimeout = 30 * time.Second

// dial connects to the edge like Delta Chat does: TLS 1.3 with ECH, from
// clientIP. It fails unless ECH was accepted.
func (r *relay) dial(rt route) (*tls.Conn, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: clientIP}, Timeout: clientTimeout}
	conn, err := tls.DialWithDialer(d, "tcp", r.addr(rt.listener), &tls.Config{
		ServerName:                     domain,
		RootCAs:                        r.roots,
		NextProtos:                     rt.alpn,
		MinVersion:                     tls.VersionTLS13,
		EncryptedClientHelloConfigList: r.echList,
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", rt.name, err)
	}
	if cs := conn.ConnectionState(); !cs.ECHAccepted || cs.ServerName != domain {
		conn.Close()
		return nil, fmt.Errorf("%s: ECH accepted %v, inner SNI %q", rt.name, cs.ECHAccepted, cs.ServerName)
	}
	return conn, nil
}

type account struct{ addr, password string }

func newAccount(name string) account {
	return account{name + "@" + domain, randomToken()}
}

func randomToken() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// message is a test message with a unique Message-ID. Its body holds what a
// mail path may mangle: lines that SMTP dot-stuffs (RFC 5321 §4.5.2), a
// "From " line that mbox would escape, trailing blanks, an empty line and a
// line near the 998-octet limit (RFC 5322 §2.1.1).
type message struct {
	id       string // Message-ID without angle brackets
	from, to account
	body     string
}

func newMessage(from, to account) message {
	token := randomToken()
	body := "Hello through the edge, " + token + ".\r\n" +
		".a line that starts with a dot\r\n" +
		"..and one with two\r\n" +
		".\r\n" +
		"From the start of a line\r\n" +
		"trailing blanks \t \r\n" +
		"\r\n" +
		strings.Repeat("0123456789", 99) + "\r\n" +
		"last line\r\n"
	return message{id: token + "@" + domain, from: from, to: to, body: body}
}

func (m message) String() string {
	return fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: integration %s\r\nMessage-ID: <%s>\r\n"+
		"Date: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n%s",
		m.from.addr, m.to.addr, m.id, m.id, time.Now().Format(time.RFC1123Z), m.body)
}

// submit sends msgs over one SMTP session through rt, authenticated as the
// sender (SMTP AUTH PLAIN, RFC 4954), and returns Postfix's queue ids.
func (r *relay) submit(rt route, msgs ...message) ([]string, error) {
	conn, err := r.dial(rt)
	if err != nil {
		return nil, err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("client.example"); err != nil {
		return nil, fmt.Errorf("%s: EHLO: %w", rt.name, err)
	}
	from := msgs[0].from
	if err := c.Auth(sasl.NewPlainClient("", from.addr, from.password)); err != nil {
		return nil, fmt.Errorf("%s: AUTH: %w", rt.name, err)
	}
	var queueIDs []string
	for _, m := range msgs {
		id, err := sendOne(c, m)
		if err != nil {
			return queueIDs, fmt.Errorf("%s: send %s: %w", rt.name, m.id, err)
		}
		queueIDs = append(queueIDs, id)
	}
	return queueIDs, c.Quit()
}

// sendOne runs one mail transaction and returns the queue id from Postfix's
// "250 2.0.0 Ok: queued as ID".
func sendOne(c *smtp.Client, m message) (string, error) {
	if err := c.Mail(m.from.addr, nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(m.to.addr, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	if _, err := w.Write([]byte(m.String())); err != nil {
		return "", err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	_, id, ok := strings.Cut(resp.StatusText, "queued as ")
	if !ok {
		return "", fmt.Errorf("no queue id in %q", resp.StatusText)
	}
	return strings.TrimSpace(id), nil
}

func (r *relay) mustSubmit(t *testing.T, rt route, msgs ...message) []string {
	t.Helper()
	ids, err := r.submit(rt, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// login opens an IMAP session through rt and logs in.
func (r *relay) login(t *testing.T, rt route, acct account, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	conn, err := r.dial(rt)
	if err != nil {
		t.Fatal(err)
	}
	c := imapclient.New(conn, opts)
	t.Cleanup(func() { c.Close() })
	if err := c.Login(acct.addr, acct.password).Wait(); err != nil {
		t.Fatalf("%s: LOGIN %s: %v", rt.name, acct.addr, err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("%s: SELECT: %v", rt.name, err)
	}
	return c
}

var textSection = &imap.FetchItemBodySection{Specifier: imap.PartSpecifierText, Peek: true}

// bodiesOf returns the body (BODY.PEEK[TEXT]) of every INBOX message with
// Message-ID id.
func bodiesOf(c *imapclient.Client, id string) ([][]byte, error) {
	// NOOP first: the server reports new messages before a command ends.
	if err := c.Noop().Wait(); err != nil {
		return nil, err
	}
	uids, err := uidsOf(c, id)
	if err != nil || len(uids) == 0 {
		return nil, err
	}
	msgs, err := c.Fetch(imap.UIDSetNum(uids...), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{textSection}}).Collect()
	if err != nil {
		return nil, fmt.Errorf("FETCH: %w", err)
	}
	var bodies [][]byte
	for _, m := range msgs {
		bodies = append(bodies, m.FindBodySection(textSection))
	}
	return bodies, nil
}

// uidsOf returns the UIDs of the INBOX messages with Message-ID id.
func uidsOf(c *imapclient.Client, id string) ([]imap.UID, error) {
	found, err := c.UIDSearch(&imap.SearchCriteria{
		Header: []imap.SearchCriteriaHeaderField{{Key: "Message-ID", Value: "<" + id + ">"}},
	}, nil).Wait()
	if err != nil {
		return nil, fmt.Errorf("UID SEARCH: %w", err)
	}
	return found.AllUIDs(), nil
}

// waitForMessage polls INBOX until the message with id has arrived and
// returns its bodies (more than one if it arrived more than once).
func waitForMessage(t *testing.T, c *imapclient.Client, id string) [][]byte {
	t.Helper()
	var bodies [][]byte
	var err error
	waitUntil(t, time.Minute, "message "+id, func() bool {
		bodies, err = bodiesOf(c, id)
		return err != nil || len(bodies) > 0
	})
	if err != nil {
		t.Fatal(err)
	}
	return bodies
}

// messageIDCounts counts the INBOX messages per Message-ID.
func messageIDCounts(c *imapclient.Client) (map[string]int, error) {
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	if sel.NumMessages == 0 {
		return counts, nil
	}
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: sel.NumMessages}}, &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		counts[m.Envelope.MessageID]++
	}
	return counts, nil
}

// rawIMAP is an IMAP session spoken by hand, for what a client library
// hides: an unsolicited BYE before the connection ends.
type rawIMAP struct {
	conn *tls.Conn
	r    *bufio.Reader
}

func (r *relay) rawIMAP(t *testing.T, rt route) *rawIMAP {
	t.Helper()
	conn, err := r.dial(rt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawIMAP{conn: conn, r: bufio.NewReader(conn)}
}

// waitLine reads lines until one starts with prefix, and returns it.
func (s *rawIMAP) waitLine(t *testing.T, prefix string, timeout time.Duration) string {
	t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(timeout))
	var seen []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			t.Fatalf("waiting for %q: %v; read before: %q", prefix, err, seen)
		}
		if strings.HasPrefix(line, prefix) {
			return strings.TrimRight(line, "\r\n")
		}
		seen = append(seen, line)
	}
}

// command sends one command and waits for its tagged OK.
func (s *rawIMAP) command(t *testing.T, tag, cmd string) {
	t.Helper()
	s.send(t, tag+" "+cmd)
	if line := s.waitLine(t, tag+" ", clientTimeout); !strings.HasPrefix(line, tag+" OK") {
		t.Fatalf("%s: %s", cmd, line)
	}
}

func (s *rawIMAP) send(t *testing.T, line string) {
	t.Helper()
	if _, err := fmt.Fprintf(s.conn, "%s\r\n", line); err != nil {
		t.Fatal(err)
	}
}

// expectEOF expects the server to end the stream within timeout, with
// nothing more to say.
func (s *rawIMAP) expectEOF(t *testing.T, timeout time.Duration) {
	t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(timeout))
	rest, err := io.ReadAll(s.r)
	if err != nil || len(rest) > 0 {
		t.Fatalf("want the end of the stream, got %q, %v", rest, err)
	}
}
