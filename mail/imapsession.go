package mail

import (
	"io"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
)

// imapSession is an imapmemserver session whose IDLE (RFC 2177) also wakes
// on local deliveries. go-imap v2.0.0-beta.8 sends "+ idling" before the
// mailbox tracker listens, so a message appended in between would only be
// announced with the next change; the client would not hear of it.
type imapSession struct {
	imapserver.SessionIMAP4rev2
	delivery *LocalDelivery
	user     string
	// metadata answers GETMETADATA "" once the user has logged in
	// (RFC 5464 §4.2: authenticated state); nil when not set up.
	metadata *metadataConn
}

func (s *imapSession) Login(username, password string) error {
	if err := s.SessionIMAP4rev2.Login(username, password); err != nil {
		return err
	}
	s.user = username
	if s.metadata != nil {
		s.metadata.loggedIn.Store(true)
	}
	return nil
}

// Append stores a message only if its literal came whole. go-imap
// v2.0.0-beta.8's literal reader ends with io.EOF when the connection ends
// inside the literal, and imapmemserver would store the fragment as a
// message; Dovecot stores nothing then (RFC 9051 §6.3.12: the message is
// the literal's octets, all of them).
func (s *imapSession) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	return s.SessionIMAP4rev2.Append(mailbox, &wholeLiteral{LiteralReader: r, left: r.Size()}, options)
}

// wholeLiteral turns the early end of a literal into io.ErrUnexpectedEOF.
type wholeLiteral struct {
	imap.LiteralReader
	left int64
}

func (w *wholeLiteral) Read(p []byte) (int, error) {
	n, err := w.LiteralReader.Read(p)
	w.left -= int64(n)
	if err == io.EOF && w.left > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Idle polls, then idles until stop or the next delivery to the user, and
// again. The delivery signal is taken before polling, so a delivery either
// shows in the poll or wakes the next round.
func (s *imapSession) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	for {
		delivered := s.delivery.deliverySignal(s.user)
		if err := s.Poll(w, true); err != nil {
			return err
		}
		wake := make(chan struct{})
		go func() {
			select {
			case <-stop:
			case <-delivered:
			}
			close(wake)
		}()
		// The tracker's own IDLE still reports what other sessions change.
		if err := s.SessionIMAP4rev2.Idle(w, wake); err != nil {
			return err
		}
		<-wake // imapmemserver returns at once when no mailbox is selected
		select {
		case <-stop:
			return nil
		default:
		}
	}
}
