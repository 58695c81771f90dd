//go:build unix

package service

import (
	"math"
	"syscall"
)

// openFileLimit is the process's soft limit of open files (Go raises it to
// the hard limit at start), or no limit when it cannot be read.
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return math.MaxUint64
	}
	return uint64(rl.Cur)
}
