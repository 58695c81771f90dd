package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseIdleTime(t *testing.T) {
	const stat = "cpu  871707 1406 566831 2698950 4972 0 114628 0 0 0\ncpu0 1 2 3 4 5 6 7 0 0 0\n"
	got, err := parseIdleTime([]byte(stat))
	if want := (2698950 + 4972) * time.Second / clockTicks; err != nil || got != want {
		t.Fatalf("idle %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{
		"cpu  871707 1406 566831 2698950 4972 0 114628", // cut short: no whole line
		"intr 1 2 3 4 5 6\n",
		"cpu  1 2 3\n",
		"cpu  1 2 3 x 5 6\n",
	} {
		if _, err := parseIdleTime([]byte(bad)); err == nil || !strings.Contains(err.Error(), "idle time") {
			t.Errorf("%q: error %v, want one about the idle time", bad, err)
		}
	}
}

// TestIdleClockRereads reads the kept-open /proc/stat several times: every
// reading starts from the top again, so the idle time never goes back.
func TestIdleClockRereads(t *testing.T) {
	c, err := openIdleClock()
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var last time.Duration
	for i := range 5 {
		idle, err := c.read()
		if err != nil {
			t.Fatalf("reading %d: %v", i, err)
		}
		if idle <= 0 || idle < last {
			t.Fatalf("reading %d: idle %v after %v", i, idle, last)
		}
		last = idle
	}
}
