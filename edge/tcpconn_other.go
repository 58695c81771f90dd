//go:build !linux

package edge

// hasData is only consulted when connections are parked, which needs Linux.
func (c *tcpConn) hasData() bool { return true }
