//go:build integration

package integration

import (
	"strings"
	"testing"
	"time"

	"chatmail-edge/mail"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// TestDaemonsLogClientAddress: in proxy mode Postfix and Dovecot log the
// client's own address (127.0.0.2), learned from the PROXY v2 header; in tls
// mode they can only see the edge (127.0.0.1), which the test records.
func TestDaemonsLogClientAddress(t *testing.T) {
	forEachMode(t, func(t *testing.T, r *relay) {
		msg := newMessage(r.alice, r.bob)
		queueID := r.mustSubmit(t, submit465, msg)[0]
		c := r.login(t, read993, r.bob, nil)
		waitForMessage(t, c, msg.id)
		received := receivedHeader(t, c, msg.id)

		// Postfix logs "QUEUEID: client=name[addr], sasl_method=..." for an
		// accepted message; Dovecot's imap-login logs "Login: user=<...>,
		// method=PLAIN, rip=ADDR, ...".
		submitted := r.postfix.log.waitForLine(t, 0, queueID+": client=", 10*time.Second)
		logins := r.dovecot.log.lines("imap-login: Info: Login: ")
		if len(logins) == 0 {
			t.Fatal("Dovecot logged no login")
		}
		want := "127.0.0.1" // the edge
		if r.mode == mail.ModeProxy {
			want = clientIP.String()
		}
		if !strings.Contains(submitted, "["+want+"]") {
			t.Errorf("Postfix logged %q, want client address %s", submitted, want)
		}
		for _, l := range logins {
			if !strings.Contains(l, "rip="+want+",") {
				t.Errorf("Dovecot logged %q, want rip=%s", l, want)
			}
		}
		t.Logf("%s mode, client at %s:\n  Postfix: %s\n  Dovecot: %s\n  Received: %s", r.mode, clientIP, submitted, logins[0], received)
	})
}

// receivedHeader returns the Received header Postfix added to message id.
func receivedHeader(t *testing.T, c *imapclient.Client, id string) string {
	t.Helper()
	uids, err := uidsOf(c, id)
	if err != nil {
		t.Fatal(err)
	}
	section := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: []string{"Received"}, Peek: true}
	msgs, err := c.Fetch(imap.UIDSetNum(uids...), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("fetch Received of %s: %d messages, %v", id, len(msgs), err)
	}
	return strings.Join(strings.Fields(string(msgs[0].FindBodySection(section))), " ")
}
