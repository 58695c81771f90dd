package edge

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"chatmail-edge/edge/internal/netpoll"
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

	// wmu orders every write with a batch being collected: crypto/tls may
	// write to the socket from the reading pump too (a KeyUpdate reply, RFC
	// 8446 §4.6.3, or an alert), and such a record must join the batch, not
	// overtake it.
	wmu   sync.Mutex
	batch []byte // non-nil while a pump collects the records of one tls.Conn.Write

	// ahead is a running pump's read-ahead buffer under crypto/tls, which
	// asks for little more than one record per read; aheadPos is where the
	// unread bytes in it start. Only the source's pump touches them.
	ahead    []byte
	aheadPos int

	// prelude is what the client sent before its handshake began (its
	// ClientHello, read while it waited in the poller), for crypto/tls to
	// read first. Only the handshake's goroutine touches it.
	prelude []byte
	// turn is the handshake's hold on a handshake slot while one runs: a
	// read or write that has to wait for the client gives the slot back for
	// the wait (see handshakeSlots).
	turn *handshakeTurn

	// front opens ECH ClientHellos for crypto/tls (echfront.go) until it has
	// handed over everything it read. Only the reading goroutine touches it.
	front *echFront
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

// holdsUnread reports whether the ECH front still holds bytes it read from
// the socket: the client's first data can come with its Finished, and then
// nothing is left in the socket to wake the poller for it.
func (c *tcpConn) holdsUnread() bool {
	return c.front != nil && !c.front.drained()
}

func (c *tcpConn) Read(p []byte) (int, error) {
	if f := c.front; f != nil {
		if !f.drained() {
			return f.read(p, c.readSocket)
		}
		c.front = nil
	}
	if len(c.prelude) > 0 {
		n := copy(p, c.prelude)
		if c.prelude = c.prelude[n:]; len(c.prelude) == 0 {
			c.prelude = nil
		}
		return n, nil
	}
	if c.ahead == nil {
		return c.readSocket(p)
	}
	if c.aheadPos == len(c.ahead) {
		n, err := c.readSocket(c.ahead[:cap(c.ahead)])
		c.ahead, c.aheadPos = c.ahead[:n], 0
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, c.ahead[c.aheadPos:])
	c.aheadPos += n
	return n, nil
}

// startReadAhead lends the connection buf (length 0) to read into. Parked
// reads end only when the socket has nothing more (errWouldBlock), so a pump
// that parks has always emptied it.
func (c *tcpConn) startReadAhead(buf []byte) {
	c.ahead, c.aheadPos = buf, 0
}

// stopReadAhead takes the buffer back. Bytes still in it are dropped: a pump
// stops with unread data only when the session is ending.
func (c *tcpConn) stopReadAhead() {
	c.ahead, c.aheadPos = nil, 0
}

// readSocket reads from the socket itself: waiting for data like any
// net.Conn until the connection is parked, then returning errWouldBlock
// when nothing is there.
func (c *tcpConn) readSocket(p []byte) (int, error) {
	if !netpoll.RawIO && !c.parked {
		return c.TCPConn.Read(p)
	}
	return c.readRaw(p, !c.parked)
}

// tryRead reads what the socket holds now, without waiting: errWouldBlock
// when that is nothing.
func (c *tcpConn) tryRead(p []byte) (int, error) {
	return c.readRaw(p, false)
}

func (c *tcpConn) readRaw(p []byte, wait bool) (int, error) {
	var n int
	var errno error
	err := c.raw.Read(func(fd uintptr) bool {
		n, errno = netpoll.Read(fd, p)
		if errno != syscall.EAGAIN || !wait {
			return true
		}
		c.turn.release() // waiting for the client: no slot for that
		return false     // wait until readable
	})
	c.turn.acquire()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno == syscall.EAGAIN:
		return 0, errWouldBlock
	case errno != nil:
		return 0, c.opError("read", errno)
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

func isWouldBlock(err error) bool {
	return errors.Is(err, errWouldBlock)
}

// Write sends p, or adds it to the batch a pump is collecting. crypto/tls
// hands its socket one record at a time; collected, the records of a chunk
// leave in one write system call.
func (c *tcpConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.batch != nil {
		if len(c.batch)+len(p) > cap(c.batch) {
			if err := c.flushLocked(); err != nil {
				return 0, err
			}
		}
		if len(p) <= cap(c.batch) {
			c.batch = append(c.batch, p...)
			return len(p), nil
		}
	}
	return c.writeSocket(p)
}

// writeSocket writes all of p, waiting for room in the socket as a
// net.Conn does (and honouring its write deadline).
func (c *tcpConn) writeSocket(p []byte) (int, error) {
	if !netpoll.RawIO {
		return c.TCPConn.Write(p)
	}
	written := 0
	var errno error
	err := c.raw.Write(func(fd uintptr) bool {
		for written < len(p) {
			n, e := netpoll.Write(fd, p[written:])
			switch {
			case e == syscall.EAGAIN:
				c.turn.release() // a client that does not read holds no handshake slot
				return false     // wait until writable
			case e != nil:
				errno = e
				return true
			}
			written += n
		}
		return true
	})
	c.turn.acquire()
	if err == nil {
		err = errno
	}
	if err != nil {
		return written, c.opError("write", err)
	}
	return written, nil
}

// CloseWrite sends the TCP FIN. On loopback the kernel hands it to the
// receiver within the call, so it is made like reads and writes (rawIO).
func (c *tcpConn) CloseWrite() error {
	if !netpoll.RawIO {
		return c.TCPConn.CloseWrite()
	}
	var errno error
	err := c.raw.Control(func(fd uintptr) { errno = netpoll.ShutdownWrite(fd) })
	if err == nil {
		err = errno
	}
	if err != nil {
		return c.opError("close", err)
	}
	return nil
}

// opError reports a failed read or write the way net.TCPConn does, whether
// the socket failed (an errno) or waiting for it did (deadline, closed).
func (c *tcpConn) opError(op string, err error) error {
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		err = oe.Err // the raw-read or raw-write of syscall.RawConn
	} else if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, errno)
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// collectWrites starts collecting writes in buf (length 0) until sendCollected.
func (c *tcpConn) collectWrites(buf []byte) {
	c.wmu.Lock()
	c.batch = buf
	c.wmu.Unlock()
}

// sendCollected writes what was collected and stops collecting.
func (c *tcpConn) sendCollected() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	err := c.flushLocked()
	c.batch = nil
	return err
}

func (c *tcpConn) flushLocked() error {
	if len(c.batch) == 0 {
		return nil
	}
	_, err := c.writeSocket(c.batch)
	c.batch = c.batch[:0]
	return err
}
