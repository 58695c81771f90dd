package service

import (
	"fmt"
	"net"

	"chatmail-edge/config"
)

// listenAdmin opens the admin listener (detailed status page, metrics). It
// must be on loopback: the page shows internal addresses and errors, and
// nothing there is authenticated.
func listenAdmin(addr string, listen func(name, addr string) (*net.TCPListener, error)) (net.Listener, error) {
	if err := config.CheckLoopback(addr); err != nil {
		return nil, fmt.Errorf("%w: admin listener: %v", config.ErrConfig, err)
	}
	ln, err := listen("admin", addr)
	if err != nil {
		return nil, err
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("%w: admin listener: %s is not a loopback address", config.ErrConfig, ln.Addr())
	}
	return ln, nil
}
