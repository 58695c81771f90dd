package edge

import (
	"time"

	"chatmail-edge/mail"
)

// backendGone runs when the backend ended the stream or failed: an IMAP
// client still connected gets a BYE with the UNAVAILABLE code (RFC 5530
// §3), unless the server sent its own (the session watch sees it: Dovecot's
// own BYE is lost when its login process, which holds the TLS of a tls-mode
// session, is stopped together with the imap process, as systemd's stop
// does), the client left first, or the edge closed the session itself
// (shutdown, timeouts). Only the down pump, the client's one writer, calls
// it.
func (s *session) backendGone() {
	if s.route != RouteIMAP || s.watch.serverSaidBye() || s.watch.opaque() || s.up.ended.Load() {
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
