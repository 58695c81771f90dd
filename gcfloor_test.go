package main

import "testing"

func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 6300},        // unknown yet: as if 1 MiB were live
		{1 << 20, 6300},  // 1 MiB live: next collection at 64 MiB
		{16 << 20, 300},  // 16 MiB live: 64 MiB
		{31 << 20, 107},  // just under half the floor
		{32 << 20, 100},  // twice the live heap reaches the floor: plain GOGC
		{600 << 20, 100}, // a large relay: untouched
	} {
		if got := gcPercentFor(c.live); got != c.want {
			t.Errorf("gcPercentFor(%d MiB) = %d, want %d", c.live>>20, got, c.want)
		}
		if target := c.live + c.live*uint64(gcPercentFor(c.live))/100; c.live > 0 && target < heapFloor && c.live < heapFloor/2 {
			t.Errorf("live %d MiB: next collection at %d MiB, below the floor", c.live>>20, target>>20)
		}
	}
}
