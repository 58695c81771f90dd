//go:build linux && race

package edge

import "syscall"

// Under the race detector reads and writes go through package syscall,
// whose annotations tell it that a write to a socket happens before the
// read of those bytes (in tests, both ends often live in one process);
// rawIO would hide that.

func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}

func writeFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), p)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}
