package main

import (
	"fmt"
	"net"
)

// listenAdmin opens the admin listener (detailed status page, metrics). It
// must be on loopback: the page shows internal addresses and errors, and
// nothing there is authenticated.
func listenAdmin(addr string, listen func(name, addr string) (*net.TCPListener, error)) (net.Listener, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, fmt.Errorf("%w: admin listener: %v", errConfig, err)
	}
	ln, err := listen("admin", addr)
	if err != nil {
		return nil, err
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("%w: admin listener: %s is not a loopback address", errConfig, ln.Addr())
	}
	return ln, nil
}

// checkLoopback accepts host:port with a loopback IP (127.0.0.0/8, ::1) or
// "localhost"; anything else could expose the admin pages.
func checkLoopback(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("want a loopback host:port like 127.0.0.1:8081, got %q", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address (127.0.0.1, ::1 or localhost): the admin pages must not be public", addr)
	}
	return nil
}
