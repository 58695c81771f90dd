package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// attackResults are the runs of every attack against every stack:
// attack name, then stack name.
type attackResults map[string]map[string][]attackRun

func (r attackResults) add(attack, stack string, run attackRun) {
	if r[attack] == nil {
		r[attack] = map[string][]attackRun{}
	}
	r[attack][stack] = append(r[attack][stack], run)
}

// values is one number per run.
func (r attackResults) values(attack, stack string, f func(attackRun) float64) []float64 {
	var out []float64
	for _, run := range r[attack][stack] {
		out = append(out, f(run))
	}
	return out
}

// A port's latency in ms; NaN for a run in which no connection succeeded
// (a p90 of 0 would look like the best run).
func latencyMillis(port int, pick func(probeStats) time.Duration) func(attackRun) float64 {
	return func(run attackRun) float64 {
		p := run.Probes[port]
		if p.N == p.Failures {
			return math.NaN()
		}
		return float64(pick(p)) / float64(time.Millisecond)
	}
}

func p50Of(p probeStats) time.Duration { return p.P50 }
func p90Of(p probeStats) time.Duration { return p.P90 }
func maxOf(p probeStats) time.Duration { return p.Max }

func failuresOf(port int) func(attackRun) float64 {
	return func(run attackRun) float64 { return float64(run.Probes[port].Failures) }
}

// attackerFigures are the attack's own counts, as rows of the details.
var attackerFigures = []struct {
	what, unit string
	prec       int
	value      func(attackRun) float64
}{
	{"attacker connections attempted", "", 0, func(r attackRun) float64 { return float64(r.Attacker.Started) }},
	{"attacker connections that failed (connect; for sessions TLS or greeting)", "", 0, func(r attackRun) float64 { return float64(r.Attacker.Failed) }},
	{"attacker connections held at most at once", "", 0, func(r attackRun) float64 { return float64(r.Attacker.PeakOpen) }},
	{"attacker connections closed by the server", "", 0, func(r attackRun) float64 { return float64(r.ServerClosed) }},
	{"time the server held the ones it closed, median", "s", 1, func(r attackRun) float64 { return r.HeldMedian.Seconds() }},
	{"attacker connections the server sent bytes on", "", 0, func(r attackRun) float64 { return float64(r.Attacker.GotBytes) }},
	{"attacker connections still open at the end", "", 0, func(r attackRun) float64 { return float64(r.Attacker.OpenAtEnd) }},
	{"attempts still unanswered at the end (connect or TLS)", "", 0, func(r attackRun) float64 { return float64(r.Attacker.CutOff) }},
	{"load tool CPU (the attacker's cost), share of one core", "%", 1, toolCPUPercent},
	{"load tool peak RSS", "MiB", 0, func(r attackRun) float64 { return float64(r.ToolPeakRSSKiB) / 1024 }},
}

// upgradeFigures are added for the upgrade attack.
var upgradeFigures = []struct {
	what  string
	value func(attackRun) float64
}{
	{"storm sessions held when the upgrade began", func(r attackRun) float64 { return float64(r.Attacker.HeldAtUpgrade) }},
	{"sessions the server closed after the upgrade began", func(r attackRun) float64 { return float64(r.Attacker.DroppedAfterUpgrade) }},
}

func toolCPUPercent(r attackRun) float64 {
	if r.Window <= 0 {
		return math.NaN()
	}
	return 100 * r.ToolCPU.Seconds() / r.Window.Seconds()
}

const attackTarget = "p90 ≤ 1 s in every run, 0 failures"

// rows are the table's rows: per attack and port the legitimate client's
// p90 on the edge against chatmail today, with the target of issue 16;
// everything else as details (for -json).
func (r attackResults) rows(chosen []attack, stacks map[string]attackStack) []row {
	var main, details []row
	for _, a := range chosen {
		target, mostDropped := attackTarget, 0.0
		if a.Name == "upgrade" {
			// Issue 16: an upgrade drops no established session either.
			target, mostDropped = attackTarget+", no session dropped", summarize(r.values(a.Name, stackEdge, upgradeFigures[1].value)).Max
		}
		for i, p := range stacks[stackEdge].Ports {
			fails := summarize(r.values(a.Name, stackEdge, failuresOf(i)))
			main = append(main, row{
				Figure: fmt.Sprintf("%s: legitimate client from another address, time to IMAP greeting on %s, p90 (edge with ECH; chatmail today without)", a.Name, p.Label),
				Unit:   "ms", Edge: r.values(a.Name, stackEdge, latencyMillis(i, p90Of)),
				BaseName: stackToday, Base: r.values(a.Name, stackToday, latencyMillis(i, p90Of)),
				Target: target,
				Check:  func(edge, _ summary) bool { return edge.Max <= 1000 && fails.Max == 0 && mostDropped == 0 },
			})
		}
		for _, s := range stackList(stacks) {
			for i, p := range stacks[s.Name].Ports {
				for _, m := range []struct {
					what string
					f    func(attackRun) float64
					unit string
				}{
					{"p50", latencyMillis(i, p50Of), "ms"}, {"p90", latencyMillis(i, p90Of), "ms"}, {"max", latencyMillis(i, maxOf), "ms"},
					{"failures", failuresOf(i), ""}, {"connections", func(run attackRun) float64 { return float64(run.Probes[i].N) }, ""},
				} {
					details = append(details, detail(fmt.Sprintf("%s: legitimate client on %s, %s, %s", a.Name, p.Label, m.what, s.Name), m.unit, 0, r.values(a.Name, s.Name, m.f)))
				}
			}
			for _, f := range attackerFigures {
				details = append(details, detail(fmt.Sprintf("%s: %s, %s", a.Name, f.what, s.Name), f.unit, f.prec, r.values(a.Name, s.Name, f.value)))
			}
			if a.Name == "upgrade" {
				for _, f := range upgradeFigures {
					details = append(details, detail(fmt.Sprintf("%s: %s, %s", a.Name, f.what, s.Name), "", 0, r.values(a.Name, s.Name, f.value)))
				}
			}
		}
	}
	return append(main, details...)
}

