//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"
)

// byeDeadline is "promptly": the BYE comes while Dovecot shuts down, which
// takes about a second, far below systemd's stop timeout.
const byeDeadline = 10 * time.Second

// TestDovecotStopped: when Dovecot stops (as systemd stops it), IMAP clients
// through the edge get an untagged BYE (RFC 9051 §7.1.5) and then the end of
// the stream, not a bare close; so does a client that connects while it is
// down; once Dovecot is back, the same edge serves new connections, and mail
// flows again. In proxy mode the BYE is Dovecot's; in tls mode Dovecot's is
// often lost with its login process, and the edge sends its own (see
// edge/imapbye.go).
func TestDovecotStopped(t *testing.T) {
	forEachMode(t, func(t *testing.T, r *relay) {
		// Logged-in clients, one idling, on both IMAP routes.
		var sessions []*rawIMAP
		for i, rt := range []route{read993, read443} {
			s := r.rawIMAP(t, rt)
			s.waitLine(t, "* OK", clientTimeout)
			s.command(t, "a", "LOGIN "+r.bob.addr+" "+r.bob.password)
			s.command(t, "b", "SELECT INBOX")
			if i == 0 {
				s.send(t, "c IDLE")
				s.waitLine(t, "+ ", clientTimeout)
			}
			sessions = append(sessions, s)
		}

		stopped := time.Now()
		r.dovecot.stop(t)
		for i, s := range sessions {
			bye := s.waitLine(t, "* BYE", time.Until(stopped.Add(byeDeadline)))
			s.expectEOF(t, time.Until(stopped.Add(byeDeadline)))
			t.Logf("session %d got %q, then the end of the stream", i, bye)
		}

		// The edge's own refusal (mail.Protocol.Refusal), at once: Dovecot's
		// port refuses connections.
		down := r.rawIMAP(t, read993)
		if line := down.waitLine(t, "", byeDeadline); !strings.HasPrefix(line, "* BYE [UNAVAILABLE] ") {
			t.Fatalf("while Dovecot is down the edge greeted with %q, want * BYE [UNAVAILABLE]", line)
		}

		r.dovecot.start(t)
		msg := newMessage(r.alice, r.bob)
		r.mustSubmit(t, submit465, msg)
		for _, rt := range []route{read993, read443} {
			if bodies := waitForMessage(t, r.login(t, rt, r.bob, nil), msg.id); len(bodies) != 1 {
				t.Fatalf("after the restart, via %s: %d copies", rt.name, len(bodies))
			}
		}
	})
}
