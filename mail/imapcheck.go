package mail

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// The IMAP side of the checks is a small client of its own. go-imap
// v2.0.0-beta.8's client loops forever without reading on a CAPABILITY list
// that holds a "(" (`* OK [CAPABILITY (IMAP4rev1)] x`), and it parses the
// CAPABILITY codes of every tagged response too; no released go-imap fixes
// it. This client reads lines of bounded length through checkConn and
// parses each in one pass over its bytes.

const (
	// maxIMAPLine bounds a response line: RFC 7162 §4 asks servers to accept
	// commands of 8192 octets, and no response of the check comes near.
	maxIMAPLine = 8192
	// maxIMAPLiterals bounds the literals of one response (RFC 9051 §4.3):
	// of the check's responses only a LIST of SELECT's may hold one.
	maxIMAPLiterals = 16
)

// imapGreeting is a parsed greeting (RFC 9051 §7.1): status OK, PREAUTH or
// BYE, the capabilities of a CAPABILITY response code, and the text.
type imapGreeting struct {
	status       string // upper case
	capabilities []string
	text         string
}

// parseIMAPGreeting parses greeting = "*" SP (resp-cond-auth /
// resp-cond-bye) CRLF, without the CRLF (RFC 9051 §9). A BYE is a
// well-formed greeting: the caller refuses it.
func parseIMAPGreeting(line string) (imapGreeting, error) {
	rest, ok := strings.CutPrefix(line, "* ")
	if !ok {
		return imapGreeting{}, errors.New(`not an untagged response ("* ")`)
	}
	status, text, _ := strings.Cut(rest, " ")
	status = strings.ToUpper(status)
	if status != "OK" && status != "PREAUTH" && status != "BYE" {
		return imapGreeting{}, fmt.Errorf("status %s, want OK, PREAUTH or BYE", quoteLine(status))
	}
	code, text, err := splitRespText(text)
	if err != nil {
		return imapGreeting{}, err
	}
	g := imapGreeting{status: status, text: text}
	if name, list, _ := strings.Cut(code, " "); strings.EqualFold(name, "CAPABILITY") {
		if g.capabilities, err = parseCapabilities(list); err != nil {
			return imapGreeting{}, fmt.Errorf("response code CAPABILITY: %w", err)
		}
	}
	return g, nil
}

// splitRespText splits resp-text = ["[" resp-text-code "]" SP] [text]
// (RFC 9051 §7.1) into the code, without its brackets, and the text. A code
// holds no "]" (resp-specials), so the first one ends it.
func splitRespText(s string) (code, text string, err error) {
	rest, ok := strings.CutPrefix(s, "[")
	if !ok {
		return "", s, nil
	}
	code, text, ok = strings.Cut(rest, "]")
	if !ok {
		return "", "", errors.New(`a response code without "]"`)
	}
	if code == "" {
		return "", "", errors.New("an empty response code")
	}
	if text != "" && text[0] != ' ' {
		return "", "", errors.New(`no space after the response code`)
	}
	return code, strings.TrimPrefix(text, " "), nil
}

// parseCapabilities parses the list of capability-data (RFC 9051 §7.2.2):
// atoms separated by SP. Runs of SP are taken as one (some servers send
// them, go-imap #652); anything but an atom is an error.
func parseCapabilities(list string) ([]string, error) {
	var caps []string
	for field := range strings.SplitSeq(list, " ") {
		if field == "" {
			continue
		}
		if i := strings.IndexFunc(field, func(r rune) bool { return !isAtomChar(r) }); i >= 0 {
			return nil, fmt.Errorf("%s is not an atom (RFC 9051 §9): %q is not allowed", quoteLine(field), field[i])
		}
		caps = append(caps, field)
	}
	if len(caps) == 0 {
		return nil, errors.New("no capabilities")
	}
	return caps, nil
}

// isAtomChar is ATOM-CHAR: any CHAR except atom-specials, that is "(",
// ")", "{", SP, CTL, "%", "*", DQUOTE, "\" and "]" (RFC 9051 §9).
func isAtomChar(r rune) bool {
	return r > ' ' && r < 0x7f && !strings.ContainsRune(`(){%*"\]`, r)
}

