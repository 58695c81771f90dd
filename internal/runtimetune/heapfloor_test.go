package runtimetune

import "testing"

func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 1600},        // unknown yet: the minimum heap puts the collection at 64 MiB
		{1 << 20, 1600},  // 1 MiB live: the same
		{3 << 20, 1600},  // under 4 MiB live the minimum heap still decides
		{8 << 20, 700},   // 8 MiB live: 8×(1+7) = 64 MiB
		{16 << 20, 300},  // 16 MiB live: 64 MiB
		{31 << 20, 107},  // just under half the floor
		{32 << 20, 100},  // twice the live heap reaches the floor: plain GOGC
		{600 << 20, 100}, // a large relay: untouched
	} {
		if got := gcPercentFor(c.live); got != c.want {
			t.Errorf("gcPercentFor(%d MiB) = %d, want %d", c.live>>20, got, c.want)
		}
		// The runtime's goal: the larger of live×(1+GOGC/100) and its
		// minimum heap, 4 MiB×GOGC/100.
		p := uint64(gcPercentFor(c.live))
		goal := max(c.live+c.live*p/100, (4<<20)*p/100)
		if c.live < heapFloor/2 && (goal < heapFloor || goal > heapFloor+1<<20) {
			t.Errorf("live %d MiB: next collection at %d MiB, want the floor, %d MiB", c.live>>20, goal>>20, heapFloor>>20)
		}
	}
}
