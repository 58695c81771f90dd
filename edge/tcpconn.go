package edge

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
)

// errWouldBlock reports that a parked connection has no data to read right now.
//
// It is a temporary net.Error on purpose: crypto/tls does not remember temporary
// read errors (conn.go, readRecordOrCCS), so a tls.Conn that saw it can be read
// again once the socket is readable, keeping any partial record it buffered.
var errWouldBlock net.Error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "edge: no data ready" }
func (wouldBlockError) Timeout() bool   { return true }
func (wouldBlockError) Temporary() bool { return true }

// tcpConn is one TCP connection of the edge, on either side (client or backend).
//
// Reads block like any net.Conn until the connection is parked; from then on a
// read that finds no data returns errWouldBlock at once, so that a pump can give
// its goroutine and buffer back and wait for the poller instead.
type tcpConn struct {
	*net.TCPConn
	raw    syscall.RawConn
	fd     int
	remote netip.AddrPort
	local  netip.AddrPort

	// parked is written before the first pump runs and read only by pumps.
	parked bool
	// echOffered is set during the handshake by GetConfigForClient.
	echOffered bool
}

func newTCPConn(c *net.TCPConn) (*tcpConn, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	tc := &tcpConn{TCPConn: c, raw: raw, fd: -1}
	if err := raw.Control(func(fd uintptr) { tc.fd = int(fd) }); err != nil {
		return nil, err
	}
	tc.remote = addrPort(c.RemoteAddr())
	tc.local = addrPort(c.LocalAddr())
	return tc, nil
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}

func (c *tcpConn) Read(p []byte) (int, error) {
	if !c.parked {
		return c.TCPConn.Read(p)
	}
	var n int
	var errno error
	err := c.raw.Read(func(fd uintptr) bool {
		for {
			n, errno = syscall.Read(int(fd), p)
			if errno != syscall.EINTR {
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errno == syscall.EAGAIN:
		return 0, errWouldBlock
	case errno != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

func isWouldBlock(err error) bool {
	return errors.Is(err, errWouldBlock)
}
