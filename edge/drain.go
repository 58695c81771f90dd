package edge

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// drainPoll is how often a drain looks for sessions it can close.
const drainPoll = 50 * time.Millisecond

// Drain ends the edge's work without cutting any of it, for a restart or an
// upgrade:
//
//   - it stops accepting: the listening sockets close here (a process that
//     takes over holds its own copies of them, and new connections go there);
//     connections already accepted finish their handshakes and are served;
//   - for grace, sessions go on untouched: an upgrade's new process serves
//     new connections meanwhile, and clients in IMAP IDLE keep getting their
//     mail through this one;
//   - then each IMAP session gets "* BYE" and each SMTP session "421" at the
//     first point where that cuts nothing (between commands and responses,
//     never inside a literal or a message, no mail transaction open), and is
//     closed; a client reconnects, to the new process. With spread, these
//     goodbyes are spread evenly over the time left until ctx's deadline, so
//     that ten thousand idle clients do not all reconnect in the same second;
//   - when ctx is done, what is left is closed as it is.
//
// Drain returns once no session and no handshake is left, or ctx is done.
// Connections routed to HTTP belong to the web server (its Shutdown).
func (e *Edge) Drain(ctx context.Context, grace time.Duration, spread bool) {
	e.stopAccepting()
	goodbyeFrom := time.Now().Add(grace)
	deadline, hasDeadline := ctx.Deadline()
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	e.log.Info("draining", zap.Int("sessions", e.sessionCount()), zap.Duration("grace", grace), zap.Bool("spread", spread))
	for {
		sessions, pending := e.inFlight()
		if len(sessions) == 0 && pending == 0 {
			e.log.Info("drained")
			return
		}
		if now := time.Now(); !now.Before(goodbyeFrom) {
			budget := len(sessions)
			if spread && hasDeadline {
				budget = goodbyesPerRound(len(sessions), deadline.Sub(now))
			}
			// The budget is shared with the pumps, which say goodbye
			// themselves when a session turns quiet as they move its data.
			e.goodbyes.Store(int64(budget))
			e.sayingGoodbye.Store(true)
			for _, s := range sessions {
				if e.goodbyes.Load() <= 0 {
					break
				}
				s.closeIfQuiet(nil)
			}
		}
		select {
		case <-ctx.Done():
			left, _ := e.inFlight()
			e.log.Warn("drain time over, closing the rest", zap.Int("sessions", len(left)))
			for _, s := range left {
				s.close("drain time over", nil)
			}
			return
		case <-t.C:
		}
	}
}

// takeGoodbye takes one goodbye from this round's budget.
func (e *Edge) takeGoodbye() bool {
	return e.goodbyes.Add(-1) >= 0
}

// goodbyesPerRound spreads n goodbyes evenly over the rounds of drainPoll
// in left, keeping the last tenth of it for sessions that were busy.
func goodbyesPerRound(n int, left time.Duration) int {
	rounds := int(left * 9 / 10 / drainPoll)
	if rounds <= 1 {
		return n
	}
	return (n + rounds - 1) / rounds
}

// stopAccepting closes the listening sockets; Shutdown does it too.
func (e *Edge) stopAccepting() {
	e.stopAcceptOnce.Do(func() {
		for _, l := range e.listeners {
			if l.ln != nil {
				l.ln.Close()
			}
		}
	})
}

// inFlight are the sessions, and the number of connections still before
// the end of their handshake.
func (e *Edge) inFlight() ([]*session, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sessions := make([]*session, 0, len(e.sessions))
	for s := range e.sessions {
		sessions = append(sessions, s)
	}
	return sessions, len(e.pending)
}

func (e *Edge) sessionCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.sessions)
}
