package mail

import (
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
