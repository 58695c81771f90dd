//go:build linux && !race

package edge

import "golang.org/x/sys/unix"

// readFD is read(2) on a non-blocking socket.
func readFD(fd uintptr, p []byte) (int, error) { return rawIO(unix.SYS_READ, fd, p) }

// writeFD is write(2) on a non-blocking socket.
func writeFD(fd uintptr, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }
