//go:build !(darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd)

package ech

import (
	"errors"
	"time"
)

// lockECHDir needs flock(2); chatmail-edge runs on Linux. Without it, key
// changes are refused rather than done unserialised.
func lockECHDir(dir string, timeout time.Duration) (unlock func(), err error) {
	return nil, errors.New("lock ECH key directory: flock(2) is not available on this system")
}