// hasIMAPVersion says whether caps name IMAP4rev1 or IMAP4rev2, which
// every CAPABILITY response lists (RFC 9051 §7.2.2, RFC 3501 §7.2.1).
func hasIMAPVersion(caps []string) bool {
	return slices.ContainsFunc(caps, func(c string) bool {
		return strings.EqualFold(c, "IMAP4rev1") || strings.EqualFold(c, "IMAP4rev2")
	})
}

// imapResponse is one server response, classified (RFC 9051 §2.2.2).
type imapResponse struct {
	kind   byte   // '*' untagged, '+' continuation, 't' tagged
	tag    string // of a tagged response
	status string // OK, NO, BAD, BYE, PREAUTH (upper case), or "" for data
	rest   string // after the tag and the status (or the "* ", for data)
}

// parseIMAPResponse classifies one response line.
func parseIMAPResponse(line string) (imapResponse, error) {
	if line == "+" || strings.HasPrefix(line, "+ ") {
		return imapResponse{kind: '+', rest: strings.TrimPrefix(line[1:], " ")}, nil
	}
	tag, rest, ok := strings.Cut(line, " ")
	if !ok || tag == "" {
		return imapResponse{}, fmt.Errorf("not an IMAP response: %s", quoteLine(line))
	}
	r := imapResponse{kind: 't', tag: tag}
	if tag == "*" {
		r.kind, r.tag = '*', ""
	}
	word, after, _ := strings.Cut(rest, " ")
	switch status := strings.ToUpper(word); status {
	case "OK", "NO", "BAD", "BYE", "PREAUTH":
		r.status, r.rest = status, after
	default:
		if r.kind == 't' {
			return imapResponse{}, fmt.Errorf("tagged response without OK, NO or BAD: %s", quoteLine(line))
		}
		r.rest = rest
	}
	return r, nil
}

