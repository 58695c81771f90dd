// Package testserver runs throwaway servers for tests: TCP on loopback, or
// on a listener of the test's own (a unix socket).
package testserver

import (
	"net"
	"sync"
	"testing"
)

// Serve listens on 127.0.0.1 port 0 and runs serve on every connection it
// accepts, each in a goroutine of its own; serve may return and leave the
// connection open. The test's end closes the listener and every
// connection, then waits for the goroutines. Serve returns the address.
func Serve(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ServeListener(t, ln, serve)
	return ln.Addr().String()
}

// ServeListener is Serve on a listener the test made.
func ServeListener(t testing.TB, ln net.Listener, serve func(net.Conn)) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			wg.Go(func() { serve(conn) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, conn := range conns {
			conn.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}
