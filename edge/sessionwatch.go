package edge

import (
	"bytes"
	"sync"
)

// A session watch follows the plaintext of a proxied IMAP or SMTP session
// from both sides, as far as the edge needs to end it without cutting
// anything: when it drains (a restart, an upgrade) it says goodbye only at
// a point where no command, response or mail transaction is half done. It
// parses nothing else, buffers at most a few bytes of a line, and skips
// literals and message bodies by their length or with a fast search, so
// that proxying costs about the same with it.
//
// The pumps call up and down with what they read, before they write it on;
// quiet is asked by the drain while neither pump runs.
type sessionWatch interface {
	up(p []byte)   // client to server
	down(p []byte) // server to client
	// quiet reports whether a farewell now cuts nothing: both directions
	// between commands and responses, and no mail transaction open.
	quiet() bool
	// farewell is what the client gets before the edge closes a quiet
	// session: IMAP's BYE (RFC 9051 §7.1.5), SMTP's 421 (RFC 5321 §3.8).
	farewell(host string) []byte
	// serverSaidBye reports whether the server announced the end of the
	// connection (an IMAP untagged BYE).
	serverSaidBye() bool
	// opaque reports that the stream can no longer be followed (IMAP after
	// COMPRESS): the edge must then never write words of its own into it.
	opaque() bool
}

func newSessionWatch(route Route) sessionWatch {
	if route == RouteSMTP {
		return newSMTPWatch()
	}
	return newIMAPWatch()
}

// lineHeadLen is how much of a line's start a watch keeps: enough for an
// IMAP "* BYE " or a tag and command name, an SMTP verb or reply code.
const lineHeadLen = 32

// lineTailLen is how much of a line's end an IMAP watch keeps to find a
// literal's announcement, "{4294967295+}\r" at the most.
const lineTailLen = 16

// imapWatch follows IMAP (RFC 9051): in each direction, whether it is at the
// start of a line, and inside a literal ({n} or {n+} at a line's end, §4.3:
// n bytes follow that are not lines; both sides use the same grammar); and
// the commands in flight, a command line from the client each, ended by the
// server's tagged response (§2.2.2). A client line that answers the server's
// continuation request ("+", §7.5: an AUTHENTICATE exchange, IDLE's DONE)
// is no command. A session is quiet with no command in flight, or with
// only IDLE in flight once the server has said it idles (RFC 2177: the
// client then just waits for news).
type imapWatch struct {
	mu       sync.Mutex
	toServer imapStream
	toClient imapStream
	bye      bool
	// compressed: the client asked for COMPRESS (RFC 4978), after which
	// the streams are no longer lines; such a session is never quiet.
	compressed bool

	commands     int  // sent, their tagged response not seen
	lastIsIdle   bool // the newest command is IDLE
	idling       bool // the server accepted that IDLE with a continuation
	answerNext   bool // the server asked for a continuation: the client's next line answers it
	commandsLost bool // more commands in flight than any client pipelines: never quiet
}

// maxIMAPCommands bounds the commands in flight a watch counts.
const maxIMAPCommands = 1 << 16

type imapStream struct {
	literal  uint64 // bytes of a literal still to come
	midLine  bool   // bytes of a line have passed, not yet its end
	head     [lineHeadLen]byte
	headLen  int
	tail     [lineTailLen]byte
	tailLen  int
	overflow bool // the literal announced is too large to be one: stop judging
}

func newIMAPWatch() *imapWatch { return &imapWatch{} }

func (w *imapWatch) up(p []byte) {
	w.mu.Lock()
	if !w.compressed {
		w.toServer.feed(p, w.clientLine)
	}
	w.mu.Unlock()
}

func (w *imapWatch) down(p []byte) {
	w.mu.Lock()
	if !w.compressed {
		w.toClient.feed(p, w.serverLine)
	}
	w.mu.Unlock()
}

// clientLine takes a whole line from the client: tag SP command (RFC 9051
// §2.2.1), or the answer to a continuation request.
func (w *imapWatch) clientLine(head []byte) {
	if w.answerNext {
		w.answerNext = false
		if w.idling { // DONE: the IDLE's tagged response follows
			w.idling, w.lastIsIdle = false, false
		}
		return
	}
	w.commands++
	if w.commands > maxIMAPCommands {
		w.commandsLost = true
	}
	command := secondWord(head)
	w.lastIsIdle = bytes.EqualFold(command, []byte("IDLE"))
	if bytes.EqualFold(command, []byte("COMPRESS")) {
		w.compressed = true
	}
}

