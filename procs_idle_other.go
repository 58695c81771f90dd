//go:build !linux

package main

import (
	"errors"
	"time"
)

// idleClock would read the machine's idle time from /proc/stat, which only
// Linux has; elsewhere the governor does not ask for idle cores.
type idleClock struct{}

func openIdleClock() (*idleClock, error) {
	return nil, errors.New("the machine's idle time is not available on this system")
}

func (c *idleClock) read() (time.Duration, error) {
	return 0, errors.New("the machine's idle time is not available on this system")
}

func (c *idleClock) close() {}
