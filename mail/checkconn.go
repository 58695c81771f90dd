package mail

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Bounds of a protocol check. The check reads everything the server says
// itself, through one checkConn, so these hold whatever the server sends.
const (
	// maxCheckBytes bounds all a server may send during one check: the
	// greeting, CAPABILITY or EHLO, LOGIN/AUTH, SELECT INBOX and LOGOUT/QUIT
	// of Dovecot or Postfix are about 2 KB.
	maxCheckBytes = 64 << 10
	// maxResponsesPerCommand bounds the responses or reply lines read for
	// one command (SELECT INBOX sends about ten untagged ones, Postfix's EHLO
	// reply has about ten lines).
	maxResponsesPerCommand = 100
)

// longAgo is a deadline in the past: it fails pending and future I/O at once.
var longAgo = time.Unix(1, 0)

// errCheckBudget ends a check whose server sent more than maxCheckBytes.
var errCheckBudget = fmt.Errorf("the server sent more than %d bytes", maxCheckBytes)

// checkConn is the connection of one protocol check. It sets one absolute
// deadline on the conn, that of ctx, never moves it later and fails all I/O
// once ctx is done, so that no step can outlive the check. Every read goes
// through a bounded line reader: no line longer than maxLine, no more than
// maxCheckBytes in all. The check's parsers only ever loop over bytes they
// have consumed, so the deadline and the byte budget bound its CPU time too.
type checkConn struct {
	conn      net.Conn
	lines     *bufio.Reader
	budget    budgetReader
	maxLine   int
	stopAfter func() bool
}

// newCheckConn takes conn over for a check bounded by ctx, which must have
// a deadline. maxLine is the protocol's longest line, without CRLF.
func newCheckConn(ctx context.Context, conn net.Conn, maxLine int) (*checkConn, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return nil, errors.New("a check needs a deadline") // a bug of ours: checkContext adds one
	}
	c := &checkConn{conn: conn, maxLine: maxLine}
	c.budget = budgetReader{r: conn, left: maxCheckBytes}
	// Room for the line, its CRLF and one byte more: ReadSlice reports a
	// longer line as bufio.ErrBufferFull instead of growing the buffer.
	c.lines = bufio.NewReaderSize(&c.budget, maxLine+3)
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	c.stopAfter = context.AfterFunc(ctx, func() { conn.SetDeadline(longAgo) })
	return c, nil
}

// checkContext gives ctx a deadline of DefaultProbeTimeout when it has none:
// a check always ends.
func checkContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultProbeTimeout)
}

// close stops watching ctx and closes the connection.
func (c *checkConn) close() error {
	if c.stopAfter != nil {
		c.stopAfter()
	}
	return c.conn.Close()
}

// write sends one command (or a literal's octets) in one write.
func (c *checkConn) write(p []byte) error {
	_, err := c.conn.Write(p)
	return err
}

// readLine reads one line and returns it without its CRLF. A bare LF ends a
// line too, as most clients accept. The line is at most maxLine bytes and
// holds no NUL, CR or LF (RFC 9051 §9 TEXT-CHAR, RFC 5321 §4.2 textstring).
func (c *checkConn) readLine() (string, error) {
	line, err := c.lines.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return "", fmt.Errorf("a line longer than %d bytes", c.maxLine)
	case err == io.EOF && len(line) > 0:
		return "", fmt.Errorf("connection closed inside a line: %w", io.ErrUnexpectedEOF)
	case err == io.EOF:
		return "", fmt.Errorf("connection closed: %w", io.EOF)
	case err != nil:
		return "", err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > c.maxLine {
		return "", fmt.Errorf("a line longer than %d bytes", c.maxLine)
	}
	for _, b := range line {
		if b == 0 || b == '\r' {
			return "", fmt.Errorf("a line with a %q byte: %s", b, quoteLine(string(line)))
		}
	}
	return string(line), nil
}

// readFull reads exactly n bytes (an IMAP literal), n at most maxLine.
func (c *checkConn) readFull(n int) ([]byte, error) {
	if n > c.maxLine {
		return nil, fmt.Errorf("a literal of %d bytes, more than %d", n, c.maxLine)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.lines, p); err != nil {
		return nil, fmt.Errorf("read a literal of %d bytes: %w", n, err)
	}
	return p, nil
}

// budgetReader fails with errCheckBudget once left bytes have been read.
type budgetReader struct {
	r    io.Reader
	left int
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errCheckBudget
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= n
	return n, err
}

// maxQuotedLine bounds what an error message quotes of a server's line.
const maxQuotedLine = 120

// quoteLine quotes a server's line for an error message, shortened.
func quoteLine(s string) string {
	if len(s) > maxQuotedLine {
		return fmt.Sprintf("%q...", s[:maxQuotedLine])
	}
	return fmt.Sprintf("%q", s)
}
