package edge

import (
	"bufio"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestManySessionsAllGreeted opens many sessions concurrently and requires
// every one to deliver the backend's greeting: a lost readiness event in the
// parking machinery shows up here as a client waiting forever.
func TestManySessionsAllGreeted(t *testing.T) {
	if testing.Short() {
		t.Skip("many connections")
	}
	te, _, _ := startEdgeWithBackends(t, nil)
	const n, concurrency = 1500, 50
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			conn, err := te.dial(t, "imaps", nil, nil)
			if err != nil {
				mu.Lock()
				failures = append(failures, err.Error())
				mu.Unlock()
				return
			}
			t.Cleanup(func() { conn.Close() })
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "* OK") {
				mu.Lock()
				failures = append(failures, fmt.Sprintf("greeting %q: %v", line, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d sessions failed, first: %s", len(failures), n, failures[0])
	}
}
