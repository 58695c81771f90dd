//go:build !linux

package edge

import "errors"

// hasData is only consulted when connections are parked, which needs Linux.
func (c *tcpConn) hasData() bool { return true }

// readFD is only used on parked connections, which need Linux.
func readFD(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }
