package metadata

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Dovecot's dict protocol, as Dovecot 2.3's "proxy" dict client speaks it
// (src/lib-dict/dict-client.c and dict-client.h, protocol 3.2) and its dict
// server answers it (src/dict/dict-commands.c). One command per line, ended
// by "\n": a command letter, then tab-separated fields, each escaped with
// str_tabescape (src/lib/strescape.c). The client opens with a hello and
// never waits for an answer to it.
//
//	H<major>\t<minor>\t<value type>\t<user>\t<dict name>   hello, no reply
//	L<key>\t<user>                                         lookup: one reply line
//	I<flags>\t<max rows>\t<path>\t<user>                   iterate: "O<key>\t<value>" lines, then an end line
//	B<id>\t<user>, S<id>\t<key>\t<value>, U<id>\t<key>,
//	A<id>\t<key>\t<diff>, T<id>\t<secs>\t<nsecs>, R<id>     transaction steps, no reply
//	C<id>, D<id>                                           commit (D: async): one reply line
//
// Replies: O<value> (found), M<values> (several), N (not found), F<error>
// (failed); commit replies carry the id: O<id>, F<id>\t<error>. A server
// that answers out of order (protocol minor version 1 and later) first sends
// "*<async id>" for each command it will answer later, then prefixes that
// command's reply lines with "+<async id>\t".
const (
	cmdHello        = 'H'
	cmdLookup       = 'L'
	cmdIterate      = 'I'
	cmdBegin        = 'B'
	cmdCommit       = 'C'
	cmdCommitAsync  = 'D'
	cmdRollback     = 'R'
	cmdSet          = 'S'
	cmdUnset        = 'U'
	cmdAtomicInc    = 'A'
	cmdSetTimestamp = 'T'

	replyOK           = 'O'
	replyNotFound     = 'N'
	replyFail         = 'F'
	replyAsyncCommit  = 'A' // prefix of the reply to D
	replyAsyncID      = '*'
	replyAsyncReply   = '+'
	dictMajorVersion  = "3"
	escapeChar        = '\001'
	fieldSeparator    = '\t'
	maxTransactionID  = 1<<32 - 1 // Dovecot's ids are unsigned int
	maxAsyncIDDigits  = 10
	maxHelloFieldsLen = 1024 // a dict name and a user name, never more
)

// replyKind is what the answer to a command looks like.
type replyKind int

const (
	noReply     replyKind = iota // hello and transaction steps
	oneLine                      // lookup and commit
	untilEndRow                  // iterate: rows until a line that is not a row
)

// command is one parsed line from Dovecot.
type command struct {
	op    byte
	reply replyKind
	// key is the unescaped key of a lookup.
	key string
	// id is the transaction id of a commit, as sent (decimal digits).
	id string
}

var errEmptyLine = errors.New("empty line")

// parseCommand reads one line from Dovecot, without its "\n". It checks
// what the proxy relies on: the command letter, the fields it reads and
// the transaction ids; the rest is passed on as it came.
func parseCommand(line []byte) (command, error) {
	if len(line) == 0 {
		// chatmail's dictproxy.py ends the connection on an empty line;
		// Dovecot never sends one.
		return command{}, errEmptyLine
	}
	c := command{op: line[0]}
	rest := line[1:]
	switch c.op {
	case cmdHello:
		return c, checkHello(rest)
	case cmdLookup:
		c.reply = oneLine
		key, _ := cutField(rest)
		c.key = tabUnescape(key)
		return c, nil
	case cmdIterate:
		c.reply = untilEndRow
		flags, rest := cutField(rest)
		maxRows, rest := cutField(rest)
		if !isDecimal(flags, 10) || !isDecimal(maxRows, 20) || rest == nil {
			return c, fmt.Errorf("iterate: want <flags>\\t<max rows>\\t<path>, got %q", clip(line))
		}
		return c, nil
	case cmdCommit, cmdCommitAsync:
		c.reply = oneLine
		id, _ := cutField(rest)
		if err := checkID(id); err != nil {
			return c, fmt.Errorf("commit: %w", err)
		}
		c.id = string(id)
		return c, nil
	case cmdBegin, cmdRollback, cmdSet, cmdUnset, cmdAtomicInc, cmdSetTimestamp:
		id, _ := cutField(rest)
		if err := checkID(id); err != nil {
			return c, fmt.Errorf("transaction command %q: %w", c.op, err)
		}
		return c, nil
	default:
		// Without knowing whether a command has a reply, the proxy
		// could not keep replies in order: Dovecot's own server also
		// drops the connection on an unknown command.
		return c, fmt.Errorf("unknown command %q", c.op)
	}
}

// checkHello checks "<major>\t<minor>\t<value type>\t<user>\t<dict name>".
func checkHello(rest []byte) error {
	major, rest := cutField(rest)
	minor, rest := cutField(rest)
	if string(major) != dictMajorVersion || !isDecimal(minor, 10) {
		return fmt.Errorf("hello: protocol version %q.%q, want major version %s", clip(major), clip(minor), dictMajorVersion)
	}
	if len(rest) > maxHelloFieldsLen {
		return fmt.Errorf("hello: %d bytes of value type, user and dict name, at most %d", len(rest), maxHelloFieldsLen)
	}
	return nil
}

