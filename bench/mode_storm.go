package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"
)

// stormConfig is one run of the storm mode.
type stormConfig struct {
	N      int
	Window time.Duration // the clients' connection starts are spread evenly over it
	// Tickets first connects every client once to collect a session ticket
	// (Concurrency at a time); the storm then offers it.
	Tickets     bool
	Concurrency int
	// Restart, if set, runs between collecting tickets and the storm: the
	// restart whose aftermath the storm is.
	Restart func(context.Context) error
	// PrepareHellos builds every client's ClientHello before the storm
	// starts (helloFirstConn), as real clients do on their own devices.
	PrepareHellos bool
	Timeout       time.Duration // per client, from its start to its greeting
	Sample        time.Duration // RSS sampling period
}

// stormResult holds what one run measured.
type stormResult struct {
	errorTally
	N, Served, Resumed, ECHAccepted int
	TicketErrors                    int
	LastServed                      time.Duration // from the first client's start
	P50, P99                        time.Duration // per client, start to greeting
	Groups                          []string
	BaseRSSKiB, PeakRSSKiB          []uint64
}

// runStorm starts N clients evenly within Window; each connects, completes
// the handshake, reads the greeting and stays connected until the storm is
// over, as reconnecting mail clients do.
func runStorm(ctx context.Context, t *target, groups []procGroup, cfg stormConfig) (stormResult, error) {
	res := stormResult{N: cfg.N}
	for _, g := range groups {
		res.Groups = append(res.Groups, g.Label)
	}
	var caches []tls.ClientSessionCache
	if cfg.Tickets {
		caches = newSessionCaches(cfg.N)
		w := connectPass(ctx, t, cfg.N, cfg.Concurrency, caches, cfg.Timeout)
		res.TicketErrors = w.Errors
	}
	if cfg.Restart != nil {
		if err := cfg.Restart(ctx); err != nil {
			return res, fmt.Errorf("restart before the storm: %w", err)
		}
	}
	base, err := settledRSS(ctx, groups, 5*time.Second)
	if err != nil {
		return res, err
	}
	for _, u := range base {
		res.BaseRSSKiB = append(res.BaseRSSKiB, u.RSSKiB)
	}

	conns := make([]*tls.Conn, cfg.N)
	defer closeAll(conns)
	latencies := make([]float64, cfg.N)
	infos := make([]connInfo, cfg.N)
	errs := make([]error, cfg.N)
	served := make([]time.Duration, cfg.N)
	// Every client waits for its turn, start plus its share of Window; with
	// PrepareHellos its ClientHello is built before start is set.
	var start time.Time
	startc := make(chan struct{})
	turn := func(i int) error {
		select {
		case <-startc:
		case <-ctx.Done():
			return ctx.Err()
		}
		at := start.Add(time.Duration(int64(cfg.Window) * int64(i) / int64(cfg.N)))
		select {
		case <-time.After(time.Until(at)):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var ready, wg sync.WaitGroup
	ready.Add(cfg.N)
	for i := range cfg.N {
		wg.Go(func() {
			var once sync.Once
			isReady := func() { once.Do(ready.Done) }
			defer isReady()
			var cache tls.ClientSessionCache
			if caches != nil {
				cache = caches[i]
			}
			var began time.Time
			if cfg.PrepareHellos {
				hc := &helloFirstConn{open: func() (net.Conn, error) {
					isReady()
					if err := turn(i); err != nil {
						return nil, err
					}
					began = time.Now()
					return t.connectTCP(ctx, i, began.Add(cfg.Timeout))
				}}
				conns[i], infos[i], errs[i] = t.handshake(ctx, tls.Client(hc, t.tlsConfig(cache)))
			} else {
				isReady()
				if errs[i] = turn(i); errs[i] != nil {
					return
				}
				began = time.Now()
				conns[i], infos[i], errs[i] = t.dial(ctx, i, cache, began.Add(cfg.Timeout))
			}
			if errs[i] == nil {
				served[i] = time.Since(start)
				latencies[i] = float64(time.Since(began))
			}
		})
	}
	ready.Wait()
	sampler := startPeakSampler(groups, cfg.Sample)
	start = time.Now().Add(50 * time.Millisecond) // every client waits for its turn before the first starts
	close(startc)
	wg.Wait()
	peaks := sampler.stop()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	res.PeakRSSKiB = peaks

	var ok []float64
	for i := range cfg.N {
		if errs[i] != nil {
			res.add(errs[i])
			continue
		}
		res.Served++
		res.LastServed = max(res.LastServed, served[i])
		ok = append(ok, latencies[i])
		if infos[i].Resumed {
			res.Resumed++
		}
		if infos[i].ECHAccepted {
			res.ECHAccepted++
		}
	}
	slices.Sort(ok)
	res.P50, res.P99 = time.Duration(percentile(ok, 50)), time.Duration(percentile(ok, 99))
	return res, nil
}

// peakSampler records the highest RSS of each group while it runs.
type peakSampler struct {
	stopc chan struct{}
	done  chan []uint64
}

func startPeakSampler(groups []procGroup, every time.Duration) *peakSampler {
	s := &peakSampler{stopc: make(chan struct{}), done: make(chan []uint64, 1)}
	go func() {
		peaks := make([]uint64, len(groups))
		// Resolving the processes means reading all of /proc; do it now and
		// then, and read only the members' status in between.
		var members [][]int
		resolve := func() {
			procs, err := readProcs()
			if err != nil {
				return
			}
			members = members[:0]
			for _, g := range groups {
				pids, _ := g.members(procs)
				members = append(members, pids)
			}
		}
		resolve()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := 0; ; n++ {
			for i, pids := range members {
				peaks[i] = max(peaks[i], usageOf(pids).RSSKiB)
			}
			select {
			case <-s.stopc:
				s.done <- peaks
				return
			case <-tick.C:
			}
			if n%25 == 24 {
				resolve()
			}
		}
	}()
	return s
}

func (s *peakSampler) stop() []uint64 {
	close(s.stopc)
	return <-s.done
}

func (r stormResult) print(w io.Writer) {
	if r.TicketErrors > 0 {
		fmt.Fprintf(w, "collecting tickets: %d connections failed\n", r.TicketErrors)
	}
	fmt.Fprintf(w, "clients %d, served %d, errors %d, resumed %d, ECH accepted %d\n", r.N, r.Served, r.Errors, r.Resumed, r.ECHAccepted)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
	fmt.Fprintf(w, "last served %.2fs after the first start; per client p50 %v, p99 %v\n", r.LastServed.Seconds(), r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond))
	for i, g := range r.Groups {
		fmt.Fprintf(w, "  %-24s RSS before %8.1f MiB, peak %8.1f MiB\n", g, float64(r.BaseRSSKiB[i])/1024, float64(r.PeakRSSKiB[i])/1024)
	}
}
