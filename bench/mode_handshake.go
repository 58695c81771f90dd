package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// handshakeConfig is one run of the handshake mode.
type handshakeConfig struct {
	N           int // measured connections
	Concurrency int
	Resume      bool // first a pass that collects one ticket per client, then the measured pass resumes
	Warmup      int  // unmeasured connections first, so a fresh server's first allocations do not count
	Timeout     time.Duration
	// Caches, if set with Resume, are the clients' session caches (one per
	// connection), kept for the caller to resume again later.
	Caches []tls.ClientSessionCache
}

// handshakeResult holds what one run measured.
type handshakeResult struct {
	errorTally
	N, Resumed, ECHAccepted int
	Wall                    time.Duration
	PerSecond               float64
	Groups                  []string
	CPU                     []time.Duration // per group, over the measured pass
}

// CPUPerConn is the CPU time per connection of all groups together, in µs.
func (r handshakeResult) CPUPerConn() float64 {
	var t time.Duration
	for _, c := range r.CPU {
		t += c
	}
	return perConnMicros(t, r.N-r.Errors)
}

func perConnMicros(d time.Duration, n int) float64 {
	if n <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(n)
}

// clientPool runs fn for connections 0..n-1 on c goroutines.
func clientPool(ctx context.Context, n, c int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(1, min(c, n)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		})
	}
	wg.Wait()
}

// connectPass opens n connections (handshake and greeting), each closed at
// once, and counts the outcomes. caches[i], if given, is client i's session
// cache.
type passResult struct {
	errorTally
	Resumed, ECHAccepted int
	Wall                 time.Duration
}

func connectPass(ctx context.Context, t *target, n, c int, caches []tls.ClientSessionCache, timeout time.Duration) passResult {
	var mu sync.Mutex
	var res passResult
	start := time.Now()
	clientPool(ctx, n, c, func(i int) {
		var cache tls.ClientSessionCache
		if caches != nil {
			cache = caches[i]
		}
		conn, info, err := t.dial(ctx, i, cache, time.Now().Add(timeout))
		if err == nil {
			// Tickets arrive after the handshake; the greeting was read
			// after them, so the cache has them by now.
			conn.Close()
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			res.add(err)
			return
		}
		if info.Resumed {
			res.Resumed++
		}
		if info.ECHAccepted {
			res.ECHAccepted++
		}
	})
	res.Wall = time.Since(start)
	if ctx.Err() != nil && res.FirstError == "" {
		res.FirstError = ctx.Err().Error()
	}
	return res
}

func newSessionCaches(n int) []tls.ClientSessionCache {
	caches := make([]tls.ClientSessionCache, n)
	for i := range caches {
		caches[i] = tls.NewLRUClientSessionCache(1)
	}
	return caches
}

// runHandshakes measures cfg.N connections from connect to greeting and the
// CPU the groups spent on them.
func runHandshakes(ctx context.Context, t *target, groups []procGroup, cfg handshakeConfig) (handshakeResult, error) {
	res := handshakeResult{N: cfg.N}
	for _, g := range groups {
		res.Groups = append(res.Groups, g.Label)
	}
	if cfg.Warmup > 0 {
		if w := connectPass(ctx, t, cfg.Warmup, cfg.Concurrency, nil, cfg.Timeout); w.Errors == cfg.Warmup {
			return res, fmt.Errorf("warm-up: every connection failed: %s", w.FirstError)
		}
	}
	var caches []tls.ClientSessionCache
	if cfg.Resume {
		caches = cfg.Caches
		if caches == nil {
			caches = newSessionCaches(cfg.N)
		}
		if w := connectPass(ctx, t, cfg.N, cfg.Concurrency, caches, cfg.Timeout); w.Errors > 0 {
			return res, fmt.Errorf("collecting session tickets: %d of %d connections failed: %s", w.Errors, cfg.N, w.FirstError)
		}
	}
	before, err := waitCPUQuiet(groups, 2*time.Second)
	if err != nil {
		return res, err
	}
	pass := connectPass(ctx, t, cfg.N, cfg.Concurrency, caches, cfg.Timeout)
	after, err := waitCPUQuiet(groups, 3*time.Second)
	if err != nil {
		return res, err
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	res.errorTally, res.Resumed, res.ECHAccepted, res.Wall = pass.errorTally, pass.Resumed, pass.ECHAccepted, pass.Wall
	res.PerSecond = float64(cfg.N-pass.Errors) / pass.Wall.Seconds()
	for i := range groups {
		res.CPU = append(res.CPU, after[i].CPU-before[i].CPU)
	}
	return res, nil
}

func (r handshakeResult) print(w io.Writer) {
	fmt.Fprintf(w, "connections %d, errors %d, resumed %d, ECH accepted %d\n", r.N, r.Errors, r.Resumed, r.ECHAccepted)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
	fmt.Fprintf(w, "wall %.2fs, %.0f handshakes/s (connect to greeting, client included)\n", r.Wall.Seconds(), r.PerSecond)
	for i, g := range r.Groups {
		fmt.Fprintf(w, "  %-24s CPU %7.2fs  %8.1f µs/connection\n", g, r.CPU[i].Seconds(), perConnMicros(r.CPU[i], r.N-r.Errors))
	}
	fmt.Fprintf(w, "  %-24s %8.1f µs/connection\n", "all processes", r.CPUPerConn())
}
