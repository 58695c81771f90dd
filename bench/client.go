package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// target is a TLS endpoint the load tool connects to, and how.
type target struct {
	Addr       string
	ServerName string   // inner SNI; with ECH the outer one is the config's public_name
	ALPN       []string // e.g. imap, as Delta Chat sends on 443
	ECH        []byte   // ECHConfigList; nil for no ECH
	Roots      *x509.CertPool
	// Sources are local addresses to spread connections over, so that one
	// loopback address does not run out of ephemeral ports; empty lets the
	// kernel choose.
	Sources []netip.Addr
}

// tlsConfig is the client configuration of one connection; cache holds
// that client's session tickets (nil: no resumption).
func (t *target) tlsConfig(cache tls.ClientSessionCache) *tls.Config {
	return &tls.Config{
		ServerName:                     t.ServerName,
		NextProtos:                     t.ALPN,
		RootCAs:                        t.Roots,
		InsecureSkipVerify:             t.Roots == nil, // the load is about the server's work; verifying is client CPU
		MinVersion:                     tls.VersionTLS13,
		CurvePreferences:               []tls.CurveID{tls.X25519}, // what OpenSSL 3.0 baselines can do too (no ML-KEM)
		EncryptedClientHelloConfigList: t.ECH,
		ClientSessionCache:             cache,
	}
}

// connInfo is what one connection found out.
type connInfo struct {
	Resumed, ECHAccepted bool
	Greeting             string
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h): bind picks
// only the address, and connect picks the port per destination, so a source
// address is not limited to one ephemeral port range for all destinations.
const ipBindAddressNoPort = 24

// dial opens connection i: TCP (from source i mod len(Sources)), the TLS
// handshake and the greeting line, all before deadline.
func (t *target) dial(ctx context.Context, i int, cache tls.ClientSessionCache, deadline time.Time) (*tls.Conn, connInfo, error) {
	raw, err := t.connectTCP(ctx, i, deadline)
	if err != nil {
		return nil, connInfo{}, err
	}
	conn := tls.Client(raw, t.tlsConfig(cache))
	conn.SetDeadline(deadline)
	return t.handshake(ctx, conn)
}

// connectTCP opens the TCP connection of client i (from source i mod
// len(Sources)), with deadline set on it.
func (t *target) connectTCP(ctx context.Context, i int, deadline time.Time) (net.Conn, error) {
	d := net.Dialer{Deadline: deadline}
	if len(t.Sources) > 0 {
		d.LocalAddr = &net.TCPAddr{IP: t.Sources[i%len(t.Sources)].AsSlice()}
		d.Control = func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
			return errors.Join(err, serr)
		}
	}
	raw, err := d.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", t.Addr, err)
	}
	raw.SetDeadline(deadline)
	return raw, nil
}

// handshake completes conn's TLS handshake and reads the greeting line; on
// failure conn is closed.
func (t *target) handshake(ctx context.Context, conn *tls.Conn) (*tls.Conn, connInfo, error) {
	if err := conn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, connInfo{}, fmt.Errorf("TLS handshake with %s: %w", t.Addr, err)
	}
	line, err := readLine(conn)
	if err != nil {
		conn.Close()
		return nil, connInfo{}, fmt.Errorf("read greeting from %s: %w", t.Addr, err)
	}
	conn.SetDeadline(time.Time{})
	cs := conn.ConnectionState()
	info := connInfo{Resumed: cs.DidResume, ECHAccepted: cs.ECHAccepted, Greeting: line}
	if t.ECH != nil && !cs.ECHAccepted {
		conn.Close()
		return nil, info, fmt.Errorf("%s did not accept ECH", t.Addr)
	}
	return conn, info, nil
}

// readLine reads up to and including '\n' without reading past it, so the
// stream stays in step for what follows. Greetings are short.
func readLine(r io.Reader) (string, error) {
	var b []byte
	var one [1]byte
	for len(b) < 4096 {
		if _, err := io.ReadFull(r, one[:]); err != nil {
			return string(b), err
		}
		b = append(b, one[0])
		if one[0] == '\n' {
			return string(b), nil
		}
	}
	return string(b), errors.New("line longer than 4096 bytes")
}

// loopbackSources returns 127.0.0.1 … 127.0.0.n, or nothing when the
// target is not on loopback (other addresses may not be local).
func loopbackSources(addr string, n int) ([]netip.Addr, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if n <= 1 || err != nil || !ip.Is4() || !ip.IsLoopback() {
		return nil, nil
	}
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom4([4]byte{127, 0, 0, byte(1 + i)})
	}
	return out, nil
}

// loadRoots reads a PEM bundle of trusted certificates.
func loadRoots(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("no certificates in %s", file)
	}
	return pool, nil
}

// raiseFileLimit lifts this process's open-file limit as far as allowed, so
// that 10,000 client connections fit; servers started by the tool inherit
// it. It returns the limit now in force.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read RLIMIT_NOFILE: %w", err)
	}
	// As root the hard limit may be raised too (to fs.nr_open); a container
	// without CAP_SYS_RESOURCE refuses, and the old hard limit stays.
	want := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if want.Max > lim.Max && syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
		return uint64(want.Cur), nil
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Max, err)
	}
	return uint64(lim.Cur), nil
}
