//go:build integration

package integration

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

// TestSubmitAndRead: a message submitted with ECH through 465 and through
// 443 (ALPN smtp), with SMTP AUTH, goes through Postfix and LMTP into Dovecot
// and reads back through 993 and 443 (ALPN imap): once, body unchanged.
func TestSubmitAndRead(t *testing.T) {
	forEachMode(t, func(t *testing.T, r *relay) {
		var sent []message
		for _, submit := range []route{submit465, submit443} {
			msg := newMessage(r.alice, r.bob)
			r.mustSubmit(t, submit, msg)
			sent = append(sent, msg)
			for _, read := range []route{read993, read443} {
				bodies := waitForMessage(t, r.login(t, read, r.bob, nil), msg.id)
				if len(bodies) != 1 {
					t.Fatalf("submitted via %s, read via %s: %d copies", submit.name, read.name, len(bodies))
				}
				if !bytes.Equal(bodies[0], []byte(msg.body)) {
					t.Fatalf("submitted via %s, read via %s: body changed:\n%q\nwant\n%q", submit.name, read.name, bodies[0], msg.body)
				}
			}
		}
		// With the queue empty no retry can add a copy later.
		r.postfix.waitQueueEmpty(t, time.Minute)
		counts, err := messageIDCounts(r.login(t, read993, r.bob, nil))
		if err != nil {
			t.Fatal(err)
		}
		if len(counts) != len(sent) {
			t.Errorf("INBOX holds %d distinct messages, want %d: %v", len(counts), len(sent), counts)
		}
		for _, m := range sent {
			if counts[m.id] != 1 {
				t.Errorf("%s arrived %d times", m.id, counts[m.id])
			}
		}
	})
}

// TestIdleSeesNewMail: a client in IDLE through the edge hears of a new
// message (an untagged EXISTS, RFC 2177) within seconds of its delivery.
func TestIdleSeesNewMail(t *testing.T) {
	forEachMode(t, func(t *testing.T, r *relay) {
		for _, read := range []route{read993, read443} {
			t.Run(read.name, func(t *testing.T) {
				exists := make(chan uint32, 16)
				c := r.login(t, read, r.bob, &imapclient.Options{
					UnilateralDataHandler: &imapclient.UnilateralDataHandler{
						Mailbox: func(d *imapclient.UnilateralDataMailbox) {
							if d.NumMessages != nil {
								exists <- *d.NumMessages
							}
						},
					},
				})
				before, err := c.Select("INBOX", nil).Wait()
				if err != nil {
					t.Fatal(err)
				}
				idle, err := c.Idle()
				if err != nil {
					t.Fatal(err)
				}
				msg := newMessage(r.alice, r.bob)
				logOffset := r.dovecot.log.size()
				r.mustSubmit(t, submit465, msg)
				r.dovecot.log.waitForLine(t, logOffset, "msgid=<"+msg.id+">: saved mail to INBOX", time.Minute)

				ctx, cancel := context.WithTimeout(t.Context(), idleNotifyDeadline)
				defer cancel()
				for n := before.NumMessages; n <= before.NumMessages; {
					select {
					case n = <-exists:
					case <-ctx.Done():
						t.Fatalf("no EXISTS above %d within %v of the delivery", before.NumMessages, idleNotifyDeadline)
					}
				}
				if err := idle.Close(); err != nil {
					t.Fatal(err)
				}
				if err := idle.Wait(); err != nil {
					t.Fatal(err)
				}
				if bodies, err := bodiesOf(c, msg.id); err != nil || len(bodies) != 1 {
					t.Fatalf("after IDLE: %d copies of the new message, %v", len(bodies), err)
				}
			})
		}
	})
}

// idleNotifyDeadline is "within a few seconds": Dovecot learns of the new
// file by inotify and tells idling clients at once; without that it would
// poll every mailbox_idle_check_interval (30s).
const idleNotifyDeadline = 5 * time.Second
