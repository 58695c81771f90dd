//go:build !linux

package netpoll

import (
	"errors"
	"syscall"
)

// RawIO is false: reads and writes go through net.TCPConn.
const RawIO = false

// Read is only used on parked connections, which need Linux.
func Read(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

// Write is not used without RawIO.
func Write(uintptr, []byte) (int, error) { return 0, errors.ErrUnsupported }

// ShutdownWrite is not used without RawIO.
func ShutdownWrite(uintptr) error { return errors.ErrUnsupported }

// ConnectEarly leaves the connect to the dialer.
func ConnectEarly(string, string, syscall.RawConn) error { return nil }
