package mail

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"time"
)

// maxTranscript bounds what a checkConn keeps of the server's first replies.
const maxTranscript = 16 << 10

// longAgo is a deadline in the past: it fails pending and future I/O at once.
var longAgo = time.Unix(1, 0)

// checkConn is the connection a protocol check hands to go-imap or go-smtp.
// Both libraries set their own deadlines (30 s to minutes); checkConn caps
// every one of them at ctx's deadline and fails all I/O once ctx is done, so
// a check never outlives its context. It also keeps the server's first
// replies, which the libraries read but do not expose: the greeting and,
// for SMTP, the EHLO reply.
type checkConn struct {
	net.Conn
	ctx       context.Context
	stopAfter func() bool

	mu         sync.Mutex // orders deadline changes against ctx's end
	transcript transcript
}

func newCheckConn(ctx context.Context, conn net.Conn, replies int, isLastLine func(string) bool) *checkConn {
	c := &checkConn{Conn: conn, ctx: ctx}
	c.transcript.want, c.transcript.isLastLine = replies, isLastLine
	c.SetDeadline(time.Time{})
	c.stopAfter = context.AfterFunc(ctx, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.Conn.SetDeadline(longAgo)
	})
	return c
}

// close stops watching ctx and closes the connection.
func (c *checkConn) close() error {
	c.stopAfter()
	return c.Conn.Close()
}

func (c *checkConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.transcript.record(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *checkConn) SetDeadline(t time.Time) error {
	return c.setDeadline(c.Conn.SetDeadline, t)
}

func (c *checkConn) SetReadDeadline(t time.Time) error {
	return c.setDeadline(c.Conn.SetReadDeadline, t)
}

func (c *checkConn) SetWriteDeadline(t time.Time) error {
	return c.setDeadline(c.Conn.SetWriteDeadline, t)
}

func (c *checkConn) setDeadline(set func(time.Time) error, t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx.Err() != nil {
		return set(longAgo)
	}
	if d, ok := c.ctx.Deadline(); ok && (t.IsZero() || d.Before(t)) {
		t = d
	}
	return set(t)
}

// replies returns the complete replies read so far, each as its lines
// without CRLF, and when the first one was complete.
func (c *checkConn) replies() ([][]string, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.transcript.replies, c.transcript.firstAt
}

// transcript splits the bytes a server sent into lines and groups them into
// replies, until it holds want replies or maxTranscript bytes.
type transcript struct {
	want       int
	isLastLine func(line string) bool // ends a reply
	partial    []byte
	lines      []string // of the reply being read
	replies    [][]string
	firstAt    time.Time
	size       int
}

func (t *transcript) record(p []byte) {
	for len(p) > 0 && len(t.replies) < t.want && t.size < maxTranscript {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.partial = append(t.partial, p...)
			t.size += len(p)
			return
		}
		t.partial = append(t.partial, p[:i]...)
		t.size += i + 1
		p = p[i+1:]
		line := strings.TrimSuffix(string(t.partial), "\r")
		t.partial = t.partial[:0]
		t.lines = append(t.lines, line)
		if t.isLastLine(line) {
			t.replies = append(t.replies, t.lines)
			t.lines = nil
			if t.firstAt.IsZero() {
				t.firstAt = time.Now()
			}
		}
	}
}

// Every IMAP response is one line; the greeting is the first (RFC 9051 §7.1).
func isIMAPLastLine(string) bool { return true }

// An SMTP reply ends with the line whose code is followed by a space or
// nothing; "250-" continues it (RFC 5321 §4.2.1).
func isSMTPLastLine(line string) bool {
	return len(line) == 3 || (len(line) > 3 && line[3] == ' ')
}
