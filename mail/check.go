package mail

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
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
// then logs out. It takes conn over and closes it before returning. The
// deadline of ctx (DefaultProbeTimeout when it has none) is set on conn and
// bounds the whole check, whatever the server sends. Errors name the step
// that failed ("imap LOGIN: ...").
func CheckIMAP(ctx context.Context, conn net.Conn, creds *Credentials) (res CheckResult, err error) {
	start := time.Now()
	ctx, cancel := checkContext(ctx)
	defer cancel()
	step := func(name string, err error) error {
		return fmt.Errorf("imap %s: %w", name, WithContextErr(ctx, err))
	}
	cc, err := newCheckConn(ctx, conn, maxIMAPLine)
	if err != nil {
		conn.Close()
		return res, step("greeting", err)
	}
	defer cc.close()
	client := &imapChecker{conn: cc}

	// The greeting (RFC 9051 §7.1): OK, PREAUTH or BYE.
	line, err := cc.readLine()
	if err != nil {
		return res, step("greeting", err)
	}
	res.Greeting, res.Latency = line, time.Since(start)
	greeting, err := parseIMAPGreeting(line)
	if err == nil && greeting.status == "BYE" {
		err = errors.New("the server refuses the connection")
	}
	if err != nil {
		return res, step("greeting", fmt.Errorf("%s: %w", quoteLine(line), err))
	}

	caps, err := client.capability()
	if err != nil {
		return res, step("CAPABILITY", err)
	}
	slices.Sort(caps)
	res.Capabilities = slices.Compact(caps)

	if creds != nil {
		if greeting.status != "PREAUTH" { // PREAUTH: already authenticated (RFC 9051 §7.1.4)
			if err := client.login(creds.User, creds.Password); err != nil {
				return res, step("LOGIN", err)
			}
		}
		messages, err := client.selectInbox()
		if err != nil {
			return res, step("SELECT INBOX", err)
		}
		res.LoggedIn, res.Messages = true, messages
	}
	if err := client.logout(); err != nil {
		return res, step("LOGOUT", err)
	}
	return res, nil
}

// CheckSMTP speaks SMTP on conn: it reads the greeting, sends EHLO heloHost,
// with creds authenticates with AUTH PLAIN (RFC 4954, RFC 4616), then QUITs.
// It takes conn over and closes it before returning. The deadline of ctx
// (DefaultProbeTimeout when it has none) is set on conn and bounds the whole
// check, whatever the server sends. Errors name the step that failed
// ("smtp AUTH PLAIN: ...").
func CheckSMTP(ctx context.Context, conn net.Conn, heloHost string, creds *Credentials) (res CheckResult, err error) {
	start := time.Now()
	ctx, cancel := checkContext(ctx)
	defer cancel()
	step := func(name string, err error) error {
		return fmt.Errorf("smtp %s: %w", name, WithContextErr(ctx, err))
	}
	if heloHost == "" || strings.ContainsAny(heloHost, " \r\n") {
		conn.Close()
		return res, step("EHLO", fmt.Errorf("%q is not a host name for EHLO", heloHost))
	}
	cc, err := newCheckConn(ctx, conn, maxSMTPLine)
	if err != nil {
		conn.Close()
		return res, step("greeting", err)
	}
	defer cc.close()

	// The greeting: 220, or 554 for a server that refuses (RFC 5321 §4.3.1).
	greeting, err := cc.readSMTPReply()
	if err != nil {
		return res, step("greeting", err)
	}
	res.Greeting, res.Latency = greeting.String(), time.Since(start)
	if greeting.code != 220 {
		return res, step("greeting", fmt.Errorf("the server refuses the connection: %s", quoteLine(res.Greeting)))
	}

	ehlo, err := cc.smtpCommand("EHLO "+heloHost, 250)
	if ehlo.code == 500 || ehlo.code == 502 {
		// A server without ESMTP (RFC 5321 §3.2): HELO, and no extensions.
		_, err = cc.smtpCommand("HELO "+heloHost, 250)
	}
	if err != nil {
		return res, step("EHLO", err)
	}
	if ehlo.code == 250 {
		res.Capabilities = ehloKeywords(ehlo)
		slices.Sort(res.Capabilities)
	}

	if creds != nil {
		auth, err := authPlain(creds.User, creds.Password)
		if err == nil {
			_, err = cc.smtpCommand(auth, 235)
		}
		if err != nil {
			return res, step("AUTH PLAIN", err)
		}
		res.LoggedIn = true
	}
	if _, err := cc.smtpCommand("QUIT", 221); err != nil {
		return res, step("QUIT", err)
	}
	return res, nil
}
