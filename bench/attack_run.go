package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// attackStack is a stack under attack: its processes, the legitimate
// client's way in on each port, and how its front end is upgraded.
type attackStack struct {
	stack
	Ports []attackPort
	// Upgrade upgrades (or restarts) the front end and returns once it
	// accepts connections on every port again.
	Upgrade func(context.Context) error
}

// attackPort is one port of a stack: the legitimate client's target (ALPN
// imap on 443, none on 993, as Delta Chat; ECH where the stack has it),
// from the legitimate client's address.
type attackPort struct {
	Label  string // "443", "993"
	Client *target
}

// attackRun is what one attack against one stack measured.
type attackRun struct {
	Probes         []probeStats // per port of the stack
	Attacker       attackerCounts
	ServerClosed   int
	HeldMedian     time.Duration // how long the server held the connections it closed
	ToolCPU        time.Duration // the load tool's own CPU during the attack: the attacker's cost
	Window         time.Duration // from the attack's start until it let go
	ToolPeakRSSKiB uint64
	UpgradeErr     string
}

// probeOutcome is one connection of the legitimate client.
type probeOutcome struct {
	Latency time.Duration // connect to greeting
	Err     error
}

// probeStats sum up the legitimate client's connections on one port.
type probeStats struct {
	N, Failures   int
	P50, P90, Max time.Duration // of the successful ones
	FirstError    string
}

func summarizeProbes(outs []probeOutcome) probeStats {
	s := probeStats{N: len(outs)}
	var ok []float64
	for _, o := range outs {
		if o.Err != nil {
			if s.Failures == 0 {
				s.FirstError = o.Err.Error()
			}
			s.Failures++
			continue
		}
		ok = append(ok, float64(o.Latency))
	}
	slices.Sort(ok)
	if len(ok) > 0 {
		s.P50, s.P90, s.Max = time.Duration(percentile(ok, 50)), time.Duration(percentile(ok, 90)), time.Duration(ok[len(ok)-1])
	}
	return s
}

// probeTimes are the starts of the legitimate client's connections: from
// from on, rate per second, before until.
func probeTimes(from, until time.Time, rate float64) []time.Time {
	var out []time.Time
	for k := 0; ; k++ {
		at := from.Add(time.Duration(float64(k) / rate * float64(time.Second)))
		if !at.Before(until) {
			return out
		}
		out = append(out, at)
	}
}

// probe is one connection of the legitimate client: connect, TLS (with ECH
// if t has it), the IMAP greeting, close.
func probe(ctx context.Context, t *target, timeout time.Duration) probeOutcome {
	start := time.Now()
	conn, info, err := t.dial(ctx, 0, nil, start.Add(timeout))
	if err != nil {
		return probeOutcome{Err: err}
	}
	latency := time.Since(start)
	conn.Close()
	if !strings.HasPrefix(info.Greeting, "* OK") {
		return probeOutcome{Err: fmt.Errorf("greeting from %s: %q, want * OK", t.Addr, info.Greeting)}
	}
	return probeOutcome{Latency: latency}
}

// runProbes starts a connection at each of times, each on its own (a slow
// one does not delay the next: the client does not wait in line behind
// itself), and waits for all.
func runProbes(ctx context.Context, t *target, times []time.Time, timeout time.Duration) []probeOutcome {
	outs := make([]probeOutcome, len(times))
	var wg sync.WaitGroup
	for i, at := range times {
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(at)):
		}
		if ctx.Err() != nil {
			outs = outs[:i]
			break
		}
		wg.Go(func() { outs[i] = probe(ctx, t, timeout) })
	}
	wg.Wait()
	return outs
}

// attackTargets are the stack's ports as the attack sees them.
func attackTargets(s attackStack, o *attackOptions) (raw, storm []*target) {
	attackers, stormers := prefixAddrs(o.AttackerNet, 1<<16), prefixAddrs(o.StormNet, 1<<16)
	for _, p := range s.Ports {
		if !slices.Contains(o.AttackPorts, p.Label) {
			continue
		}
		r := withSourceAddrs(p.Client, attackers)
		r.ECH = nil
		raw = append(raw, r)
		storm = append(storm, withSourceAddrs(p.Client, stormers))
	}
	return raw, storm
}

// runAttack runs a against s: the attacker from its start, the
// legitimate client on every port from the warm-up on, both until the
// attack's duration is over; then the attacker lets go and the client's
// last connections finish.
func runAttack(ctx context.Context, a attack, s attackStack, o *attackOptions) (attackRun, error) {
	var res attackRun
	for _, p := range s.Ports {
		if out := probe(ctx, p.Client, o.ClientTimeout); out.Err != nil {
			return res, fmt.Errorf("before the attack, port %s: %w", p.Label, out.Err)
		}
	}
	env := &attackEnv{o: o}
	env.raw, env.storm = attackTargets(s, o)
	if len(env.raw) == 0 {
		return res, fmt.Errorf("%s has none of the attacked ports %v", s.Name, o.AttackPorts)
	}
	var err error
	if env.hello, err = captureClientHello(env.raw[0]); err != nil {
		return res, err
	}

	start := time.Now()
	env.pool = newAttackConns(start)
	cpuBefore := selfCPU()
	attackCtx, stop := context.WithDeadline(ctx, start.Add(o.Duration))
	defer stop()
	var attacker, helpers sync.WaitGroup
	attacker.Go(func() { a.run(attackCtx, env) })
	helpers.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			res.ToolPeakRSSKiB = max(res.ToolPeakRSSKiB, selfRSSKiB())
			select {
			case <-attackCtx.Done():
				return
			case <-tick.C:
			}
		}
	})
	if a.Name == "upgrade" && s.Upgrade != nil {
		helpers.Go(func() {
			select {
			case <-attackCtx.Done():
				return
			case <-time.After(time.Until(start.Add(o.UpgradeAt))):
			}
			env.pool.upgradeBegins()
			if err := s.Upgrade(ctx); err != nil {
				res.UpgradeErr = err.Error()
			}
		})
	}
	outs := make([][]probeOutcome, len(s.Ports))
	var clients sync.WaitGroup
	for i, p := range s.Ports {
		// The ports take turns, so their connections do not start together.
		from := start.Add(o.Warmup + time.Duration(float64(i)/float64(len(s.Ports))/o.ClientRate*float64(time.Second)))
		times := probeTimes(from, start.Add(o.Duration), o.ClientRate)
		clients.Go(func() { outs[i] = runProbes(ctx, p.Client, times, o.ClientTimeout) })
	}

	<-attackCtx.Done()
	attacker.Wait()
	counts, closes := env.pool.end()
	res.ToolCPU, res.Window = selfCPU()-cpuBefore, time.Since(start)
	helpers.Wait()
	clients.Wait()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	res.Attacker, res.ServerClosed, res.HeldMedian = counts, len(closes), medianHeld(closes)
	for _, o := range outs {
		res.Probes = append(res.Probes, summarizeProbes(o))
	}
	return res, nil
}
