package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"
)

// figureOptions sizes the figures; the defaults keep `all` within about
// half an hour on two cores.
type figureOptions struct {
	Runs        int
	HandshakeN  int
	Concurrency int
	IdleN       int
	Traffic     int64
	BulkBytes   int64
	StormN      int
	StormWindow time.Duration
	StormFresh  bool
	// StormPrepareHellos: see stormConfig.PrepareHellos.
	StormPrepareHellos bool
	Settle             time.Duration
}

func addFigureFlags(fs *flag.FlagSet) *figureOptions {
	o := &figureOptions{}
	fs.IntVar(&o.Runs, "runs", 5, "runs per figure; medians, min and max are over them, ratios are taken per run")
	fs.IntVar(&o.HandshakeN, "handshake-n", 2000, "connections per run for the CPU per handshake (full and resumed)")
	fs.IntVar(&o.Concurrency, "c", 16, "connections at once while opening connections")
	fs.IntVar(&o.IdleN, "idle-n", 10000, "idle connections held per run (capped by the open-file limit)")
	sizeVar(fs, &o.Traffic, "traffic", 64<<10, "bytes each way per connection before idling, for idle-traffic")
	sizeVar(fs, &o.BulkBytes, "bulk-bytes", 2<<30, "bytes per direction per bulk run")
	fs.IntVar(&o.StormN, "storm-n", 10000, "clients per storm (capped by the open-file limit)")
	fs.DurationVar(&o.StormWindow, "storm-window", time.Second, "the storm's clients start within this time")
	fs.BoolVar(&o.StormFresh, "storm-fresh", true, "also run the storm without tickets or restart (every handshake full)")
	fs.BoolVar(&o.StormPrepareHellos, "storm-prepare-hellos", true, "the storm's clients build their ClientHellos before it starts, as on their own devices (false: at connect, on the shared cores)")
	fs.DurationVar(&o.Settle, "settle", 30*time.Second, "longest wait for RSS to settle in the idle figures")
	return o
}

// figure is one command of the table.
type figure struct {
	Name, What string
	Run        func(ctx context.Context, l *lab, o *figureOptions, log io.Writer) ([]row, error)
}

var figures = []figure{
	{"handshake", "CPU per new IMAP connection: edge with ECH vs chatmail today and vs nginx termination", figureHandshake},
	{"idle", "RSS per idle proxied IMAP connection, fresh", figureIdle},
	{"idle-traffic", "RSS per idle connection after 64 KiB each way", figureIdleTraffic},
	{"bulk", "CPU per GB proxied, one way and both ways, 1 and 8 connections", figureBulk},
	{"storm", "reconnect storm after a restart (and without tickets)", figureStorm},
	{"resume", "resumed handshakes with ECH, before and after a restart", figureResume},
}

// rounds runs measure for every stack in every run, rotating the order so
// that no stack always goes first (or always runs right after another). A
// failed measurement is retried once on freshly started processes: other
// work on a shared machine can get in the way (it is logged).
func rounds(ctx context.Context, runs int, stacks []stack, log io.Writer, measure func(run int, s stack) error) error {
	for r := range runs {
		for k := range stacks {
			s := stacks[(k+r)%len(stacks)]
			err := measure(r, s)
			if err != nil && ctx.Err() == nil {
				fmt.Fprintf(log, "run %d, %s failed, retrying once after restarting its processes: %v\n", r+1, s.Name, err)
				if err = s.restart(ctx); err == nil {
					err = measure(r, s)
				}
			}
			if err == nil {
				err = ctx.Err()
			}
			if err != nil {
				return fmt.Errorf("run %d, %s: %w", r+1, s.Name, err)
			}
		}
	}
	return nil
}

// series collects one value per run under a key such as "edge".
type series map[string][]float64

func (s series) add(key string, v float64) { s[key] = append(s[key], v) }

func withSources(t *target, n int) *target {
	c := *t
	c.Sources, _ = loopbackSources(c.Addr, n)
	return &c
}

