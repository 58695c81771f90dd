//go:build integration

package integration

import (
	"sync"
	"testing"
	"time"
)

// TestConcurrentSubmissions: 20 clients submit 10 messages each at the same
// time, half through 465 and half through 443; every one of the 200
// messages arrives in the recipient's INBOX exactly once.
func TestConcurrentSubmissions(t *testing.T) {
	const clients, perClient = 20, 10
	forEachMode(t, func(t *testing.T, r *relay) {
		var sent []message
		var wg sync.WaitGroup
		for i := range clients {
			rt := []route{submit465, submit443}[i%2]
			msgs := make([]message, perClient)
			for j := range msgs {
				msgs[j] = newMessage(r.alice, r.bob)
			}
			sent = append(sent, msgs...)
			wg.Go(func() {
				if _, err := r.submit(rt, msgs...); err != nil {
					t.Errorf("client %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		// Every message was queued (250); once the queue is empty each was
		// delivered or bounced, and none can be retried into a duplicate.
		r.postfix.waitQueueEmpty(t, 2*time.Minute)
		counts, err := messageIDCounts(r.login(t, read993, r.bob, nil))
		if err != nil {
			t.Fatal(err)
		}
		missing := 0
		for _, m := range sent {
			switch n := counts[m.id]; {
			case n == 0:
				missing++
			case n > 1:
				t.Errorf("%s arrived %d times", m.id, n)
			}
		}
		if missing > 0 || len(counts) != len(sent) {
			t.Errorf("%d of %d messages missing; INBOX holds %d distinct Message-IDs", missing, len(sent), len(counts))
		}
	})
}
