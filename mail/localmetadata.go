package mail

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ServerMetadata looks up a server entry (RFC 5464 §3.2, mailbox ""), by
// its name in lowercase. It must be safe for concurrent use.
type ServerMetadata func(entry string) (value string, ok bool)

// SetServerMetadata makes the local IMAP server answer `GETMETADATA ""`
// from m, as Dovecot answers it on a relay from its mail_attribute_dict.
// Call it before Start.
//
// go-imap v2.0.0-beta.8's server has no METADATA (RFC 5464) and no way to
// add a command, so the connection is read through metadataConn, which
// answers GETMETADATA "" itself and hands every other byte to the server
// unchanged. The server has no way to add a capability either: it does not
// advertise METADATA-SERVER, and clients that check first do not ask.
func (d *LocalDelivery) SetServerMetadata(m ServerMetadata) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.metadata = m
}

// metadataListener wraps each IMAP connection in a metadataConn. A pointer:
// go-imap keys its listeners in a map.
type metadataListener struct {
	net.Listener
	lookup ServerMetadata
}

func (l *metadataListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newMetadataConn(c, l.lookup), nil
}

const (
	// metadataLineBuffer is the longest command line metadataConn looks
	// at; a longer one goes to the server unread.
	metadataLineBuffer = 8 << 10
	// metadataWriteTimeout bounds writing one answer, as the server's
	// own responses are bounded.
	metadataWriteTimeout = time.Minute
)

// metadataConn sits between an IMAP client and go-imap's server. It
// follows the client's byte stream command by command (RFC 9051 §2.2.1:
// a command is a line, plus literals announced at a line's end, each
// followed by more of the line), and takes out the GETMETADATA "" commands
// it answers. The server reads one command at a time and writes all its
// responses before it asks for more input, so an answer written when the
// server next reads comes after the responses to every command before it.
type metadataConn struct {
	net.Conn
	lookup   ServerMetadata
	loggedIn atomic.Bool // set by imapSession.Login

	r       *bufio.Reader
	out     []byte // read from the client, not yet handed to the server
	literal int64  // bytes of a literal still to pass on
	midLine bool   // the next bytes continue a line (after a literal or a long line)
	tail    []byte // the last bytes of a long line, for its literal
	writeMu sync.Mutex
}

func newMetadataConn(c net.Conn, lookup ServerMetadata) *metadataConn {
	return &metadataConn{Conn: c, lookup: lookup, r: bufio.NewReaderSize(c, metadataLineBuffer)}
}

