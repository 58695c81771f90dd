//go:build linux && !race

package netpoll

import "golang.org/x/sys/unix"

// Read is read(2) on a non-blocking socket.
func Read(fd uintptr, p []byte) (int, error) { return rawIO(unix.SYS_READ, fd, p) }

// Write is write(2) on a non-blocking socket.
func Write(fd uintptr, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }
