package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// idleConfig is one run of the idle mode.
type idleConfig struct {
	N, Concurrency int
	// Traffic, if > 0, is sent and echoed back on every connection before
	// it goes idle (needs the bench backend's ECHO command).
	Traffic       int
	SettleTimeout time.Duration
	Timeout       time.Duration
	Hold          time.Duration // stay idle this much longer after measuring (to look at the servers by hand)
}

// idleResult holds what one run measured.
type idleResult struct {
	errorTally
	N, Opened, Alive int
	OpenTime         time.Duration
	Settled          bool
	Groups           []string
	Before, After    []procUsage
}

// PerConnKiB is the RSS growth per open connection of group i, or of all
// groups when i < 0.
func (r idleResult) PerConnKiB(i int) float64 {
	if r.Opened == 0 {
		return 0
	}
	var before, after uint64
	for j := range r.Groups {
		if i < 0 || i == j {
			before += r.Before[j].RSSKiB
			after += r.After[j].RSSKiB
		}
	}
	return (float64(after) - float64(before)) / float64(r.Opened)
}

// runIdle opens cfg.N connections, each reads the greeting (and optionally
// exchanges cfg.Traffic bytes each way), holds them open and reports how
// much the groups' RSS grew per connection once it has settled.
func runIdle(ctx context.Context, t *target, groups []procGroup, cfg idleConfig) (idleResult, error) {
	res := idleResult{N: cfg.N}
	for _, g := range groups {
		res.Groups = append(res.Groups, g.Label)
	}
	var err error
	if res.Before, err = settledRSS(ctx, groups, 5*time.Second); err != nil {
		return res, err
	}

	conns := make([]*tls.Conn, cfg.N)
	var mu sync.Mutex
	start := time.Now()
	clientPool(ctx, cfg.N, cfg.Concurrency, func(i int) {
		conn, _, err := t.dial(ctx, i, nil, time.Now().Add(cfg.Timeout))
		if err == nil && cfg.Traffic > 0 {
			conn.SetDeadline(time.Now().Add(cfg.Timeout))
			err = echoExchange(conn, int64(cfg.Traffic))
			conn.SetDeadline(time.Time{})
			if err != nil {
				conn.Close()
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			res.add(err)
			return
		}
		conns[i] = conn
		res.Opened++
	})
	res.OpenTime = time.Since(start)
	defer closeAll(conns)
	if ctx.Err() != nil {
		return res, ctx.Err()
	}

	res.After, res.Settled, err = waitRSSSettled(ctx, groups, cfg.SettleTimeout)
	if err != nil {
		return res, err
	}
	res.Alive = countAlive(conns)
	if cfg.Hold > 0 {
		select {
		case <-time.After(cfg.Hold):
		case <-ctx.Done():
		}
	}
	return res, nil
}

// echoExchange sends n bytes through the bench backend's ECHO command and
// reads them back, writing and reading at once as a real exchange would.
func echoExchange(conn net.Conn, n int64) error {
	errc := make(chan error, 1)
	go func() {
		_, err := io.WriteString(conn, backendCommand("ECHO", n))
		if err == nil {
			_, err = io.CopyBuffer(onlyWriter{conn}, io.LimitReader(zeroReader{}, n), make([]byte, 32<<10))
		}
		errc <- err
	}()
	_, rerr := io.CopyBuffer(io.Discard, io.LimitReader(conn, n), make([]byte, 32<<10))
	if werr := <-errc; werr != nil {
		return fmt.Errorf("send %d bytes: %w", n, werr)
	}
	if rerr != nil {
		return fmt.Errorf("read %d echoed bytes: %w", n, rerr)
	}
	return nil
}

// settledRSS waits (at most limit) until the groups' memory stops moving,
// for the baseline.
func settledRSS(ctx context.Context, groups []procGroup, limit time.Duration) ([]procUsage, error) {
	us, _, err := waitRSSSettled(ctx, groups, limit)
	return us, err
}

// waitRSSSettled samples every 5 quietPolls (500 ms) until the total RSS
// has stayed within 0.5 % (or 256 KiB) for 4 samples (2 s), or limit has
// passed.
func waitRSSSettled(ctx context.Context, groups []procGroup, limit time.Duration) ([]procUsage, bool, error) {
	const window = 4
	deadline := time.Now().Add(limit)
	var recent []uint64
	for {
		us, err := sampleGroups(groups)
		if err != nil {
			return nil, false, err
		}
		recent = append(recent, totalRSS(us))
		if len(recent) > window {
			recent = recent[1:]
		}
		if len(recent) == window && spread(recent) <= max(256, recent[window-1]/200) {
			return us, true, nil
		}
		if !time.Now().Before(deadline) {
			return us, false, nil
		}
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-time.After(5 * quietPoll):
		}
	}
}

func spread(xs []uint64) uint64 {
	lo, hi := xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return hi - lo
}

// countAlive checks, without waiting, which connections the servers still
// hold: a read that times out means open, EOF or an error means closed.
func countAlive(conns []*tls.Conn) int {
	alive := 0
	for _, c := range conns {
		if c == nil {
			continue
		}
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var b [1]byte
		_, err := c.Read(b[:])
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			alive++
		}
	}
	return alive
}

func closeAll(conns []*tls.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

func (r idleResult) print(w io.Writer) {
	fmt.Fprintf(w, "connections %d, opened %d in %.1fs, still open at the end %d, errors %d\n", r.N, r.Opened, r.OpenTime.Seconds(), r.Alive, r.Errors)
	if r.FirstError != "" {
		fmt.Fprintf(w, "first error: %s\n", r.FirstError)
	}
	if !r.Settled {
		fmt.Fprintln(w, "RSS had not settled at the end of the wait; figures may be high")
	}
	for i, g := range r.Groups {
		fmt.Fprintf(w, "  %-24s RSS %8.1f MiB -> %8.1f MiB  %6.1f KiB/connection (%d processes)\n", g,
			float64(r.Before[i].RSSKiB)/1024, float64(r.After[i].RSSKiB)/1024, r.PerConnKiB(i), r.After[i].Procs)
	}
	fmt.Fprintf(w, "  %-24s %6.1f KiB/connection\n", "all processes", r.PerConnKiB(-1))
}