func checkID(id []byte) error {
	if !isDecimal(id, 10) {
		return fmt.Errorf("transaction id %q is not a number", clip(id))
	}
	if n, err := strconv.ParseUint(string(id), 10, 64); err != nil || n > maxTransactionID {
		return fmt.Errorf("transaction id %q out of range", clip(id))
	}
	return nil
}

// isDecimal: 1 to maxDigits ASCII digits.
func isDecimal(b []byte, maxDigits int) bool {
	if len(b) == 0 || len(b) > maxDigits {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// cutField splits off the first tab-separated field. rest is nil when
// there was no tab.
func cutField(b []byte) (field, rest []byte) {
	field, rest, found := bytes.Cut(b, []byte{fieldSeparator})
	if !found {
		return field, nil
	}
	return field, rest
}

// upstreamLine is one reply line from chatmail's service.
type upstreamLine struct {
	// assigns is the async id of a "*<id>" line: the oldest command
	// without one will be answered under it.
	assigns uint64
	// asyncID is the id of a "+<id>\t" line, 0 for an in-order reply.
	asyncID uint64
	// body is the reply without the "+<id>\t" prefix.
	body []byte
}

// parseUpstreamLine splits off the out-of-order framing of a reply line.
func parseUpstreamLine(line []byte) (upstreamLine, error) {
	if len(line) == 0 {
		return upstreamLine{body: line}, nil // an iteration's end
	}
	switch line[0] {
	case replyAsyncID:
		id, err := parseAsyncID(line[1:])
		if err != nil {
			return upstreamLine{}, err
		}
		return upstreamLine{assigns: id}, nil
	case replyAsyncReply:
		idText, body, found := bytes.Cut(line[1:], []byte{fieldSeparator})
		if !found {
			return upstreamLine{}, fmt.Errorf("async reply without a tab: %q", clip(line))
		}
		id, err := parseAsyncID(idText)
		if err != nil {
			return upstreamLine{}, err
		}
		return upstreamLine{asyncID: id, body: body}, nil
	}
	return upstreamLine{body: line}, nil
}

func parseAsyncID(b []byte) (uint64, error) {
	if !isDecimal(b, maxAsyncIDDigits) {
		return 0, fmt.Errorf("async id %q is not a number", clip(b))
	}
	id, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil || id == 0 || id > maxTransactionID {
		return 0, fmt.Errorf("async id %q out of range", clip(b))
	}
	return id, nil
}

// endsIteration tells whether a reply line ends an iteration: every line
// that is not a row ("O<key>\t<value>") does, as in Dovecot's
// client_dict_iter_async_callback (an empty line: done; F: failed).
func endsIteration(body []byte) bool {
	return len(body) == 0 || body[0] != replyOK
}

// failureReply is what a command gets when chatmail's service cannot
// answer it: what Dovecot's own dict server sends for a failed lookup,
// iteration or commit (cmd_lookup_callback, cmd_iterate_flush_finish,
// cmd_commit_finish), so Dovecot reports the error as it would without the
// proxy.
func failureReply(c command, reason string) []byte {
	msg := tabEscape(reason)
	switch c.op {
	case cmdCommit:
		return []byte(string(replyFail) + c.id + "\t" + msg)
	case cmdCommitAsync:
		return []byte(string(replyAsyncCommit) + string(replyFail) + c.id + "\t" + msg)
	default:
		return []byte(string(replyFail) + msg)
	}
}

// tabEscape is Dovecot's str_append_tabescaped_n: \001 is the escape
// character, and NUL, \001, tab, CR and LF become \001 followed by 0, 1,
// t, r, n.
func tabEscape(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		var e byte
		switch s[i] {
		case 0:
			e = '0'
		case escapeChar:
			e = '1'
		case '\t':
			e = 't'
		case '\r':
			e = 'r'
		case '\n':
			e = 'n'
		default:
			if b != nil {
				b = append(b, s[i])
			}
			continue
		}
		if b == nil {
			b = append(make([]byte, 0, len(s)+8), s[:i]...)
		}
		b = append(b, escapeChar, e)
	}
	if b == nil {
		return s
	}
	return string(b)
}

// tabUnescape is Dovecot's str_tabunescape: \001 and the next byte become
// the byte it stands for (any other byte stands for itself); a \001 at the
// very end is dropped.
func tabUnescape(b []byte) string {
	i := bytes.IndexByte(b, escapeChar)
	if i < 0 {
		return string(b)
	}
	out := make([]byte, 0, len(b))
	for ; i >= 0; i = bytes.IndexByte(b, escapeChar) {
		out = append(out, b[:i]...)
		if i+1 == len(b) {
			return string(out)
		}
		switch e := b[i+1]; e {
		case '0':
			out = append(out, 0)
		case '1':
			out = append(out, escapeChar)
		case 't':
			out = append(out, '\t')
		case 'r':
			out = append(out, '\r')
		case 'n':
			out = append(out, '\n')
		default:
			out = append(out, e)
		}
		b = b[i+2:]
	}
	return string(append(out, b...))
}

// clip shortens bad input for error messages and logs.
func clip(b []byte) string {
	const max = 64
	if len(b) > max {
		return string(b[:max]) + "..."
	}
	return string(b)
}