func (c *metadataConn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

func (c *metadataConn) Write(p []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.Conn.Write(p)
}

// next reads the next piece of the client's input into out: literal bytes,
// part of a long line, or a line, unless it is a command answered here.
func (c *metadataConn) next() error {
	if c.literal > 0 {
		buf := make([]byte, min(c.literal, metadataLineBuffer))
		n, err := c.r.Read(buf)
		c.literal -= int64(n)
		c.out = buf[:n]
		if n > 0 {
			return nil
		}
		return err
	}
	chunk, err := c.r.ReadSlice('\n')
	if err != nil {
		if len(chunk) == 0 {
			return err
		}
		// A line longer than the buffer, or one cut by an error (which
		// comes again with the next read): pass on what there is, and
		// remember its end for a literal announced there.
		c.out = bytes.Clone(chunk)
		c.tail = lastBytes(append(c.tail, lastBytes(chunk, 32)...), 32)
		c.midLine = true
		return nil
	}
	atCommand := !c.midLine
	end := chunk
	if c.midLine {
		end = append(c.tail, chunk...)
	}
	c.tail, c.midLine = nil, false
	if n, ok := clientLiteral(end); ok {
		c.literal, c.midLine = n, true
	} else if atCommand && c.loggedIn.Load() {
		if tag, cmd, ok := parseServerGetMetadata(chunk); ok {
			return c.answer(tag, cmd)
		}
	}
	c.out = bytes.Clone(chunk)
	return nil
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// clientLiteral reads the literal a command line announces at its end:
// "{n}" (RFC 9051 §4.3) or, non-synchronizing, "{n+}" (RFC 7888), also
// after "~" (RFC 3516).
func clientLiteral(line []byte) (int64, bool) {
	l := strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")
	if nonSync, ok := strings.CutSuffix(l, "+}"); ok {
		l = nonSync + "}"
	}
	n, ok := literalAtEnd(l)
	return int64(n), ok
}

// getMetadata is a parsed GETMETADATA "" (RFC 5464 §4.2).
type getMetadata struct {
	entries []string // lowercase
	maxSize int64    // -1: no MAXSIZE
	depth   string   // "0", "1" or "infinity"
}

// answer writes the METADATA response and the tagged OK, or BAD for
// arguments Dovecot would refuse too.
func (c *metadataConn) answer(tag string, cmd getMetadata) error {
	var b strings.Builder
	longest := int64(0)
	first := true
	for _, entry := range cmd.entries {
		value, ok := c.lookup(entry)
		if ok && cmd.maxSize >= 0 && int64(len(value)) > cmd.maxSize {
			longest = max(longest, int64(len(value))) // RFC 5464 §4.2.1: skipped, counted
			continue
		}
		if !ok && cmd.depth != "0" {
			continue // as Dovecot: NIL only for an entry asked for by name
		}
		if first {
			b.WriteString(`* METADATA "" (`)
			first = false
		} else {
			b.WriteByte(' ')
		}
		b.WriteString(imapAString(entry))
		if ok {
			fmt.Fprintf(&b, " {%d}\r\n%s", len(value), value)
		} else {
			b.WriteString(" NIL")
		}
	}
	if !first {
		b.WriteString(")\r\n")
	}
	if longest > 0 {
		fmt.Fprintf(&b, "%s OK [METADATA LONGENTRIES %d] Getmetadata completed.\r\n", tag, longest)
	} else {
		fmt.Fprintf(&b, "%s OK Getmetadata completed.\r\n", tag) // Dovecot's words
	}
	return c.writeAnswer(b.String())
}

func (c *metadataConn) writeAnswer(s string) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.Conn.SetWriteDeadline(time.Now().Add(metadataWriteTimeout))
	_, err := c.Conn.Write([]byte(s))
	c.Conn.SetWriteDeadline(time.Time{})
	return err
}

// parseServerGetMetadata recognises a complete `tag GETMETADATA [options]
// "" entries` line, its arguments checked as Dovecot checks them
// (cmd-getmetadata.c; imap-metadata.c, imap_metadata_verify_entry_name).
// Anything else, GETMETADATA on a mailbox and bad arguments included, is
// left to the server, which answers BAD: it has no METADATA.
func parseServerGetMetadata(line []byte) (tag string, cmd getMetadata, ok bool) {
	t := &imapTokens{s: strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")}
	tag, ok1 := t.atom()
	name, ok2 := t.atom()
	if !ok1 || !ok2 || !strings.EqualFold(name, "GETMETADATA") || tag == "" || strings.ContainsAny(tag, "+") {
		return "", getMetadata{}, false
	}
	cmd = getMetadata{maxSize: -1, depth: "0"}
	if t.peek() == '(' {
		opts, ok := t.list()
		if !ok || !cmd.setOptions(opts) {
			return "", getMetadata{}, false
		}
	}
	mailbox, ok := t.astring()
	if !ok || mailbox != "" {
		return "", getMetadata{}, false
	}
	if t.peek() == '(' {
		cmd.entries, ok = t.list()
	} else {
		var e string
		e, ok = t.astring()
		cmd.entries = []string{e}
	}
	if !ok || len(cmd.entries) == 0 || !t.end() {
		return "", getMetadata{}, false
	}
	for i, e := range cmd.entries {
		if !validEntryName(e) {
			return "", getMetadata{}, false
		}
		cmd.entries[i] = strings.ToLower(e)
	}
	return tag, cmd, true
}

func (cmd *getMetadata) setOptions(opts []string) bool {
	for i := 0; i < len(opts); i += 2 {
		if i+1 == len(opts) {
			return false
		}
		switch v := opts[i+1]; strings.ToUpper(opts[i]) {
		case "MAXSIZE":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return false
			}
			cmd.maxSize = int64(n)
		case "DEPTH":
			if v != "0" && v != "1" && v != "infinity" {
				return false
			}
			cmd.depth = v
		default:
			return false
		}
	}
	return true
}

// validEntryName is Dovecot's imap_metadata_verify_entry_name.
func validEntryName(e string) bool {
	if !strings.HasPrefix(e, "/") || strings.Contains(e, "//") || strings.HasSuffix(e, "/") || strings.ContainsAny(e, "*%") {
		return false
	}
	for i := 0; i < len(e); i++ {
		if e[i] <= 0x19 {
			return false
		}
	}
	prefix, _, _ := strings.Cut(e[1:], "/")
	return strings.EqualFold(prefix, "private") || strings.EqualFold(prefix, "shared")
}

// imapTokens reads the arguments of one command line: atoms, quoted
// strings and flat lists of them (RFC 9051 §4; no literals: a line that
// announces one is never parsed here).
type imapTokens struct{ s string }

func (t *imapTokens) peek() byte {
	t.s = strings.TrimPrefix(t.s, " ")
	if t.s == "" {
		return 0
	}
	return t.s[0]
}

func (t *imapTokens) end() bool { return t.peek() == 0 }

// atom reads ASTRING-CHARs (RFC 9051 §9: ATOM-CHAR and "]").
func (t *imapTokens) atom() (string, bool) {
	t.peek()
	i := 0
	for i < len(t.s) && isAStringChar(t.s[i]) {
		i++
	}
	a := t.s[:i]
	t.s = t.s[i:]
	return a, a != ""
}

func isAStringChar(c byte) bool {
	return c > 0x20 && c < 0x7f && !strings.ContainsRune(`(){%*"\`, rune(c))
}

// astring reads an atom or a quoted string (RFC 9051 §4.3).
func (t *imapTokens) astring() (string, bool) {
	if t.peek() != '"' {
		return t.atom()
	}
	var b strings.Builder
	for i := 1; i < len(t.s); i++ {
		switch c := t.s[i]; c {
		case '"':
			t.s = t.s[i+1:]
			return b.String(), true
		case '\\':
			if i+1 == len(t.s) || t.s[i+1] != '"' && t.s[i+1] != '\\' {
				return "", false
			}
			i++
			b.WriteByte(t.s[i])
		case '\r', '\n', 0:
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return "", false
}

// list reads "(" astring *(SP astring) ")".
func (t *imapTokens) list() ([]string, bool) {
	t.s = t.s[1:]
	var items []string
	for {
		if t.peek() == ')' {
			t.s = t.s[1:]
			return items, len(items) > 0
		}
		item, ok := t.astring()
		if !ok {
			return nil, false
		}
		items = append(items, item)
	}
}

// imapAString writes s as an atom when it can be one, else as a quoted
// string or, for bytes a quoted string cannot carry, a literal.
func imapAString(s string) string {
	for i := 0; i < len(s); i++ {
		if !isAStringChar(s[i]) {
			if q, ok := imapQuoted(s); ok {
				return q
			}
			return fmt.Sprintf("{%d}\r\n%s", len(s), s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}