// secondWord is the word after the first space of line, up to the next
// space or the line's end: an IMAP command's name after its tag.
func secondWord(line []byte) []byte {
	_, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return nil
	}
	if i := bytes.IndexAny(rest, " \r\n"); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// serverLine takes a whole line from the server: untagged ("*"), a
// continuation request ("+"), or a tagged response that ends a command.
func (w *imapWatch) serverLine(head []byte) {
	switch {
	case bytes.HasPrefix(head, []byte("* ")):
		if bytes.HasPrefix(head, []byte("* BYE ")) {
			w.bye = true
		}
	case len(head) > 0 && head[0] == '+':
		// A continuation request, unless it lets a client literal come
		// (the client's stream then waits inside that literal).
		if w.toServer.literal == 0 {
			w.answerNext = true
			if w.lastIsIdle {
				w.idling = true
			}
		}
	default:
		if w.commands > 0 {
			w.commands--
		}
		w.answerNext, w.idling, w.lastIsIdle = false, false, false
	}
}

func (w *imapWatch) quiet() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.compressed || w.commandsLost || !w.toServer.atRest() || !w.toClient.atRest() {
		return false
	}
	return w.commands == 0 || w.commands == 1 && w.idling
}

func (w *imapWatch) serverSaidBye() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bye
}

func (w *imapWatch) opaque() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.compressed
}

func (w *imapWatch) farewell(host string) []byte {
	return []byte("* BYE " + host + " shutting down, please reconnect\r\n")
}

func (s *imapStream) atRest() bool { return !s.overflow && s.literal == 0 && !s.midLine }

// feed follows p; onLine gets the first bytes (up to lineHeadLen) of every
// line that ends in p. A line's start and end are copied only when it
// spans reads: most lines are looked at where they are.
func (s *imapStream) feed(p []byte, onLine func(head []byte)) {
	for len(p) > 0 && !s.overflow {
		if s.literal > 0 {
			n := uint64(len(p))
			if n > s.literal {
				n = s.literal
			}
			s.literal -= n
			p = p[n:]
			continue // after a literal the line goes on
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.keepHead(p)
			s.keepTail(p)
			s.midLine = true
			return
		}
		line := p[:i+1]
		p = p[i+1:]
		// A line ends here, unless it announced a literal: then the literal's
		// bytes follow and the line continues after them.
		tail := line
		var joined [2 * lineTailLen]byte
		if s.midLine && len(line) < lineTailLen {
			n := copy(joined[:], s.tail[:s.tailLen])
			tail = joined[:n+copy(joined[n:], line)]
		}
		if n, ok := literalAnnounced(tail); ok {
			if n > 1<<40 {
				s.overflow = true // not a literal anyone sends: judge nothing any more
				return
			}
			s.keepHead(line)
			s.literal, s.tailLen, s.midLine = n, 0, true
			continue
		}
		head := line[:min(len(line), lineHeadLen)]
		if s.midLine {
			s.keepHead(line)
			head = s.head[:s.headLen]
		}
		onLine(head)
		s.midLine, s.headLen, s.tailLen = false, 0, 0
	}
}

func (s *imapStream) keepHead(b []byte) {
	if s.headLen < lineHeadLen {
		s.headLen += copy(s.head[s.headLen:], b)
	}
}

func (s *imapStream) keepTail(b []byte) {
	if len(b) >= lineTailLen {
		s.tailLen = copy(s.tail[:], b[len(b)-lineTailLen:])
		return
	}
	if keep := lineTailLen - len(b); s.tailLen > keep {
		copy(s.tail[:], s.tail[s.tailLen-keep:s.tailLen])
		s.tailLen = keep
	}
	s.tailLen += copy(s.tail[s.tailLen:], b)
}

// literalAnnounced reads a literal's length from the end of a line:
// "{" number ["+" / "-"] "}" CRLF (RFC 9051 §4.3, RFC 7888 LITERAL+ and
// LITERAL-). A bare LF ends the line too, as Dovecot accepts it.
func literalAnnounced(tail []byte) (uint64, bool) {
	n := len(tail)
	if n > 0 && tail[n-1] == '\n' {
		n--
	}
	if n > 0 && tail[n-1] == '\r' {
		n--
	}
	if n < 3 || tail[n-1] != '}' {
		return 0, false
	}
	tail = tail[:n-1]
	if c := tail[len(tail)-1]; c == '+' || c == '-' {
		tail = tail[:len(tail)-1]
	}
	open := bytes.LastIndexByte(tail, '{')
	digits := tail[open+1:]
	if open < 0 || len(digits) == 0 || len(digits) > 13 {
		return 0, false
	}
	var size uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		size = size*10 + uint64(c-'0')
	}
	return size, true
}

