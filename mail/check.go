package mail

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Credentials log a check in.
type Credentials struct{ User, Password string }

// CheckResult is what an IMAP or SMTP check saw.
type CheckResult struct {
	Greeting     string        // the server's first reply, lines joined by "\n"
	Capabilities []string      // IMAP CAPABILITY atoms, or the SMTP EHLO lines after the first ("SIZE 31457280"), sorted
	LoggedIn     bool          // LOGIN + SELECT INBOX (IMAP) / AUTH PLAIN (SMTP) succeeded
	Messages     uint32        // IMAP: messages in INBOX after SELECT
	Latency      time.Duration // from the start of the check to the complete greeting
}

// CheckIMAP speaks IMAP on conn: it waits for the greeting, asks for
// CAPABILITY, with creds logs in (LOGIN, RFC 9051 §6.2.3) and selects INBOX,
// then logs out. It takes conn over and closes it before returning; ctx
// bounds every step. Errors name the step that failed ("imap LOGIN: ...").
func CheckIMAP(ctx context.Context, conn net.Conn, creds *Credentials) (res CheckResult, err error) {
	start := time.Now()
	cc := newCheckConn(ctx, conn, 1, isIMAPLastLine)
	client := imapclient.New(cc, nil)
	defer func() {
		client.Close() // stops the client's reader; the error is that of LOGOUT's BYE or of our own failure
		cc.close()
	}()
	step := func(name string, err error) error {
		return fmt.Errorf("imap %s: %w", name, withContextErr(ctx, err))
	}

	err = client.WaitGreeting()
	res.Greeting, res.Latency = greeting(cc, start)
	if err != nil {
		return res, step("greeting", err)
	}
	caps, err := client.Capability().Wait()
	if err != nil {
		return res, step("CAPABILITY", err)
	}
	for c := range caps {
		res.Capabilities = append(res.Capabilities, string(c))
	}
	slices.Sort(res.Capabilities)

	if creds != nil {
		if err := client.Login(creds.User, creds.Password).Wait(); err != nil {
			return res, step("LOGIN", err)
		}
		selected, err := client.Select("INBOX", nil).Wait()
		if err != nil {
			return res, step("SELECT INBOX", err)
		}
		res.LoggedIn, res.Messages = true, selected.NumMessages
	}
	if err := client.Logout().Wait(); err != nil {
		return res, step("LOGOUT", err)
	}
	return res, nil
}

// CheckSMTP speaks SMTP on conn: it reads the greeting, sends EHLO heloHost,
// with creds authenticates with AUTH PLAIN (RFC 4954, RFC 4616), then QUITs.
// It takes conn over and closes it before returning; ctx bounds every step.
// Errors name the step that failed ("smtp AUTH PLAIN: ...").
func CheckSMTP(ctx context.Context, conn net.Conn, heloHost string, creds *Credentials) (res CheckResult, err error) {
	start := time.Now()
	cc := newCheckConn(ctx, conn, 2, isSMTPLastLine) // the greeting and the EHLO reply
	client := smtp.NewClient(cc)
	defer func() {
		client.Close()
		cc.close()
	}()
	step := func(name string, err error) error {
		return fmt.Errorf("smtp %s: %w", name, withContextErr(ctx, err))
	}

	err = client.Hello(heloHost)
	res.Greeting, res.Latency = greeting(cc, start)
	if err != nil {
		// Hello reads the greeting and then sends EHLO.
		if res.Greeting == "" || !strings.HasPrefix(res.Greeting, "220") {
			return res, step("greeting", err)
		}
		return res, step("EHLO", err)
	}
	if replies, _ := cc.replies(); len(replies) > 1 {
		// ehlo-ok-rsp: the first line greets, each further one is an
		// ehlo-line, keyword and parameters (RFC 5321 §4.1.1.1).
		for _, line := range replies[1][1:] {
			if len(line) > 4 {
				res.Capabilities = append(res.Capabilities, line[4:])
			}
		}
		slices.Sort(res.Capabilities)
	}

	if creds != nil {
		if err := client.Auth(sasl.NewPlainClient("", creds.User, creds.Password)); err != nil {
			return res, step("AUTH PLAIN", err)
		}
		res.LoggedIn = true
	}
	if err := client.Quit(); err != nil {
		return res, step("QUIT", err)
	}
	return res, nil
}

// greeting returns the first reply cc saw, and how long after start it
// arrived.
func greeting(cc *checkConn, start time.Time) (string, time.Duration) {
	replies, at := cc.replies()
	if len(replies) == 0 {
		return "", 0
	}
	return strings.Join(replies[0], "\n"), at.Sub(start)
}
