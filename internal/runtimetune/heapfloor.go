package runtimetune

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"go.uber.org/zap"
)

// The garbage collector's heap floor.
//
// With GOGC=100 the collector runs whenever the heap has grown by as much as
// is live. An edge that holds few connections has a live heap of a few MiB,
// so during a burst of handshakes (crypto/tls allocates some tens of KiB per
// handshake) it collected every few dozen connections, and on a small VPS
// each cycle wakes threads on every core: the floor saved about 12 % of the
// edge's CPU per new connection in the handshake figure (docs/BENCHMARKS.md). Go has no
// minimum heap setting, so the edge sets GOGC itself: high while the live
// heap is small, so that the next collection comes at heapFloor, and plain
// 100 once twice the live heap is more than that, where a relay with 10,000
// idle connections is: their memory then grows exactly as before.
const (
	heapFloor       = 64 << 20
	gcFloorInterval = time.Second
)

// gcPercentFor is the GOGC that puts the next collection of a heap with
// live bytes live at heapFloor, and never below 100.
//
// The runtime's goal is the larger of live×(1+GOGC/100) and a minimum heap
// of 4 MiB×GOGC/100 (runtime/mgcpacer.go, defaultHeapMinimum), which alone
// decides before the first collection and while less than 4 MiB is live.
// So GOGC stays at or under maxFloorPercent, which puts that minimum at
// the floor: a higher GOGC would move the first collection of a fresh edge
// to 4 MiB×63 = 252 MiB.
func gcPercentFor(live uint64) int {
	if live == 0 {
		live = 1 << 20
	}
	if 2*live >= heapFloor {
		return 100
	}
	p := int(((heapFloor-live)*100 + live - 1) / live) // rounded up: not below the floor
	return min(p, maxFloorPercent)
}

// maxFloorPercent is the GOGC whose minimum heap is heapFloor.
const maxFloorPercent = heapFloor / (4 << 20) * 100

// KeepHeapFloor adjusts GOGC once a second until ctx ends. An operator's own
// GOGC or GOMEMLIMIT in the environment wins: then it does nothing.
func KeepHeapFloor(ctx context.Context, log *zap.Logger) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		log.Info("GOGC or GOMEMLIMIT set; leaving the garbage collector as configured")
		return
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	current := -1
	t := time.NewTicker(gcFloorInterval)
	defer t.Stop()
	for {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			if p := gcPercentFor(sample[0].Value.Uint64()); p != current {
				debug.SetGCPercent(p)
				current = p
			}
		}
		select {
		case <-ctx.Done():
			debug.SetGCPercent(100)
			return
		case <-t.C:
		}
	}
}