func figureHandshake(ctx context.Context, l *lab, o *figureOptions, log io.Writer) ([]row, error) {
	stacks := []stack{l.edgeStack(true), l.todayStack(), l.termStack(), l.edgeStack(false)}
	cpu, front, rate := series{}, series{}, series{}
	cfg := handshakeConfig{N: o.HandshakeN, Concurrency: o.Concurrency, Warmup: max(100, o.HandshakeN/10), Timeout: time.Minute}
	err := rounds(ctx, o.Runs, stacks, log, func(run int, s stack) error {
		c := cfg
		if run == 0 {
			// A whole unmeasured pass first, so that every process is in its
			// steady state: a fresh edge's heap grows to its GC floor over
			// its first ~2,000 connections, paying a page fault for every
			// fresh page once, which a relay that has run for a while no
			// longer does.
			c.Warmup += c.N
		}
		res, err := runHandshakes(ctx, s.Target, s.groups(), c)
		if err != nil {
			return err
		}
		if res.Errors > 0 {
			return fmt.Errorf("%d of %d connections failed: %s", res.Errors, res.N, res.FirstError)
		}
		cpu.add(s.Name, res.CPUPerConn())
		front.add(s.Name, perConnMicros(res.CPU[0], res.N))
		rate.add(s.Name, res.PerSecond)
		fmt.Fprintf(log, "handshake run %d %-18s %7.1f µs/connection (front end %6.1f), %5.0f/s\n", run+1, s.Name, res.CPUPerConn(), perConnMicros(res.CPU[0], res.N), res.PerSecond)
		return nil
	})
	if err != nil {
		return nil, err
	}
	n := fmt.Sprintf("%d connections a run", o.HandshakeN)
	rows := []row{
		{Figure: "CPU per new IMAP connection through 443 with ECH, client to greeting, all processes (" + n + ")", Unit: "µs", Prec: 0,
			Edge: cpu[stackEdge], BaseName: stackToday, Base: cpu[stackToday], Target: "≤ 0.75x", Check: ratioAtMost(0.75)},
		{Figure: "same, edge with ECH vs nginx stream termination without ECH", Unit: "µs", Prec: 0,
			Edge: cpu[stackEdge], BaseName: stackTerm, Base: cpu[stackTerm], Target: "≤ 1.05x", Check: ratioAtMost(1.05)},
		{Figure: "same, edge without ECH vs nginx termination (for reference)", Unit: "µs", Prec: 0,
			Edge: cpu[stackEdgePlain], BaseName: stackTerm, Base: cpu[stackTerm]},
	}
	for _, s := range stacks {
		rows = append(rows,
			detail("handshake: CPU per connection, all processes, "+s.Name, "µs", 0, cpu[s.Name]),
			detail("handshake: CPU per connection, front end only, "+s.Name, "µs", 0, front[s.Name]),
			detail("handshake: connections per second (client included, shared cores), "+s.Name, "/s", 0, rate[s.Name]))
	}
	return rows, nil
}

func figureIdle(ctx context.Context, l *lab, o *figureOptions, log io.Writer) ([]row, error) {
	return idleRows(ctx, l, o, log, false)
}

func figureIdleTraffic(ctx context.Context, l *lab, o *figureOptions, log io.Writer) ([]row, error) {
	return idleRows(ctx, l, o, log, true)
}

