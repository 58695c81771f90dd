//go:build linux && race

package netpoll

import "syscall"

// Under the race detector reads and writes go through package syscall,
// whose annotations tell it that a write to a socket happens before the
// read of those bytes (in tests, both ends often live in one process);
// rawIO would hide that, and the detector would report the data a client
// wrote and the edge read as a race. The production path cannot carry the
// annotations itself: syscall gets them from internal/race, and nothing
// public (runtime/race exports no acquire or release) offers them. So the
// -race build differs in these two functions only: everything around them,
// the non-blocking sockets, the poller and the parking, is the production
// code.

func Read(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}

func Write(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Write(int(fd), p)
		if err != syscall.EINTR {
			return max(n, 0), err
		}
	}
}
