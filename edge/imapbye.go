package edge

import (
	"bytes"
	"io"
	"sync/atomic"
	"time"

	"chatmail-edge/mail"
)

// byeWatcher is the backend side of an IMAP session as the down pump reads
// it. It notes whether the server announced the end of the connection with
// an untagged BYE (RFC 9051 §7.1.5), so that the edge can send one itself
// when the server goes away without it: Dovecot's own BYE is lost when its
// login process, which holds the TLS of a tls-mode session, is stopped
// together with the imap process (systemd's stop), and a client should not
// have to take a bare close for a network failure.
//
// Both flags are atomic because successive reads run on different
// goroutines (a parked pump resumes on a new one).
type byeWatcher struct {
	io.Reader
	sawBye      atomic.Bool
	atLineStart atomic.Bool // the last byte read ended a line
}

var (
	untaggedBye       = []byte("* BYE ")
	untaggedByeInLine = []byte("\n* BYE ")
)

func newByeWatcher(r io.Reader) *byeWatcher {
	w := &byeWatcher{Reader: r}
	w.atLineStart.Store(true)
	return w
}

// Read passes the read on. It looks for a line that starts with "* BYE "
// without parsing IMAP, so a message text holding such a line counts too
// (the client then gets no BYE of the edge's, as before), and a BYE split
// across two reads goes unnoticed (the client gets a second one). Once a BYE
// was seen nothing is scanned any more.
func (w *byeWatcher) Read(p []byte) (int, error) {
	n, err := w.Reader.Read(p)
	if n > 0 && !w.sawBye.Load() {
		b := p[:n]
		if w.atLineStart.Load() && bytes.HasPrefix(b, untaggedBye) || bytes.Contains(b, untaggedByeInLine) {
			w.sawBye.Store(true)
		}
		w.atLineStart.Store(b[n-1] == '\n')
	}
	return n, err
}

// backendGone runs when the backend ended the stream or failed: an IMAP
// client still connected gets a BYE with the UNAVAILABLE code (RFC 5530
// §3), unless the server sent its own, the client left first, or the edge
// closed the session itself (shutdown, timeouts). Only the down pump, the
// client's one writer, calls it.
func (s *session) backendGone() {
	if s.bye == nil || s.bye.sawBye.Load() || s.up.ended.Load() {
		return
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	s.client.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = s.client.Write(mail.IMAP.Refusal(s.e.cfg.Hostname, "connection to the mail server lost"))
}