// printClients writes the legitimate client's figures side by side: per
// attack and port, p50, p90 and max (medians of the runs [min–max]) and
// the failures of all runs together.
func (r attackResults) printClients(w io.Writer, chosen []attack, stacks map[string]attackStack) {
	order := stackList(stacks)
	head := []string{"attack", "port"}
	for _, s := range order {
		head = append(head, s.Name+" p50", "p90", "max", "failures")
	}
	printRow(w, head)
	printRow(w, strings.Split(strings.Repeat("---,", len(head)-1)+"---", ","))
	for _, a := range chosen {
		for i, p := range stacks[stackEdge].Ports {
			cells := []string{a.Name, p.Label}
			for _, s := range order {
				for _, pick := range []func(probeStats) time.Duration{p50Of, p90Of, maxOf} {
					cells = append(cells, withUnit(summarize(r.values(a.Name, s.Name, latencyMillis(i, pick))), 0, "ms"))
				}
				failed, n := 0, 0
				for _, run := range r[a.Name][s.Name] {
					failed, n = failed+run.Probes[i].Failures, n+run.Probes[i].N
				}
				cells = append(cells, fmt.Sprintf("%d of %d", failed, n))
			}
			printRow(w, cells)
		}
	}
}

// printAttackers writes the attacks' own counts per stack (medians of the
// runs [min–max]).
func (r attackResults) printAttackers(w io.Writer, chosen []attack, stacks map[string]attackStack) {
	head := []string{"attack", "stack"}
	for _, f := range attackerFigures {
		head = append(head, f.what)
	}
	upgrade := false
	for _, a := range chosen {
		upgrade = upgrade || a.Name == "upgrade"
	}
	if upgrade {
		for _, f := range upgradeFigures {
			head = append(head, f.what)
		}
	}
	printRow(w, head)
	printRow(w, strings.Split(strings.Repeat("---,", len(head)-1)+"---", ","))
	for _, a := range chosen {
		for _, s := range stackList(stacks) {
			cells := []string{a.Name, s.Name}
			for _, f := range attackerFigures {
				cells = append(cells, withUnit(summarize(r.values(a.Name, s.Name, f.value)), f.prec, f.unit))
			}
			if upgrade {
				for _, f := range upgradeFigures {
					cell := "-"
					if a.Name == "upgrade" {
						cell = summarize(r.values(a.Name, s.Name, f.value)).format(0)
					}
					cells = append(cells, cell)
				}
			}
			printRow(w, cells)
		}
	}
}

func printRow(w io.Writer, cells []string) {
	for i, c := range cells {
		cells[i] = cell(c)
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(cells, " | "))
}

// summaryLine is one run in a line, for the progress log.
func (run attackRun) summaryLine(s attackStack) string {
	var b strings.Builder
	for i, p := range s.Ports {
		st := run.Probes[i]
		fmt.Fprintf(&b, "%s: p50 %v p90 %v max %v, %d of %d failed; ", p.Label, st.P50.Round(time.Millisecond), st.P90.Round(time.Millisecond), st.Max.Round(time.Millisecond), st.Failures, st.N)
	}
	a := run.Attacker
	fmt.Fprintf(&b, "attacker: %d attempted, %d failed, %d at most open, %d closed by the server (held %.1fs median), %d got bytes, %d open and %d unanswered at the end; load tool CPU %.1f%% of a core, RSS %d MiB",
		a.Started, a.Failed, a.PeakOpen, run.ServerClosed, run.HeldMedian.Seconds(), a.GotBytes, a.OpenAtEnd, a.CutOff, toolCPUPercent(run), run.ToolPeakRSSKiB/1024)
	if a.HeldAtUpgrade > 0 || run.UpgradeErr != "" {
		fmt.Fprintf(&b, "; %d held when the upgrade began, %d closed by the server after it", a.HeldAtUpgrade, a.DroppedAfterUpgrade)
	}
	if run.UpgradeErr != "" {
		fmt.Fprintf(&b, "; upgrade failed: %s", run.UpgradeErr)
	}
	for i, p := range s.Ports {
		if e := run.Probes[i].FirstError; e != "" {
			fmt.Fprintf(&b, "\n  first failure on %s: %s", p.Label, e)
		}
	}
	if a.FirstFailure != "" {
		fmt.Fprintf(&b, "\n  attacker's first failure: %s", a.FirstFailure)
	}
	return b.String()
}
