//go:build !unix

package main

import (
	"errors"
	"time"
)

func processCPUTime() (time.Duration, error) {
	return 0, errors.New("the process's CPU time is not available on this system")
}
