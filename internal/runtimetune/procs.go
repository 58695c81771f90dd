// Package runtimetune sets the Go runtime up for the edge: how many
// processors run its goroutines, decided once at the start, and the
// garbage collector's heap floor.
package runtimetune

import (
	"os"
	"runtime"

	"go.uber.org/zap"
)

// Processors sets GOMAXPROCS once, at the start, to half the machine's
// processors (at least one), unless GOMAXPROCS is set in the environment.
//
// The edge shares its machine with Dovecot, Postfix and the relay's other
// daemons, which do the mail's own work. Spread over every core, its
// goroutines wake each other across cores: on a 2-core VPS one processor
// cost 23-43 % less CPU per new connection than two (docs/BENCHMARKS.md,
// "one processor while that is enough"), and a reconnect storm, where every
// core is busy anyway, was served as fast. Half the cores keep that on
// larger machines and leave the rest to the daemons. It is never changed
// while running.
func Processors(log *zap.Logger) {
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		log.Info("GOMAXPROCS set in the environment", zap.String("GOMAXPROCS", v), zap.Int("procs", runtime.GOMAXPROCS(0)))
		return
	}
	cpus := runtime.GOMAXPROCS(0) // the runtime's default: the CPUs this process may use (affinity, cgroup limit)
	n := ProcessorsFor(cpus)
	runtime.GOMAXPROCS(n)
	log.Info("processors for goroutines", zap.Int("procs", n), zap.Int("cpus", cpus))
}

// ProcessorsFor is the GOMAXPROCS for cpus usable processors.
func ProcessorsFor(cpus int) int { return max(1, cpus/2) }
