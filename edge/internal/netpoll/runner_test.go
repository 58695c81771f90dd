package netpoll

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunner(t *testing.T) {
	r := NewRunner()

	// No task waits for another: 3x the idle bound of tasks that all block
	// until every one of them has started.
	const n = 3 * maxIdleRunners
	var started atomic.Int32
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(n)
	for range n {
		r.Do(func() {
			defer wg.Done()
			started.Add(1)
			<-release
		})
	}
	waitFor(t, 10*time.Second, "every blocked task started", func() bool { return started.Load() == n })
	close(release)
	wg.Wait()

	// The goroutines that stay are bounded, and they take the next tasks.
	waitFor(t, 10*time.Second, "the idle goroutines settled", func() bool { return r.idle.Load() == maxIdleRunners })
	done := make(chan struct{})
	r.Do(func() { close(done) })
	<-done
	waitFor(t, 10*time.Second, "the goroutine back to waiting", func() bool { return r.idle.Load() == maxIdleRunners })

	// close lets them go; later tasks still run.
	r.Close()
	waitFor(t, 10*time.Second, "no idle goroutine after close", func() bool { return r.idle.Load() == 0 })
	ran := make(chan struct{})
	r.Do(func() { close(ran) })
	<-ran
}

// waitFor polls cond until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
