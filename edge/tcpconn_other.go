//go:build !linux

package edge

import (
	"errors"
	"syscall"
)

// hasData is only consulted when connections are parked, which needs Linux.
func (c *tcpConn) hasData() bool { return true }

// rawSocketIO is false: reads and writes go through net.TCPConn.
const rawSocketIO = false

// readFD is only used on parked connections, which need Linux.
func readFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

// shutdownWrite is not used without rawSocketIO.
func shutdownWrite(uintptr) error { return errors.ErrUnsupported }

// writeFD is not used without rawSocketIO.
func writeFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

// connectEarly leaves the connect to the dialer.
func connectEarly(string, string, syscall.RawConn) error { return nil }
