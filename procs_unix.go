//go:build unix

package main

import (
	"fmt"
	"syscall"
	"time"
)

// processCPUTime is the CPU time (user and system) of all of the process's
// threads so far.
func processCPUTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("read the process's CPU time: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
