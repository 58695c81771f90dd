//go:build darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd

package ech

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// lockECHDir takes an exclusive flock(2) on dir/.lock so that key changes from
// several processes (the server, an operator's "ech rotate") do not interleave.
// It gives up after timeout rather than hang on a stuck holder. The lock goes
// with the process, so a crash cannot leave it held.
func lockECHDir(dir string, timeout time.Duration) (unlock func(), err error) {
	path := filepath.Join(dir, echLockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil // closing the file releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			break
		}
		if time.Now().After(deadline) {
			err = fmt.Errorf("held by another process for more than %s", timeout)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.Close()
	return nil, fmt.Errorf("lock %s: %w", path, err)
}
