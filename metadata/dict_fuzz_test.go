package metadata

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// FuzzParseCommand: any line from Dovecot parses or is refused without a
// panic; what is accepted agrees with a plain reading of the protocol, and
// the escaping round-trips.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		helloLine, echLookup, irohLookup, tokenLookup, "I12\t0\tshared/x/\tu", "B1\tu",
		"S1\tk\tv\001t", "U1\tk", "A1\tk\t-1", "T1\t1\t2", "R1", "C1", "D1", "", "X", "L", "H3\t",
		"Lk\001", "L\001\001\001t\tu",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		s := string(line)
		if got := tabUnescape([]byte(tabEscape(s))); got != s {
			t.Fatalf("escape round trip: %q -> %q", s, got)
		}
		if strings.ContainsAny(tabEscape(s), "\x00\t\r\n") {
			t.Fatalf("tabEscape(%q) leaves a separator", s)
		}
		cmd, err := parseCommand(line)
		if err != nil {
			return
		}
		fields := strings.Split(s[1:], "\t")
		switch cmd.op {
		case cmdLookup:
			if cmd.reply != oneLine || cmd.key != tabUnescape([]byte(fields[0])) {
				t.Fatalf("lookup %q parsed as %+v", s, cmd)
			}
		case cmdIterate:
			if cmd.reply != untilEndRow || len(fields) < 3 {
				t.Fatalf("iterate %q parsed as %+v", s, cmd)
			}
		case cmdCommit, cmdCommitAsync:
			if _, err := strconv.ParseUint(fields[0], 10, 32); err != nil || cmd.id != fields[0] || cmd.reply != oneLine {
				t.Fatalf("commit %q parsed as %+v", s, cmd)
			}
		case cmdHello, cmdBegin, cmdRollback, cmdSet, cmdUnset, cmdAtomicInc, cmdSetTimestamp:
			if cmd.reply != noReply {
				t.Fatalf("%q has no reply, parsed as %+v", s, cmd)
			}
		default:
			t.Fatalf("%q accepted with unknown command %q", s, cmd.op)
		}
	})
}

// FuzzParseUpstreamLine: the out-of-order framing is split off exactly.
func FuzzParseUpstreamLine(f *testing.F) {
	for _, s := range []string{"Ovalue", "", "*1", "+1\tO", "+1\t", "+\t", "*0", "*99999999999", "N", "F\terr"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ul, err := parseUpstreamLine(line)
		if err != nil {
			if len(line) == 0 || line[0] != '*' && line[0] != '+' {
				t.Fatalf("%q refused: %v", line, err)
			}
			return
		}
		switch {
		case ul.assigns != 0:
			if n, err := strconv.ParseUint(string(line[1:]), 10, 32); err != nil || n != ul.assigns {
				t.Fatalf("%q parsed as %+v", line, ul)
			}
		case ul.asyncID != 0:
			if !bytes.HasSuffix(line, append([]byte("\t"), ul.body...)) || line[0] != '+' {
				t.Fatalf("%q parsed as %+v", line, ul)
			}
		default:
			if !bytes.Equal(ul.body, line) {
				t.Fatalf("%q parsed as %+v", line, ul)
			}
		}
	})
}

// recordConn keeps what is written to it. Nothing else of net.Conn is
// used by a session's handling of lines.
type recordConn struct {
	net.Conn
	written bytes.Buffer
}

func (c *recordConn) Write(b []byte) (int, error)      { return c.written.Write(b) }
func (c *recordConn) SetWriteDeadline(time.Time) error { return nil }
func (c *recordConn) Close() error                     { return nil }

// FuzzSession drives one session's handling of lines, from Dovecot and
// from chatmail's service interleaved (a line starting with '>' is the
// service's), without sockets. Whatever comes, the bookkeeping stays
// right: the waiting count matches the waiting entries, the held-back
// bytes match the lines held, and every reply written belongs to a command
// that was sent, in order.
func FuzzSession(f *testing.F) {
	f.Add([]byte(irohLookup + "\n" + echLookup + "\n>Ovalue\n" + tokenLookup + "\n>N\n"))
	f.Add([]byte("I0\t0\tp\tu\nB1\tu\nC1\n>*1\n>*2\n>+2\tO\n>+1\tOk\tv\n>+1\t\n" + echLookup + "\n"))
	f.Add([]byte(">Ounasked\n" + irohLookup + "\n>+3\tO\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := New(Config{Upstream: "/nonexistent", ECHFile: "/nonexistent"}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		down, up := &recordConn{}, &recordConn{}
		s := newSession(p, down)
		s.hello = []byte(helloLine)
		s.up, s.stopUp = up, make(chan struct{})
		answerable := 0
		for line := range bytes.SplitSeq(data, []byte("\n")) {
			if rest, ok := bytes.CutPrefix(line, []byte(">")); ok {
				if s.up != nil {
					s.fromUpstream(append([]byte(nil), rest...))
				}
			} else {
				if err := s.fromDovecot(append([]byte(nil), line...)); err != nil {
					return // the session would end here
				}
				if cmd, _ := parseCommand(line); cmd.reply != noReply {
					answerable++
				}
			}
			waiting, held := 0, 0
			for _, e := range s.pending {
				if e.upstream && !e.done {
					waiting++
				}
				for _, l := range e.lines {
					held += len(l)
				}
			}
			if s.upErr == nil && waiting != s.upWaiting || s.upErr != nil && waiting != 0 || held != s.buffered {
				t.Fatalf("after %q: %d waiting, counted %d; %d bytes held, counted %d", line, waiting, s.upWaiting, held, s.buffered)
			}
			if err := s.flush(); err != nil {
				t.Fatal(err)
			}
			if s.buffered != 0 && (len(s.pending) == 0 || s.pending[0].done) {
				t.Fatalf("%d bytes held with nothing to wait for", s.buffered)
			}
		}
		// Every command answered has at least its one line written.
		answered := answerable - len(s.pending)
		if written := bytes.Count(down.written.Bytes(), []byte("\n")); answered < 0 || written < answered {
			t.Fatalf("%d commands answered with %d lines", answered, written)
		}
	})
}
