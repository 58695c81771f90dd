package main

import (
	"errors"
	"net"
	"sync"
	"time"
)

// helloFirstConn lets a TLS client build its first flight before its TCP
// connection exists. A real client does that work (key shares, with ECH
// the HPKE encapsulation and the second ClientHello, with a ticket the PSK
// binders) on its own device; in a storm whose load generator shares the
// server's cores, doing it inside the timed window would charge it to the
// server. crypto/tls writes the ClientHello and then reads: writes are held
// until the first read, which calls open and sends them on the new
// connection. After that every call goes to the connection.
type helloFirstConn struct {
	// open connects; it runs on the handshake's goroutine at the first
	// read, and may wait for the client's turn first.
	open func() (net.Conn, error)

	mu     sync.Mutex
	conn   net.Conn // nil until open returned
	held   []byte   // written before conn existed
	closed bool
}

var errClosedBeforeOpen = errors.New("connection closed before it was opened")

func (c *helloFirstConn) current() (net.Conn, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn, c.closed
}

func (c *helloFirstConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.conn == nil {
		defer c.mu.Unlock()
		if c.closed {
			return 0, errClosedBeforeOpen
		}
		c.held = append(c.held, b...)
		return len(b), nil
	}
	conn := c.conn
	c.mu.Unlock()
	return conn.Write(b)
}

func (c *helloFirstConn) Read(b []byte) (int, error) {
	conn, closed := c.current()
	if closed && conn == nil {
		return 0, errClosedBeforeOpen
	}
	if conn == nil {
		var err error
		if conn, err = c.attach(); err != nil {
			return 0, err
		}
	}
	return conn.Read(b)
}

// attach opens the connection and sends what was held.
func (c *helloFirstConn) attach() (net.Conn, error) {
	conn, err := c.open()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.Close()
		return nil, errClosedBeforeOpen
	}
	held := c.held
	c.conn, c.held = conn, nil
	c.mu.Unlock()
	if _, err := conn.Write(held); err != nil {
		return nil, err
	}
	return conn, nil
}

func (c *helloFirstConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.conn != nil {
		return c.conn.Close()
	}
	return nil
}

// Deadlines before the connection exists are the opener's business: open
// sets the client's deadline on the connection it returns.
func (c *helloFirstConn) SetDeadline(t time.Time) error {
	if conn, _ := c.current(); conn != nil {
		return conn.SetDeadline(t)
	}
	return nil
}

func (c *helloFirstConn) SetReadDeadline(t time.Time) error {
	if conn, _ := c.current(); conn != nil {
		return conn.SetReadDeadline(t)
	}
	return nil
}

func (c *helloFirstConn) SetWriteDeadline(t time.Time) error {
	if conn, _ := c.current(); conn != nil {
		return conn.SetWriteDeadline(t)
	}
	return nil
}

func (c *helloFirstConn) LocalAddr() net.Addr {
	if conn, _ := c.current(); conn != nil {
		return conn.LocalAddr()
	}
	return nil
}

func (c *helloFirstConn) RemoteAddr() net.Addr {
	if conn, _ := c.current(); conn != nil {
		return conn.RemoteAddr()
	}
	return nil
}
