package mail

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// testClient is where the edge would forward a client from.
var testClient = ClientInfo{
	Source:      netip.MustParseAddrPort("198.51.100.9:40000"),
	Destination: netip.MustParseAddrPort("192.0.2.1:465"),
	TLSVersion:  0x0304, CipherSuite: 0x1301,
}

// startDelivery starts a local delivery whose log the test can read.
func startDelivery(t *testing.T) (*LocalDelivery, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	d := NewLocalDelivery("Example.org", zap.New(core))
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d, logs
}

func createAccount(t *testing.T, d *LocalDelivery) Credentials {
	t.Helper()
	email, password, err := d.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	return Credentials{User: email, Password: password}
}

// smtpClient connects to the delivery as the edge does in proxy mode,
// authenticated as creds unless nil.
func smtpClient(t *testing.T, d *LocalDelivery, creds *Credentials) *smtp.Client {
	t.Helper()
	b := newTestBackend(t, BackendConfig{Protocol: SMTP, Mode: ModeProxy, Address: d.SMTPAddr()})
	conn, err := b.Dial(testContext(t, 10*time.Second), testClient)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	if creds != nil {
		if err := c.Auth(sasl.NewPlainClient("", creds.User, creds.Password)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// imapClient connects and logs in to the delivery as the edge does in proxy
// mode.
func imapClient(t *testing.T, d *LocalDelivery, creds Credentials, options *imapclient.Options) *imapclient.Client {
	t.Helper()
	b := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: ModeProxy, Address: d.IMAPAddr()})
	conn, err := b.Dial(testContext(t, 10*time.Second), testClient)
	if err != nil {
		t.Fatal(err)
	}
	c := imapclient.New(conn, options)
	t.Cleanup(func() { c.Close() })
	if err := c.Login(creds.User, creds.Password).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	return c
}

func testMessage(from, to string) []byte {
	return []byte("From: " + from + "\r\nTo: " + to + "\r\nSubject: hi\r\n\r\n" +
		"line one\r\n.a line starting with a dot\r\n\r\n8-bit: caf\xc3\xa9\r\n")
}

// smtpCode is the reply code of an SMTP error, 0 for another error.
func smtpCode(err error) int {
	var smtpErr *smtp.SMTPError
	if errors.As(err, &smtpErr) {
		return smtpErr.Code
	}
	return 0
}

func TestLocalDeliveryRoundTrip(t *testing.T) {
	d, logs := startDelivery(t)
	alice, bob := createAccount(t, d), createAccount(t, d)
	msg := testMessage(alice.User, bob.User)

	c := smtpClient(t, d, &alice)
	if err := c.SendMail(alice.User, []string{bob.User, strings.ToUpper(bob.User)}, bytes.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}

	imapc := imapClient(t, d, bob, nil)
	body := &imap.FetchItemBodySection{Peek: true}
	msgs, err := imapc.Fetch(imap.SeqSetNum(1, 2), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{body}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("%d messages in INBOX, want 1 (one per mailbox, however often named)", len(msgs))
	}
	if got := msgs[0].FindBodySection(body); !bytes.Equal(got, msg) {
		t.Errorf("INBOX has\n%q\nsent\n%q", got, msg)
	}

	delivered := logs.FilterMessage("delivered").All()
	if len(delivered) != 1 || delivered[0].ContextMap()["client"] != testClient.Source.String() {
		t.Errorf("delivery log %+v, want one entry with client %v", delivered, testClient.Source)
	}
}

func TestLocalDeliveryChecks(t *testing.T) {
	d, _ := startDelivery(t)
	alice := createAccount(t, d)
	c := smtpClient(t, d, &alice)
	for range 2 {
		if err := c.SendMail(alice.User, []string{alice.User}, bytes.NewReader(testMessage(alice.User, alice.User))); err != nil {
			t.Fatal(err)
		}
	}

	for _, tt := range []struct {
		p    Protocol
		addr string
	}{{IMAP, d.IMAPAddr()}, {SMTP, d.SMTPAddr()}} {
		b := newTestBackend(t, BackendConfig{Protocol: tt.p, Mode: ModeProxy, Address: tt.addr})
		ctx := testContext(t, 10*time.Second)
		conn, err := b.Dial(ctx, testClient)
		if err != nil {
			t.Fatal(err)
		}
		res, err := check(ctx, tt.p, conn, &alice)
		if err != nil || !res.LoggedIn {
			t.Fatalf("%v check: %+v, %v", tt.p, res, err)
		}
		if tt.p == IMAP && res.Messages != 2 {
			t.Errorf("IMAP check counted %d messages, want 2", res.Messages)
		}
	}
}

func TestLocalDeliveryRefusals(t *testing.T) {
	d, logs := startDelivery(t)
	alice, bob := createAccount(t, d), createAccount(t, d)
	msg := testMessage(alice.User, bob.User)
	tests := []struct {
		name     string
		creds    *Credentials
		from, to string
		code     int
	}{
		{"unauthenticated", nil, alice.User, bob.User, 530},
		{"unknown recipient", &alice, alice.User, "nobody@example.org", 550},
		{"remote recipient", &alice, alice.User, "bob@elsewhere.example", 550},
		{"sender not owned", &alice, bob.User, bob.User, 553},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := smtpClient(t, d, tt.creds).SendMail(tt.from, []string{tt.to}, bytes.NewReader(msg))
			if smtpCode(err) != tt.code {
				t.Errorf("SendMail error %v, want %d", err, tt.code)
			}
		})
	}
	if n := logs.FilterMessage("delivered").Len(); n != 0 {
		t.Errorf("%d deliveries logged, want none", n)
	}
}

