package main

import (
	"math"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want summary
	}{
		{[]float64{5, 1, 3}, summary{Median: 3, Min: 1, Max: 5, N: 3}},
		{[]float64{4, 1, 3, 2}, summary{Median: 2.5, Min: 1, Max: 4, N: 4}},
		{[]float64{7, math.NaN()}, summary{Median: 7, Min: 7, Max: 7, N: 1}},
	} {
		if got := summarize(c.in); got != c.want {
			t.Errorf("summarize(%v) = %+v, want %+v", c.in, got, c.want)
		}
	}
	if s := summarize(nil); s.N != 0 || !math.IsNaN(s.Median) || s.format(1) != "n/a" {
		t.Errorf("summarize(nil) = %+v", s)
	}
}

func TestRatiosArePerRun(t *testing.T) {
	// Run 2 was slow for both; per-run ratios do not see it.
	got := ratios([]float64{10, 20, 11}, []float64{10, 20, 0})
	if got[0] != 1 || got[1] != 1 || !math.IsNaN(got[2]) {
		t.Errorf("ratios = %v", got)
	}
	if s := summarize(got); s.Median != 1 || s.N != 2 {
		t.Errorf("summary of ratios = %+v", s)
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if p := percentile(xs, 50); p != 5 {
		t.Errorf("p50 = %v", p)
	}
	if p := percentile(xs, 99); p != 10 {
		t.Errorf("p99 = %v", p)
	}
	if !math.IsNaN(percentile(nil, 50)) {
		t.Error("percentile of nothing is a number")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "64KiB": 64 << 10, "512 MiB": 512 << 20, "2GiB": 2 << 30, "1MB": 1e6, "10B": 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "KiB", "-1", "1.5MiB", "ten"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

func TestTableMarksTargets(t *testing.T) {
	rows := []row{
		{Figure: "cpu", Unit: "µs", Edge: []float64{90, 80, 100}, BaseName: "nginx", Base: []float64{100, 100, 100}, Target: "≤ 0.85x", Check: ratioAtMost(0.85)},
		{Figure: "rss", Unit: "KiB", Prec: 1, Edge: []float64{20, 30, 25}, BaseName: "nginx", Base: []float64{37, 37, 37}, Target: "≤ 24 KiB", Check: edgeAtMost(24)},
		detail("a detail", "/s", 0, []float64{1, 2, 3}),
	}
	var b strings.Builder
	printTable(&b, rows)
	out := b.String()
	for _, want := range []string{
		"| cpu | 90 [80–100] µs | nginx: 100 [100–100] µs | 0.90 [0.80–1.00]x | ≤ 0.85x | no |",
		"| rss | 25.0 [20.0–30.0] KiB | nginx: 37.0 [37.0–37.0] KiB | 0.68 [0.54–0.81]x | ≤ 24 KiB | no |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "a detail") {
		t.Error("a detail row is in the main table")
	}
	b.Reset()
	printDetails(&b, rows)
	if !strings.Contains(b.String(), "| a detail | 2 [1–3] /s |") {
		t.Errorf("details:\n%s", b.String())
	}
}
