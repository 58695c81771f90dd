package runtimetune

import "testing"

func TestProcessorsFor(t *testing.T) {
	for cpus, want := range map[int]int{1: 1, 2: 1, 3: 1, 4: 2, 8: 4, 64: 32} {
		if got := ProcessorsFor(cpus); got != want {
			t.Errorf("ProcessorsFor(%d) = %d, want %d", cpus, got, want)
		}
	}
}
