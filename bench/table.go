package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
)

// row is one line of the table of issue 7: the edge's value per run, the
// baseline's from the same runs, and the target. A row without a baseline
// is a detail, printed in the second table.
type row struct {
	Figure   string
	Unit     string
	Prec     int
	Edge     []float64
	BaseName string
	Base     []float64
	Target   string
	// Check says whether the target is met, from the edge's values and the
	// per-run ratios; nil for rows without a target.
	Check func(edge, ratio summary) bool
}

func detail(what, unit string, prec int, values []float64) row {
	return row{Figure: what, Unit: unit, Prec: prec, Edge: values}
}

func ratioAtMost(limit float64) func(edge, ratio summary) bool {
	return func(_, ratio summary) bool { return ratio.Median <= limit }
}

func edgeAtMost(limit float64) func(edge, ratio summary) bool {
	return func(edge, _ summary) bool { return edge.Median <= limit }
}

func withUnit(s summary, prec int, unit string) string {
	v := s.format(prec)
	if unit == "" || s.N == 0 {
		return v
	}
	return v + " " + unit
}

// verdict is "yes" or "no" for a row with a target, "-" without.
func (r row) verdict() string {
	if r.Check == nil {
		return "-"
	}
	edge, ratio := summarize(r.Edge), summarize(ratios(r.Edge, r.Base))
	if edge.N > 0 && !math.IsNaN(ratio.Median) && r.Check(edge, ratio) {
		return "yes"
	}
	return "no"
}

// printTable writes the figures as a Markdown table: figure | edge |
// baseline | ratio | target | met?
func printTable(w io.Writer, rows []row) {
	fmt.Fprintln(w, "| figure | edge median [min–max] | baseline median [min–max] | ratio edge/baseline median [min–max] | target | met? |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range rows {
		if r.BaseName == "" {
			continue
		}
		target := r.Target
		if target == "" {
			target = "-"
		}
		ratio := summarize(ratios(r.Edge, r.Base)).format(2)
		if ratio != "n/a" {
			ratio += "x"
		}
		fmt.Fprintf(w, "| %s | %s | %s: %s | %s | %s | %s |\n", cell(r.Figure), withUnit(summarize(r.Edge), r.Prec, r.Unit),
			r.BaseName, withUnit(summarize(r.Base), r.Prec, r.Unit), ratio, cell(target), r.verdict())
	}
}

// printDetails writes the rows without a baseline: what else was measured.
func printDetails(w io.Writer, rows []row) {
	fmt.Fprintln(w, "| measurement | median [min–max] |")
	fmt.Fprintln(w, "|---|---|")
	for _, r := range rows {
		if r.BaseName != "" {
			continue
		}
		fmt.Fprintf(w, "| %s | %s |\n", cell(r.Figure), withUnit(summarize(r.Edge), r.Prec, r.Unit))
	}
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// writeJSON saves every row with its values per run, for comparing runs
// later.
func writeJSON(file string, header string, rows []row) error {
	type jsonRow struct {
		Figure   string    `json:"figure"`
		Unit     string    `json:"unit"`
		Edge     []float64 `json:"edge"`
		Baseline string    `json:"baseline,omitempty"`
		Base     []float64 `json:"baseline_values,omitempty"`
		Ratios   []float64 `json:"ratios,omitempty"`
		Target   string    `json:"target,omitempty"`
		Met      string    `json:"met"`
	}
	out := struct {
		Header string    `json:"header"`
		Rows   []jsonRow `json:"rows"`
	}{Header: header}
	for _, r := range rows {
		jr := jsonRow{Figure: r.Figure, Unit: r.Unit, Edge: noNaN(r.Edge), Baseline: r.BaseName, Target: r.Target, Met: r.verdict()}
		if r.BaseName != "" {
			jr.Base, jr.Ratios = noNaN(r.Base), noNaN(ratios(r.Edge, r.Base))
		}
		out.Rows = append(out.Rows, jr)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(file, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// noNaN replaces NaN (a run without a value), which JSON cannot hold, by -1.
func noNaN(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x
		if math.IsNaN(x) {
			out[i] = -1
		}
	}
	return out
}
