package mail

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// The SMTP side of the checks speaks for itself as well: go-smtp's client
// bounds a reply line (2,000 bytes) but not the number of lines of a reply,
// so a server could feed an EHLO reply until the deadline. Here every reply
// is bounded in lines and in bytes.

// maxSMTPLine bounds a reply line without CRLF: RFC 5321 §4.5.3.1.5 allows
// 512 octets with it; twice that for servers that stretch it.
const maxSMTPLine = 1024

// smtpReply is one complete reply (RFC 5321 §4.2): its code and its lines,
// each with the code, as sent.
type smtpReply struct {
	code  int
	lines []string
}

func (r smtpReply) String() string { return strings.Join(r.lines, "\n") }

// parseSMTPReplyLine parses one line of a reply: Reply-code [("-" / SP)
// textstring] (RFC 5321 §4.2). The code is three digits, the first 2 to 5,
// the second 0 to 5 (§4.2.1); "-" says more lines follow.
func parseSMTPReplyLine(line string) (code int, last bool, err error) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' || line[2] < '0' || line[2] > '9' {
		return 0, false, fmt.Errorf("not an SMTP reply line: %s", quoteLine(line))
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	switch {
	case len(line) == 3 || line[3] == ' ':
		return code, true, nil
	case line[3] == '-':
		return code, false, nil
	}
	return 0, false, fmt.Errorf("not an SMTP reply line (no space or \"-\" after the code): %s", quoteLine(line))
}

// readSMTPReply reads one reply of at most maxResponsesPerCommand lines,
// every one with the same code (RFC 5321 §4.2.1).
func (c *checkConn) readSMTPReply() (smtpReply, error) {
	var r smtpReply
	for range maxResponsesPerCommand {
		line, err := c.readLine()
		if err != nil {
			return smtpReply{}, err
		}
		code, last, err := parseSMTPReplyLine(line)
		if err != nil {
			return smtpReply{}, err
		}
		if r.lines != nil && code != r.code {
			return smtpReply{}, fmt.Errorf("a reply line with code %d in a reply with code %d: %s", code, r.code, quoteLine(line))
		}
		r.code = code
		r.lines = append(r.lines, line)
		if last {
			return r, nil
		}
	}
	return smtpReply{}, fmt.Errorf("a reply of more than %d lines", maxResponsesPerCommand)
}

// smtpCommand sends one command line and reads its reply; a reply with
// another code than want is an error that shows the reply.
func (c *checkConn) smtpCommand(command string, want int) (smtpReply, error) {
	if err := c.write([]byte(command + "\r\n")); err != nil {
		return smtpReply{}, fmt.Errorf("send: %w", err)
	}
	r, err := c.readSMTPReply()
	if err == nil && r.code != want {
		err = fmt.Errorf("reply %s, want %d", quoteLine(r.String()), want)
	}
	return r, err
}

// ehloKeywords returns the ehlo-lines of an EHLO reply, keyword and
// parameters, without the code: every line after the first, which greets
// (RFC 5321 §4.1.1.1).
func ehloKeywords(r smtpReply) []string {
	var keywords []string
	for _, line := range r.lines[1:] {
		if len(line) > 4 {
			keywords = append(keywords, line[4:])
		}
	}
	return keywords
}

// authPlain is the AUTH PLAIN command with its initial response (RFC 4954
// §4, RFC 4616 §2): NUL, user, NUL, password, in base64.
func authPlain(user, password string) (string, error) {
	if strings.IndexByte(user, 0) >= 0 || strings.IndexByte(password, 0) >= 0 {
		return "", errors.New("the user name or password holds a NUL byte, which PLAIN cannot send")
	}
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password)), nil
}
