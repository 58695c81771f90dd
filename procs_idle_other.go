//go:build !linux

package main

import (
	"errors"
	"time"
)

// machineIdleTime is read from /proc/stat, which only Linux has; elsewhere
// the governor does not ask for idle cores.
func machineIdleTime() (time.Duration, error) {
	return 0, errors.New("the machine's idle time is not available on this system")
}