// idleRows measures the RSS per idle connection of each front end (and of
// the backend behind it), every run on freshly started processes.
func idleRows(ctx context.Context, l *lab, o *figureOptions, log io.Writer, traffic bool) ([]row, error) {
	n := l.capConns(o.IdleN, log)
	stacks := []stack{l.edgeStack(true), l.termStack(), l.todayStack()}
	cfg := idleConfig{N: n, Concurrency: 32, SettleTimeout: o.Settle, Timeout: time.Minute}
	name, target, limit := "fresh", "≤ 24 KiB", 24.0
	if traffic {
		stacks = []stack{l.edgeEchoStack(), l.termEchoStack()}
		cfg.Traffic = int(o.Traffic)
		name, target, limit = fmt.Sprintf("after %s each way", sizeString(o.Traffic)), "≤ 32 KiB", 32
	}
	front, back, opened := series{}, series{}, series{}
	err := rounds(ctx, o.Runs, stacks, log, func(run int, s stack) error {
		if err := s.restart(ctx); err != nil {
			return err
		}
		res, err := runIdle(ctx, withSources(s.Target, 4), s.groups(), cfg)
		if err != nil {
			return err
		}
		if res.Opened < n/100*99 {
			return fmt.Errorf("only %d of %d connections opened: %s", res.Opened, n, res.FirstError)
		}
		front.add(s.Name, res.PerConnKiB(0))
		back.add(s.Name, res.PerConnKiB(1))
		opened.add(s.Name, float64(res.Alive))
		settled := ""
		if !res.Settled {
			settled = " (RSS not settled)"
		}
		fmt.Fprintf(log, "idle %s run %d %-18s front end %5.1f KiB, backend %5.1f KiB per connection; %d of %d open, opened in %.1fs%s\n",
			name, run+1, s.Name, res.PerConnKiB(0), res.PerConnKiB(1), res.Alive, n, res.OpenTime.Seconds(), settled)
		return nil
	})
	if err != nil {
		return nil, err
	}
	figureName := fmt.Sprintf("RSS of the front end per idle proxied IMAP connection, %d connections, %s", n, name)
	if traffic {
		figureName = fmt.Sprintf("same, after each connection carried %s each way, then went idle (bench backend echo)", sizeString(o.Traffic))
	}
	rows := []row{{Figure: figureName, Unit: "KiB", Prec: 1, Edge: front[stackEdge], BaseName: stackTerm, Base: front[stackTerm],
		Target: target, Check: edgeAtMost(limit)}}
	for _, s := range stacks {
		rows = append(rows,
			detail(fmt.Sprintf("idle %s: front end RSS per connection, %s", name, s.Name), "KiB", 1, front[s.Name]),
			detail(fmt.Sprintf("idle %s: backend RSS per connection behind %s (%s)", name, s.Name, s.Back[0].Name), "KiB", 1, back[s.Name]),
			detail(fmt.Sprintf("idle %s: connections still open when measured, %s", name, s.Name), "", 0, opened[s.Name]))
	}
	return rows, nil
}

func figureBulk(ctx context.Context, l *lab, o *figureOptions, log io.Writer) ([]row, error) {
	stacks := []stack{l.edgeEchoStack(), l.termEchoStack()}
	var rows []row
	for _, dir := range []bulkDirection{bulkBoth, bulkUp, bulkDown} {
		for _, conns := range []int{1, 8} {
			cpu, mbps := series{}, series{}
			cfg := bulkConfig{Conns: conns, Bytes: o.BulkBytes, Direction: dir, Timeout: 10 * time.Minute}
			err := rounds(ctx, o.Runs, stacks, log, func(run int, s stack) error {
				res, err := runBulk(ctx, s.Target, s.groups(), cfg)
				if err != nil {
					return err
				}
				cpu.add(s.Name, res.CPUPerGB(0))
				mbps.add(s.Name, res.MBps())
				fmt.Fprintf(log, "bulk %s %d conn run %d %-18s %5.2f CPU-s/GB front end, %6.1f MB/s, %s\n", dir, conns, run+1, s.Name, res.CPUPerGB(0), res.MBps(), res.Cipher)
				return nil
			})
			if err != nil {
				return nil, err
			}
			label := map[bulkDirection]string{bulkBoth: "both ways at once", bulkUp: "one way, client to backend", bulkDown: "one way, backend to client"}[dir]
			rows = append(rows, row{Figure: fmt.Sprintf("CPU per GB proxied, %s, %d connection(s), front end", label, conns), Unit: "CPU-s/GB", Prec: 2,
				Edge: cpu[stackEdge], BaseName: stackTerm, Base: cpu[stackTerm], Target: "≤ 0.85x", Check: ratioAtMost(0.85)})
			for _, s := range stacks {
				rows = append(rows, detail(fmt.Sprintf("bulk %s, %d connection(s): throughput, %s", dir, conns, s.Name), "MB/s", 0, mbps[s.Name]))
			}
		}
	}
	return rows, nil
}