func TestLocalDeliveryRefusesOversizedMessage(t *testing.T) {
	d, _ := startDelivery(t)
	alice := createAccount(t, d)
	c := smtpClient(t, d, &alice)
	// The SIZE declared at MAIL (RFC 1870) is refused without sending 30 MiB.
	if err := c.Mail(alice.User, &smtp.MailOptions{Size: maxMessageBytes + 1}); smtpCode(err) != 552 {
		t.Errorf("MAIL SIZE=%d: %v, want 552", maxMessageBytes+1, err)
	}
	if err := c.Mail(alice.User, &smtp.MailOptions{Size: maxMessageBytes}); err != nil {
		t.Errorf("MAIL SIZE=%d: %v", maxMessageBytes, err)
	}
}

func TestLocalDeliveryRequiresProxyHeader(t *testing.T) {
	d, _ := startDelivery(t)
	for _, addr := range []string{d.IMAPAddr(), d.SMTPAddr()} {
		conn := dialTest(t, addr)
		defer conn.Close()
		// A client speaking first gets no greeting: the connection is closed
		// as soon as its bytes are not a PROXY signature.
		if _, err := conn.Write([]byte("EHLO client\r\n")); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(proxyHeaderTimeout / 2))
		got, err := io.ReadAll(conn)
		if len(got) != 0 || isTimeout(err) {
			t.Errorf("%s without a PROXY header: read %q, %v; want the connection closed at once", addr, got, err)
		}
	}
}

func isTimeout(err error) bool {
	var timeout interface{ Timeout() bool }
	return errors.As(err, &timeout) && timeout.Timeout()
}

func TestLocalDeliveryNotifiesIdleClient(t *testing.T) {
	d, _ := startDelivery(t)
	alice, bob := createAccount(t, d), createAccount(t, d)

	exists := make(chan uint32, 4)
	imapc := imapClient(t, d, bob, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					exists <- *data.NumMessages
				}
			},
		},
	})
	idle, err := imapc.Idle()
	if err != nil {
		t.Fatal(err)
	}

	if err := smtpClient(t, d, &alice).SendMail(alice.User, []string{bob.User}, bytes.NewReader(testMessage(alice.User, bob.User))); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 10*time.Second)
	select {
	case n := <-exists:
		if n != 1 {
			t.Errorf("IDLE reported %d EXISTS, want 1", n)
		}
	case <-ctx.Done():
		t.Fatal("the IDLE client heard nothing of the delivery")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestLocalDeliveryAnswersHealthChecks(t *testing.T) {
	d, _ := startDelivery(t)
	for _, tt := range []struct {
		p    Protocol
		addr string
	}{{IMAP, d.IMAPAddr()}, {SMTP, d.SMTPAddr()}} {
		b := newTestBackend(t, BackendConfig{Protocol: tt.p, Mode: ModeProxy, Address: tt.addr})
		if _, err := b.Probe(testContext(t, 10*time.Second)); err != nil {
			t.Errorf("probe with a LOCAL header: %v", err)
		}
	}
}

func TestCreateAccount(t *testing.T) {
	d := NewLocalDelivery("Example.ORG", nil)
	email, password, err := d.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[a-z0-9]{9}@example\.org$`).MatchString(email) {
		t.Errorf("address %q, want 9 of [a-z0-9] @example.org", email)
	}
	if len(password) != passwordLength || strings.Trim(password, passwordAlphabet) != "" {
		t.Errorf("password %q, want %d characters of letters, digits, punctuation", password, passwordLength)
	}
	other, otherPassword, err := d.CreateAccount()
	if err != nil || other == email || otherPassword == password {
		t.Errorf("second account %q %q %v repeats the first", other, otherPassword, err)
	}
	if !d.authenticate(email, password) || d.authenticate(email, otherPassword) || d.authenticate("nobody@example.org", password) {
		t.Error("the SMTP auth table does not match the accounts")
	}
}

func TestLocalDeliveryLifecycle(t *testing.T) {
	d := NewLocalDelivery("example.org", nil)
	if d.IMAPAddr() != "" || d.SMTPAddr() != "" {
		t.Error("addresses before Start")
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err == nil {
		t.Error("started twice")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := d.Start(); err == nil {
		t.Error("started after Close")
	}
	if _, err := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: ModeProxy, Address: d.IMAPAddr()}).Probe(t.Context()); err == nil {
		t.Error("IMAP still answers after Close")
	}
}

// TestLocalDeliveryDropsCutAppend: a client that leaves in the middle of an
// APPEND literal stores nothing (go-imap would store the fragment).
func TestLocalDeliveryDropsCutAppend(t *testing.T) {
	d, _ := startDelivery(t)
	alice := createAccount(t, d)
	b := newTestBackend(t, BackendConfig{Protocol: IMAP, Mode: ModeProxy, Address: d.IMAPAddr()})
	conn, err := b.Dial(testContext(t, 10*time.Second), testClient)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	io.WriteString(conn, "l1 LOGIN "+alice.User+" \""+alice.Password+"\"\r\na1 APPEND INBOX {100}\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("no continuation request for the literal: %v", err)
		}
		if strings.HasPrefix(line, "+") {
			break
		}
	}
	io.WriteString(conn, "From: half\r\n")
	conn.Close()

	c := imapClient(t, d, alice, nil)
	data, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *data.NumMessages != 0 {
		t.Fatalf("%d messages in INBOX, want none", *data.NumMessages)
	}
}