// literalAtEnd returns n when line ends with the announcement of a literal
// of n octets, "{n}" (RFC 9051 §4.3). Only untagged data may end so: the
// text of a status response is just text.
func literalAtEnd(line string) (n int, ok bool) {
	if !strings.HasSuffix(line, "}") {
		return 0, false
	}
	open := strings.LastIndexByte(line, '{')
	if open < 0 {
		return 0, false
	}
	digits := line[open+1 : len(line)-1]
	if digits == "" || len(digits) > 10 || strings.Trim(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil
}

// imapQuoted returns s as a quoted string (RFC 9051 §4.3), or false when s
// holds a byte a quoted string cannot carry in IMAP4rev1: NUL, CR, LF or
// 8-bit (those go as a literal).
func imapQuoted(s string) (string, bool) {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0 || c == '\r' || c == '\n' || c >= 0x80:
			return "", false
		case c == '"' || c == '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String(), true
}

// imapChecker is the check's side of one IMAP connection.
type imapChecker struct {
	conn *checkConn
	tags int
}

// readResponse reads one response. Where untagged data ends in a literal,
// it reads the literal's octets and the line that continues the response;
// the octets are left out of rest.
func (s *imapChecker) readResponse() (imapResponse, error) {
	line, err := s.conn.readLine()
	if err != nil {
		return imapResponse{}, err
	}
	r, err := parseIMAPResponse(line)
	if err != nil || r.kind != '*' || r.status != "" {
		return r, err
	}
	for literals := 0; ; literals++ {
		n, ok := literalAtEnd(line)
		if !ok {
			return r, nil
		}
		if literals == maxIMAPLiterals {
			return imapResponse{}, fmt.Errorf("a response with more than %d literals", maxIMAPLiterals)
		}
		if _, err := s.conn.readFull(n); err != nil {
			return imapResponse{}, err
		}
		if line, err = s.conn.readLine(); err != nil {
			return imapResponse{}, err
		}
		r.rest += line
	}
}

func (s *imapChecker) nextTag() string {
	s.tags++
	return "c" + strconv.Itoa(s.tags)
}

// command sends tag SP command CRLF and reads responses until its tagged
// one; untagged data goes to onData (which may be nil).
func (s *imapChecker) command(command string, onData func(string) error) error {
	tag := s.nextTag()
	if err := s.conn.write([]byte(tag + " " + command + "\r\n")); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return s.await(tag, false, onData)
}

// await reads responses until the tagged response of tag, or until a
// continuation request when continuation is set. An untagged BYE fails the
// command: the server is closing the connection (RFC 9051 §7.1.5).
func (s *imapChecker) await(tag string, continuation bool, onData func(string) error) error {
	for range maxResponsesPerCommand {
		r, err := s.readResponse()
		if err != nil {
			return err
		}
		switch {
		case r.kind == '+' && continuation:
			return nil
		case r.kind == '+':
			return errors.New("a continuation request that was not asked for")
		case r.kind == 't' && r.tag != tag:
			return fmt.Errorf("a tagged response to %q, want %q", r.tag, tag)
		case r.kind == 't' && continuation:
			return fmt.Errorf("%s %s, not a continuation request", r.status, quoteLine(r.rest))
		case r.kind == 't' && r.status == "OK":
			return nil
		case r.kind == 't':
			return fmt.Errorf("%s %s", r.status, quoteLine(r.rest))
		case r.status == "BYE":
			return fmt.Errorf("the server closes the connection: BYE %s", quoteLine(r.rest))
		case r.status == "" && onData != nil:
			if err := onData(r.rest); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("more than %d responses without the tagged one", maxResponsesPerCommand)
}

// capability sends CAPABILITY and returns the capabilities of its untagged
// response (RFC 9051 §6.1.1).
func (s *imapChecker) capability() ([]string, error) {
	var caps []string
	err := s.command("CAPABILITY", func(data string) error {
		name, list, _ := strings.Cut(data, " ")
		if !strings.EqualFold(name, "CAPABILITY") {
			return nil
		}
		c, err := parseCapabilities(list)
		if err != nil {
			return fmt.Errorf("CAPABILITY response: %w", err)
		}
		caps = append(caps, c...)
		return nil
	})
	if err == nil && !hasIMAPVersion(caps) {
		err = fmt.Errorf("no IMAP4rev1 or IMAP4rev2 among the capabilities %q", caps)
	}
	return caps, err
}

// login sends LOGIN (RFC 9051 §6.2.3). User and password go as quoted
// strings, or as synchronizing literals (§4.3) when a quoted string cannot
// carry them; neither ever appears in an error.
func (s *imapChecker) login(user, password string) error {
	tag := s.nextTag()
	pending := tag + " LOGIN"
	for _, arg := range []string{user, password} {
		if quoted, ok := imapQuoted(arg); ok {
			pending += " " + quoted
			continue
		}
		if strings.IndexByte(arg, 0) >= 0 {
			return errors.New("the user name or password holds a NUL byte, which IMAP cannot send")
		}
		if err := s.conn.write([]byte(pending + " {" + strconv.Itoa(len(arg)) + "}\r\n")); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		if err := s.await(tag, true, nil); err != nil {
			return err
		}
		pending = arg
	}
	if err := s.conn.write([]byte(pending + "\r\n")); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	return s.await(tag, false, nil)
}

// selectInbox sends SELECT INBOX and returns the number of messages of its
// EXISTS response (RFC 9051 §6.3.2, §7.4.1).
func (s *imapChecker) selectInbox() (uint32, error) {
	var exists uint32
	err := s.command("SELECT INBOX", func(data string) error {
		number, name, _ := strings.Cut(data, " ")
		if !strings.EqualFold(name, "EXISTS") {
			return nil
		}
		n, err := strconv.ParseUint(number, 10, 32)
		if err != nil {
			return fmt.Errorf("EXISTS response: %s is not a number", quoteLine(number))
		}
		exists = uint32(n)
		return nil
	})
	return exists, err
}

// logout sends LOGOUT (RFC 9051 §6.1.3): the server answers with a BYE and
// the tagged OK; a server that closes the connection after its BYE has
// logged out too.
func (s *imapChecker) logout() error {
	tag := s.nextTag()
	if err := s.conn.write([]byte(tag + " LOGOUT\r\n")); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	sawBye := false
	for range maxResponsesPerCommand {
		r, err := s.readResponse()
		switch {
		case err != nil && sawBye:
			return nil
		case err != nil:
			return err
		case r.kind == '*' && r.status == "BYE":
			sawBye = true
		case r.kind == 't' && r.tag == tag && r.status == "OK":
			return nil
		case r.kind == 't':
			return fmt.Errorf("%s %s", r.status, quoteLine(r.rest))
		}
	}
	return fmt.Errorf("more than %d responses without the tagged one", maxResponsesPerCommand)
}