// smtpWatch follows SMTP (RFC 5321) with pipelining (RFC 2920) and CHUNKING
// (RFC 3030): the commands the client sent and the replies they still
// await, in order; whether a mail transaction is open (from a MAIL the
// server took to the reply to its end of data, or to RSET); and where the
// message data is, which is not commands.
type smtpWatch struct {
	mu     sync.Mutex
	client smtpClientSide
	server smtpServerSide
	// awaiting are the replies the client waits for, oldest first: the
	// greeting, then one per command line and one per end of data.
	awaiting []smtpExpect
	txn      bool // a mail transaction is open
	// dataGo: the server answered DATA with 354, so what the client sends
	// next is the message.
	dataGo bool
	// continuation: the server asked for more with a 3xx reply (AUTH's
	// 334): the client's next line is an answer, and gets a reply.
	continuation bool
}

type smtpExpect uint8

const (
	expectGreeting smtpExpect = iota
	expectOther
	expectMail
	expectData     // the reply to DATA: 354, or a refusal
	expectDataEnd  // the reply to the end of the data: the message's fate
	expectBDAT     // the reply to a BDAT chunk
	expectBDATLast // the reply to the last BDAT chunk: the message's fate
	expectRSET
)

// maxAwaiting bounds the replies a watch waits for: a client that pipelines
// more commands than that without reading is judged never quiet.
const maxAwaiting = 1024

type smtpClientSide struct {
	mode     smtpClientMode
	head     [lineHeadLen]byte
	headLen  int
	midLine  bool
	chunk    uint64 // BDAT bytes still to come
	last     bool   // the chunk is the last one (BDAT ... LAST)
	bodyTail [4]byte
	tailLen  int
	broken   bool // something not SMTP, or too much in flight: never quiet
}

type smtpClientMode uint8

const (
	clientCommands      smtpClientMode = iota
	clientData                         // the message after DATA's 354, up to CRLF.CRLF
	clientChunk                        // a BDAT chunk's bytes
	clientDataAfterDATA                // DATA sent, its reply not seen: next bytes are the data if it is 354
)

type smtpServerSide struct {
	head    [lineHeadLen]byte
	headLen int
	midLine bool
}

func newSMTPWatch() *smtpWatch {
	return &smtpWatch{awaiting: []smtpExpect{expectGreeting}}
}

func (w *smtpWatch) farewell(host string) []byte {
	return []byte("421 4.3.2 " + host + " Service shutting down, try again later\r\n")
}

func (w *smtpWatch) serverSaidBye() bool { return false }

func (w *smtpWatch) opaque() bool { return false }

func (w *smtpWatch) quiet() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := &w.client
	return !c.broken && !w.txn && !w.continuation && len(w.awaiting) == 0 && c.mode == clientCommands && !c.midLine && !w.server.midLine
}

func (w *smtpWatch) expect(e smtpExpect) {
	if len(w.awaiting) >= maxAwaiting {
		w.client.broken = true
		return
	}
	w.awaiting = append(w.awaiting, e)
}

// up follows the client's commands and data.
func (w *smtpWatch) up(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := &w.client
	for len(p) > 0 && !c.broken {
		switch c.mode {
		case clientDataAfterDATA:
			if !w.dataGo {
				c.mode = clientCommands // DATA was refused (or not answered): these are commands
				continue
			}
			c.mode, c.tailLen = clientData, 0
			c.bodyTail = [4]byte{'\r', '\n'} // the data starts at a line's start
			c.tailLen = 2
		case clientData:
			p = w.dataUntilEnd(p)
		case clientChunk:
			n := min(uint64(len(p)), c.chunk)
			c.chunk -= n
			p = p[n:]
			if c.chunk == 0 {
				c.mode = clientCommands
			}
		default:
			p = w.commandBytes(p)
		}
	}
}

// dataUntilEnd consumes the message data up to and including the
// CRLF.CRLF that ends it (RFC 5321 §4.1.1.4) and returns what follows.
func (w *smtpWatch) dataUntilEnd(p []byte) []byte {
	c := &w.client
	// The end marker may straddle reads: look at the last bytes kept and
	// the start of p together first.
	if c.tailLen > 0 {
		var joined [8]byte
		n := copy(joined[:], c.bodyTail[:c.tailLen])
		m := copy(joined[n:], p)
		if i := bytes.Index(joined[:n+m], []byte("\r\n.\r\n")); i >= 0 {
			w.dataEnded(expectDataEnd)
			return p[i+5-n:]
		}
	}
	if i := bytes.Index(p, []byte("\r\n.\r\n")); i >= 0 {
		w.dataEnded(expectDataEnd)
		return p[i+5:]
	}
	keep := min(len(p), len(c.bodyTail))
	if c.tailLen+keep > len(c.bodyTail) {
		shift := c.tailLen + keep - len(c.bodyTail)
		copy(c.bodyTail[:], c.bodyTail[shift:c.tailLen])
		c.tailLen -= shift
	}
	c.tailLen += copy(c.bodyTail[c.tailLen:], p[len(p)-keep:])
	return nil
}

func (w *smtpWatch) dataEnded(e smtpExpect) {
	w.client.mode, w.client.tailLen, w.dataGo = clientCommands, 0, false
	w.expect(e)
}

// commandBytes follows command lines: each complete line awaits one reply.
func (w *smtpWatch) commandBytes(p []byte) []byte {
	c := &w.client
	i := bytes.IndexByte(p, '\n')
	line := p
	if i >= 0 {
		line = p[:i+1]
	}
	if !c.midLine {
		c.midLine, c.headLen = true, 0
	}
	c.headLen += copy(c.head[c.headLen:], line)
	if i < 0 {
		return nil
	}
	c.midLine = false
	w.command(c.head[:c.headLen])
	return p[i+1:]
}

// command notes one command line, of which head is the start (a whole BDAT
// line fits in it).
func (w *smtpWatch) command(head []byte) {
	if w.continuation {
		// The answer to a 334 of AUTH (RFC 4954 §4): one more reply comes.
		w.continuation = false
		w.expect(expectOther)
		return
	}
	verb := head[:min(len(head), 4)]
	is := func(v string) bool { return bytes.EqualFold(verb, []byte(v)) }
	switch {
	case is("MAIL"):
		w.expect(expectMail)
	case is("DATA"):
		w.expect(expectData)
		w.client.mode = clientDataAfterDATA
	case is("BDAT"):
		size, last, ok := parseBDAT(head)
		if !ok {
			w.client.broken = true // malformed: judge no more
			return
		}
		if last {
			w.expect(expectBDATLast)
		} else {
			w.expect(expectBDAT)
		}
		w.txn = true
		if size > 0 {
			w.client.mode, w.client.chunk = clientChunk, size
		}
	case is("RSET"):
		w.expect(expectRSET)
	default:
		w.expect(expectOther)
	}
}

// parseBDAT reads "BDAT" SP chunk-size [SP "LAST"] (RFC 3030 §2).
func parseBDAT(line []byte) (uint64, bool, bool) {
	fields := bytes.Fields(line)
	if len(fields) < 2 || len(fields) > 3 || len(fields[1]) > 15 {
		return 0, false, false
	}
	var n uint64
	for _, c := range fields[1] {
		if c < '0' || c > '9' {
			return 0, false, false
		}
		n = n*10 + uint64(c-'0')
	}
	last := len(fields) == 3 && bytes.EqualFold(fields[2], []byte("LAST"))
	if len(fields) == 3 && !last {
		return 0, false, false
	}
	return n, last, true
}

// down follows the server's replies: a reply ends with a line whose code is
// followed by a space, or by nothing ("250-" continues it, RFC 5321
// §4.2.1); each ends what the oldest awaited reply was for.
func (w *smtpWatch) down(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := &w.server
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		line := p
		if i >= 0 {
			line = p[:i+1]
		}
		if !s.midLine {
			s.midLine, s.headLen = true, 0
		}
		s.headLen += copy(s.head[s.headLen:], line)
		p = p[len(line):]
		if i < 0 {
			return
		}
		s.midLine = false
		h := bytes.TrimRight(s.head[:s.headLen], "\r\n")
		if len(h) < 3 || len(h) > 3 && h[3] != ' ' {
			continue // a continuation line, or not a reply line
		}
		w.reply(h[:3])
	}
}

func (w *smtpWatch) reply(code []byte) {
	if len(w.awaiting) == 0 {
		return // unsolicited (a 421 before closing): nothing awaited it
	}
	e := w.awaiting[0]
	w.awaiting = w.awaiting[1:]
	positive := code[0] == '2'
	switch e {
	case expectMail:
		w.txn = positive
	case expectData:
		if string(code) == "354" { // start mail input (RFC 5321 §4.2.2)
			w.dataGo = true
		} else {
			w.txn = false
			if w.client.mode == clientDataAfterDATA {
				w.client.mode = clientCommands
			}
		}
	case expectDataEnd, expectBDATLast, expectRSET:
		w.txn = false
	case expectBDAT:
		if !positive {
			w.txn = false
		}
	case expectOther:
		w.continuation = code[0] == '3'
	}
}
