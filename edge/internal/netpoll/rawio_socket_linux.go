//go:build linux

package netpoll

import (
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RawIO: the edge's socket reads and writes go through Read and Write on
// the non-blocking socket.
const RawIO = true

// rawIO makes a read(2) or write(2) on a non-blocking socket without the
// runtime's bookkeeping for blocking system calls. Such a call never waits,
// but on loopback it runs the receiver's TCP work too and can take tens of
// µs; made as a blocking call, it lets sysmon hand the caller's P to another
// thread meanwhile, and in a reconnect storm those hand-offs (two thread
// wake-ups each, and sysmon polling every 20 µs to find them) cost more than
// the calls themselves.
func rawIO(trap, fd uintptr, p []byte) (int, error) {
	var ptr unsafe.Pointer
	if len(p) > 0 {
		ptr = unsafe.Pointer(&p[0])
	}
	for {
		n, _, errno := syscall.RawSyscall(trap, fd, uintptr(ptr), uintptr(len(p)))
		switch errno {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		}
		return 0, errno
	}
}

// ShutdownWrite is shutdown(2) of the sending side, made like rawIO.
func ShutdownWrite(fd uintptr) error {
	if _, _, errno := syscall.RawSyscall(unix.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0); errno != 0 {
		return os.NewSyscallError("shutdown", errno)
	}
	return nil
}

// ConnectEarly is a net.Dialer Control hook that makes the connect(2)
// itself, without the runtime's bookkeeping for blocking calls (see rawIO):
// on loopback the kernel runs the whole TCP handshake, the listener's side
// included, within this call. The dialer's own connect then reports the
// socket connected (0, or EISCONN, both success to it) and does not wait for
// it to turn writable; a handshake still in flight gives EALREADY, and the
// dialer waits as usual.
func ConnectEarly(network, address string, c syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || ap.Addr().Zone() != "" {
		return nil // leave anything unusual to the dialer
	}
	var sa4 unix.RawSockaddrInet4
	var sa6 unix.RawSockaddrInet6
	var sa unsafe.Pointer
	var salen uintptr
	port := (*[2]byte)(nil)
	switch addr := ap.Addr(); {
	case network == "tcp4" && addr.Unmap().Is4():
		sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: addr.Unmap().As4()}
		sa, salen, port = unsafe.Pointer(&sa4), unsafe.Sizeof(sa4), (*[2]byte)(unsafe.Pointer(&sa4.Port))
	case network == "tcp6":
		sa6 = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: addr.As16()}
		sa, salen, port = unsafe.Pointer(&sa6), unsafe.Sizeof(sa6), (*[2]byte)(unsafe.Pointer(&sa6.Port))
	default:
		return nil
	}
	port[0], port[1] = byte(ap.Port()>>8), byte(ap.Port()) // network byte order
	var errno syscall.Errno
	if err := c.Control(func(fd uintptr) {
		_, _, errno = syscall.RawSyscall(unix.SYS_CONNECT, fd, uintptr(sa), salen)
	}); err != nil {
		return err
	}
	switch errno {
	case 0, syscall.EINPROGRESS, syscall.EINTR, syscall.EALREADY:
		return nil
	}
	return os.NewSyscallError("connect", errno)
}