func figureStorm(ctx context.Context, l *lab, o *figureOptions, log io.Writer) ([]row, error) {
	n := l.capConns(o.StormN, log)
	rows, err := stormRows(ctx, l, o, log, n, true)
	if err != nil || !o.StormFresh {
		return rows, err
	}
	fresh, err := stormRows(ctx, l, o, log, n, false)
	return append(rows, fresh...), err
}

// stormRows runs the storm on the edge with ECH and on nginx termination.
// afterRestart: every client first connects once (collecting a ticket), the
// front end restarts, then the storm comes, resuming where the server lets
// it. Otherwise the storm meets freshly started processes with full
// handshakes.
func stormRows(ctx context.Context, l *lab, o *figureOptions, log io.Writer, n int, afterRestart bool) ([]row, error) {
	// The edge without ECH is there for reference: the load generator
	// shares the cores, and its own ECH work slows the edge's storm too.
	stacks := []stack{l.edgeStack(true), l.termStack(), l.edgeStack(false)}
	last, peak, errs, resumed := series{}, series{}, series{}, series{}
	name := "after a restart"
	if !afterRestart {
		name = "full handshakes"
	}
	err := rounds(ctx, o.Runs, stacks, log, func(run int, s stack) error {
		if err := s.restart(ctx); err != nil {
			return err
		}
		cfg := stormConfig{N: n, Window: o.StormWindow, Concurrency: o.Concurrency, PrepareHellos: o.StormPrepareHellos, Timeout: time.Minute, Sample: 20 * time.Millisecond}
		if afterRestart {
			cfg.Tickets, cfg.Restart = true, s.restartFront
		}
		res, err := runStorm(ctx, withSources(s.Target, 4), s.groups(), cfg)
		if err != nil {
			return err
		}
		if res.TicketErrors > 0 {
			return fmt.Errorf("collecting tickets: %d of %d connections failed", res.TicketErrors, n)
		}
		last.add(s.Name, res.LastServed.Seconds())
		peak.add(s.Name, float64(res.PeakRSSKiB[0])/1024)
		errs.add(s.Name, float64(res.Errors))
		resumed.add(s.Name, 100*float64(res.Resumed)/float64(max(1, res.Served)))
		fmt.Fprintf(log, "storm %s run %d %-18s served %d of %d, errors %d, last served %.2fs, p99 %v, front end peak RSS %.0f MiB, resumed %d\n",
			name, run+1, s.Name, res.Served, n, res.Errors, res.LastServed.Seconds(), res.P99.Round(time.Millisecond), float64(res.PeakRSSKiB[0])/1024, res.Resumed)
		if res.FirstError != "" {
			fmt.Fprintf(log, "  first error: %s\n", res.FirstError)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	edgeErrs, edgePeak := summarize(errs[stackEdge]), summarize(peak[stackEdge])
	check := func(_, ratio summary) bool {
		return ratio.Median <= 1.0 && edgeErrs.Max == 0 && edgePeak.Max < 1024
	}
	target := "all served, 0 errors, edge RSS < 1 GiB, time ≤ 1.0x"
	figureName := fmt.Sprintf("reconnect storm after a restart: %d clients within %v, time until the last is served (edge with ECH resuming; nginx with a persistent ticket key)", n, o.StormWindow)
	if !afterRestart {
		figureName = fmt.Sprintf("reconnect storm with full handshakes (no tickets): %d clients within %v, time until the last is served", n, o.StormWindow)
	}
	rows := []row{{Figure: figureName, Unit: "s", Prec: 2, Edge: last[stackEdge], BaseName: stackTerm, Base: last[stackTerm], Target: target, Check: check}}
	for _, s := range stacks {
		rows = append(rows,
			detail(fmt.Sprintf("storm %s: time until the last is served, %s", name, s.Name), "s", 2, last[s.Name]),
			detail(fmt.Sprintf("storm %s: peak RSS of the front end, %s", name, s.Name), "MiB", 0, peak[s.Name]),
			detail(fmt.Sprintf("storm %s: clients not served, %s", name, s.Name), "", 0, errs[s.Name]),
			detail(fmt.Sprintf("storm %s: share of clients resumed, %s", name, s.Name), "%", 0, resumed[s.Name]))
	}
	return rows, nil
}

// figureResume: each client connects once (collecting a ticket), then
// resumes (measured), then the front end restarts and each resumes again.
// chatmail today is there for reference: its Dovecot's imap-login processes
// each have their own ticket key.
func figureResume(ctx context.Context, l *lab, o *figureOptions, log io.Writer) ([]row, error) {
	stacks := []stack{l.edgeStack(true), l.termStack(), l.todayStack()}
	cpu, before, after, echOK := series{}, series{}, series{}, series{}
	err := rounds(ctx, o.Runs, stacks, log, func(run int, s stack) error {
		cfg := handshakeConfig{N: o.HandshakeN, Concurrency: o.Concurrency, Resume: true, Timeout: time.Minute}
		cfg.Caches = newSessionCaches(cfg.N)
		res, err := runHandshakes(ctx, s.Target, s.groups(), cfg)
		if err != nil {
			return err
		}
		if err := s.restartFront(ctx); err != nil {
			return err
		}
		again := connectPass(ctx, s.Target, cfg.N, cfg.Concurrency, cfg.Caches, cfg.Timeout)
		if res.Errors+again.Errors > 0 {
			return fmt.Errorf("%d connections failed: %s %s", res.Errors+again.Errors, res.FirstError, again.FirstError)
		}
		cpu.add(s.Name, res.CPUPerConn())
		before.add(s.Name, 100*float64(res.Resumed)/float64(cfg.N))
		after.add(s.Name, 100*float64(again.Resumed)/float64(cfg.N))
		ech := 100.0
		if s.Target.ECH != nil {
			ech = 100 * float64(res.ECHAccepted+again.ECHAccepted) / float64(2*cfg.N)
		}
		echOK.add(s.Name, ech)
		fmt.Fprintf(log, "resume run %d %-18s %6.1f µs/connection resumed; resumed %d, after a restart %d of %d\n",
			run+1, s.Name, res.CPUPerConn(), res.Resumed, again.Resumed, cfg.N)
		return nil
	})
	if err != nil {
		return nil, err
	}
	edgeBefore, edgeAfter, edgeECH := summarize(before[stackEdge]), summarize(after[stackEdge]), summarize(echOK[stackEdge])
	rows := []row{
		{Figure: fmt.Sprintf("CPU per IMAP connection resuming a session, all processes (%d connections a run; edge with ECH, nginx without)", o.HandshakeN), Unit: "µs", Prec: 0,
			Edge: cpu[stackEdge], BaseName: stackTerm, Base: cpu[stackTerm]},
		{Figure: "resumed handshakes with ECH: share of clients resumed after a restart of the front end", Unit: "%", Prec: 0,
			Edge: after[stackEdge], BaseName: stackTerm, Base: after[stackTerm], Target: "accepted; resumption works after an edge restart",
			Check: func(_, _ summary) bool { return edgeBefore.Min == 100 && edgeAfter.Min == 100 && edgeECH.Min == 100 }},
	}
	for _, s := range stacks {
		rows = append(rows,
			detail("resume: CPU per connection offering a ticket, all processes, "+s.Name, "µs", 0, cpu[s.Name]),
			detail("resume: share of clients resumed before the restart, "+s.Name, "%", 0, before[s.Name]),
			detail("resume: share of clients resumed after restarting the front end, "+s.Name, "%", 0, after[s.Name]))
	}
	rows = append(rows, detail("resume: share of edge connections with ECH accepted", "%", 0, echOK[stackEdge]))
	return rows, nil
}

// capConns lowers n to what one front-end process can hold here, and says so.
func (l *lab) capConns(n int, log io.Writer) int {
	if m := l.maxProxiedConns(); n > m {
		fmt.Fprintf(log, "note: the open-file limit is %d and cannot be raised here (`ulimit -Hn`); a proxy needs two descriptors per connection, so %d connections instead of %d\n", l.fileLimit, m, n)
		return m
	}
	return n
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
