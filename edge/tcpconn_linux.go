//go:build linux

package edge

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hasData reports whether bytes (or the end of stream) are waiting to be
// read, without consuming them or blocking: recv(2) with MSG_PEEK|MSG_DONTWAIT.
func (c *tcpConn) hasData() bool {
	var b [1]byte
	var n uintptr
	var errno unix.Errno
	err := c.raw.Read(func(fd uintptr) bool {
		n, _, errno = unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		return true
	})
	return err == nil && errno == 0 && n <= 1
}

// readFD is read(2) on a non-blocking socket, retried on EINTR.
func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}
