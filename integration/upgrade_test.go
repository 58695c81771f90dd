//go:build integration

package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"chatmail-edge/internal/servicemanager"
	"chatmail-edge/mail"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestEdgeProcess builds the binary once for the cases that run
// the edge as a process in front of the real daemons.
func TestEdgeProcess(t *testing.T) {
	requireDaemons(t)
	bin := servicemanager.Build(t, t.TempDir())
	t.Run("submit", func(t *testing.T) { testSubmissionsThroughRestarts(t, bin) })
	t.Run("idle", func(t *testing.T) { testIdleThroughUpgrade(t, bin) })
}

// submissionDrain is the edge's drain_timeout in the submission test:
// shorter than a client's session, so that each restart and upgrade ends
// sessions in the middle of their work, as on a busy relay.
const submissionDrain = 3 * time.Second

// 10,000 messages submitted with SMTP AUTH through 465 and 443 (ALPN
// smtp), by clients that each keep a session for many messages, while the
// edge is upgraded three times and restarted twice: no connection is
// refused and every message reaches Dovecot exactly once. A client resends a message whose transaction did
// not end in 250 (a real client does), so an edge that ends a session
// between Postfix's queueing and its 250 shows as a duplicate, and one
// that loses a message as a missing one.
func testSubmissionsThroughRestarts(t *testing.T, bin string) {
	const total, clients, perSession = 10000, 16, 100
	r, _ := startMailSide(t, mail.ModeTLS, "")
	p := r.startEdgeProcess(t, bin, submissionDrain)

	work := make(chan message, total)
	sent := make([]message, total)
	for i := range sent {
		sent[i] = newMessage(r.alice, r.bob)
		work <- sent[i]
	}
	var confirmed atomic.Int64
	allConfirmed := make(chan struct{})
	var cuts atomic.Int64    // sessions that ended with a transaction open
	var refused atomic.Int64 // connections refused (none may be)
	var wg sync.WaitGroup
	var failMu sync.Mutex
	var failure error
	fail := func(err error) {
		failMu.Lock()
		defer failMu.Unlock()
		if failure == nil {
			failure = err
		}
	}
	for i := range clients {
		rt := []route{submit465, submit443}[i%2]
		wg.Go(func() {
			retries := 0
			for {
				select {
				case <-allConfirmed:
					return
				default:
				}
				n, err := r.submitFrom(rt, work, perSession, func() {
					if confirmed.Add(1) == total {
						close(allConfirmed)
					}
				})
				if err == nil {
					retries = 0
					continue
				}
				if n.open {
					cuts.Add(1)
				}
				if errors.Is(err, syscall.ECONNREFUSED) {
					refused.Add(1)
				}
				var se *smtp.SMTPError
				if errors.As(err, &se) && se.Code >= 500 {
					fail(fmt.Errorf("client %d: permanent error: %w", i, err))
					return
				}
				if retries++; retries > 50 {
					fail(fmt.Errorf("client %d: 50 sessions in a row failed, last: %w", i, err))
					return
				}
			}
		})
	}

	// The restarts and upgrades, spread over the run.
	events := []string{"upgrade", "restart", "upgrade", "restart", "upgrade"}
	var eventLog []string
	eventsDone := make(chan error, 1)
	go func() {
		for i, ev := range events {
			if err := waitConfirmed(&confirmed, int64((i+1)*total/(len(events)+1)), allConfirmed); err != nil {
				eventsDone <- fmt.Errorf("before %s %d: %w", ev, i+1, err)
				return
			}
			before, start := cuts.Load(), time.Now()
			var err error
			switch ev {
			case "upgrade":
				var old int
				if old, _, err = p.upgrade(); err == nil {
					// The next upgrade needs the old process gone.
					err = p.m.WaitExit(old, submissionDrain+30*time.Second)
				}
			case "restart":
				_, err = p.m.Restart(submissionDrain+30*time.Second, time.Minute)
			}
			if err != nil {
				eventsDone <- fmt.Errorf("%s %d: %w", ev, i+1, err)
				return
			}
			eventLog = append(eventLog, fmt.Sprintf("%s at %d confirmed: %v, %d sessions cut mid-transaction",
				ev, confirmed.Load(), time.Since(start).Round(time.Millisecond), cuts.Load()-before))
		}
		eventsDone <- nil
	}()

	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	select {
	case <-allConfirmed:
	case <-ctx.Done():
		t.Errorf("only %d of %d messages confirmed", confirmed.Load(), total)
	}
	clientsDone := make(chan struct{})
	go func() { wg.Wait(); close(clientsDone) }()
	select {
	case <-clientsDone:
	case <-ctx.Done():
	}
	if err := <-eventsDone; err != nil {
		t.Fatal(err)
	}
	if failure != nil {
		t.Fatal(failure)
	}
	if n := refused.Load(); n > 0 {
		t.Errorf("%d connections refused during the restarts and upgrades", n)
	}
	t.Logf("%d messages confirmed; %d sessions ended with a transaction open; events:\n%s", confirmed.Load(), cuts.Load(), strings.Join(eventLog, "\n"))

	// Every message was queued (250); once the queue is empty each was
	// delivered or bounced, and none can be retried into a duplicate.
	r.postfix.waitQueueEmpty(t, 5*time.Minute)
	counts, err := messageIDCounts(r.login(t, read993, r.bob, nil))
	if err != nil {
		t.Fatal(err)
	}
	missing, duplicated := 0, 0
	for _, m := range sent {
		switch n := counts[m.id]; {
		case n == 0:
			missing++
		case n > 1:
			duplicated++
		}
	}
	if missing > 0 || duplicated > 0 || len(counts) != len(sent) {
		t.Errorf("%d of %d messages missing, %d delivered more than once (of %d sessions cut mid-transaction); INBOX holds %d distinct Message-IDs",
			missing, len(sent), duplicated, cuts.Load(), len(counts))
	}
}

// waitConfirmed waits until n messages are confirmed.
func waitConfirmed(confirmed *atomic.Int64, n int64, all <-chan struct{}) error {
	return pollUntil(context.Background(), 10*time.Minute, func() bool {
		select {
		case <-all:
			return true
		default:
		}
		return confirmed.Load() >= n
	})
}

// sessionEnd says how a submission session ended.
type sessionEnd struct {
	open bool // a transaction was under way
}

// submitFrom runs one SMTP session through rt that sends up to max
// messages taken from work, confirming each 250. A message whose
// transaction did not end in 250 goes back to work, to be sent again.
func (r *relay) submitFrom(rt route, work chan message, max int, confirm func()) (sessionEnd, error) {
	conn, err := r.dial(rt)
	if err != nil {
		return sessionEnd{}, err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("client.example"); err != nil {
		return sessionEnd{}, fmt.Errorf("%s: EHLO: %w", rt.name, err)
	}
	if err := c.Auth(sasl.NewPlainClient("", r.alice.addr, r.alice.password)); err != nil {
		return sessionEnd{}, fmt.Errorf("%s: AUTH: %w", rt.name, err)
	}
	for range max {
		var m message
		select {
		case m = <-work:
		default:
			return sessionEnd{}, c.Quit()
		}
		if _, err := sendOne(c, m); err != nil {
			work <- m
			return sessionEnd{open: true}, fmt.Errorf("%s: send %s: %w", rt.name, m.id, err)
		}
		confirm()
	}
	return sessionEnd{}, c.Quit()
}

// 200 IMAP sessions in IDLE, half through 993 and half through 443 (ALPN
// imap), go on through the old process after an upgrade: each hears of a
// message delivered after it (an untagged EXISTS), and the old process
// exits once they have logged out.
func testIdleThroughUpgrade(t *testing.T, bin string) {
	const sessions = 200
	// chatmail allows more IMAP connections per user and address than
	// Dovecot's 10; 200 IDLE processes exceed the default inotify instances
	// per user (128), past which Dovecot looks every interval instead.
	r, _ := startMailSide(t, mail.ModeTLS, `
mail_max_userip_connections = 500
mailbox_idle_check_interval = 1s
service imap {
  process_limit = 500
}
`)
	const drain = 5 * time.Minute // longer than the test: the sessions end it
	p := r.startEdgeProcess(t, bin, drain)

	type idler struct {
		c      *imapclient.Client
		idle   *imapclient.IdleCommand
		exists chan uint32
		before uint32
	}
	idlers := make([]*idler, sessions)
	for i := range idlers {
		s := &idler{exists: make(chan uint32, 16)}
		s.c = r.login(t, []route{read993, read443}[i%2], r.bob, &imapclient.Options{
			UnilateralDataHandler: &imapclient.UnilateralDataHandler{
				Mailbox: func(d *imapclient.UnilateralDataMailbox) {
					if d.NumMessages != nil {
						s.exists <- *d.NumMessages
					}
				},
			},
		})
		sel, err := s.c.Select("INBOX", nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		s.before = sel.NumMessages
		if s.idle, err = s.c.Idle(); err != nil {
			t.Fatalf("session %d: IDLE: %v", i, err)
		}
		idlers[i] = s
	}

	old, _, err := p.upgrade()
	if err != nil {
		t.Fatal(err)
	}
	msg := newMessage(r.alice, r.bob)
	logOffset := r.dovecot.log.size()
	r.mustSubmit(t, submit465, msg) // through the new process
	r.dovecot.log.waitForLine(t, logOffset, "msgid=<"+msg.id+">: saved mail to INBOX", time.Minute)

	deadline := time.After(time.Minute)
	for i, s := range idlers {
		for n := s.before; n <= s.before; {
			select {
			case n = <-s.exists:
			case <-deadline:
				t.Fatalf("session %d (of %d): no EXISTS above %d after the upgrade", i, sessions, s.before)
			}
		}
	}
	if p.m.Exited(old) {
		t.Fatal("the old process exited while its sessions were open")
	}
	for i, s := range idlers {
		if err := s.idle.Close(); err != nil {
			t.Fatalf("session %d: DONE: %v", i, err)
		}
		if err := s.idle.Wait(); err != nil {
			t.Fatalf("session %d: IDLE after the upgrade: %v", i, err)
		}
		if err := s.c.Logout().Wait(); err != nil {
			t.Fatalf("session %d: LOGOUT: %v", i, err)
		}
	}
	// Its last sessions gone, the old process ends its drain early.
	if err := p.m.WaitExit(old, time.Minute); err != nil {
		t.Fatal(err)
	}
}
