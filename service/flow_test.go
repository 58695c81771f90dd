package service

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// dialECH connects to one of the demo's listeners like Delta Chat does, with
// ECH, and checks that ECH was accepted.
func (d *Demo) dialECH(t *testing.T, listener string, alpn ...string) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port(listener))), d.tlsConfig(t, alpn...))
	if err != nil {
		t.Fatalf("dial %s %v: %v", listener, alpn, err)
	}
	if !conn.ConnectionState().ECHAccepted {
		t.Fatalf("%s %v: ECH not accepted", listener, alpn)
	}
	return conn
}

func sendToSelf(t *testing.T, conn *tls.Conn, email, password, token string) string {
	t.Helper()
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Auth(sasl.NewPlainClient("", email, password)); err != nil {
		t.Fatalf("SMTP AUTH: %v", err)
	}
	body := fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@chatmail.localhost>\r\n\r\nhello through the edge, %s\r\n", email, email, token, token, token)
	if err := c.SendMail(email, []string{email}, strings.NewReader(body)); err != nil {
		t.Fatalf("SMTP send: %v", err)
	}
	c.Quit()
	return body
}

func fetchInbox(t *testing.T, conn *tls.Conn, email, password string) []string {
	t.Helper()
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(email, password).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN: %v", err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("IMAP SELECT: %v", err)
	}
	if sel.NumMessages == 0 {
		return nil
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1, sel.NumMessages), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil {
		t.Fatalf("IMAP FETCH: %v", err)
	}
	var bodies []string
	for _, m := range msgs {
		for _, b := range m.BodySection {
			bodies = append(bodies, string(b.Bytes))
		}
	}
	c.Logout().Wait()
	return bodies
}

// TestChatmailFlowThroughDemo is a Delta Chat user's first minute, every
// connection with ECH: create an account with POST /new, send a message to
// oneself over SMTP and read it back over IMAP, across all the ports.
func TestChatmailFlowThroughDemo(t *testing.T) {
	d := startTestDemo(t, t.TempDir())
	for _, r := range mailRoutes {
		t.Run(r.name, func(t *testing.T) {
			email, password := newAccount(t, d)
			token := randomToken()
			sent := sendToSelf(t, d.dialECH(t, r.submit, r.submitALPN...), email, password, token)
			// The local delivery stores the message before it answers 250.
			bodies := fetchInbox(t, d.dialECH(t, r.read, r.rALPN...), email, password)
			if len(bodies) != 1 {
				t.Fatalf("INBOX has %d messages, want exactly 1", len(bodies))
			}
			if !strings.HasSuffix(bodies[0], sent) {
				t.Fatalf("fetched message differs:\n%q\nwant suffix\n%q", bodies[0], sent)
			}
		})
	}
}

// mailRoutes are the ways a client submits and reads mail, between them
// every port and ALPN.
var mailRoutes = []struct {
	name              string
	submit, read      string
	submitALPN, rALPN []string
}{
	{"465 then 443/imap", "smtps", "https", nil, []string{"imap"}},
	{"443/smtp then 993", "https", "imaps", []string{"smtp"}, nil},
}

func randomToken() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
