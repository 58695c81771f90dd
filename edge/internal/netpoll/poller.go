// Package netpoll is the edge's low-level socket machinery, behind one
// boundary: parking idle connections in the kernel's readiness poller
// (epoll) so that they hold no goroutine and no buffer, reading and writing
// non-blocking sockets with raw system calls (without the runtime's
// blocking-call hand-off), and a runner of long-lived goroutines for short
// tasks. Each piece is measured to pay for itself (docs/BENCHMARKS.md); the
// edge's sessions and handshakes see only Register, Rearm, Retarget and
// Forget, Read and Write, and Runner.Do.
package netpoll

import "errors"

var (
	// ErrClosed: the poller was closed.
	ErrClosed = errors.New("netpoll: poller closed")
	// ErrUnsupported means this platform cannot park connections; pumps then
	// keep one goroutine per direction blocked in Read, as a plain Go proxy
	// does.
	ErrUnsupported = errors.New("netpoll: no readiness poller on this platform")
)

// Registration is one socket's place in the poller, from Register to
// Forget. The zero value is no registration.
type Registration struct {
	fd  int
	tok pollToken
	ok  bool
}

// Registered reports whether r is a registration.
func (r Registration) Registered() bool { return r.ok }

// Register watches fd: target runs (through the poller's run function)
// once fd is readable or hung up. The registration is then disarmed until
// Rearm; so at most one goroutine ever works on a socket's reads.
func (p *Poller) Register(fd int, target func()) (Registration, error) {
	tok, err := p.add(fd, target)
	if err != nil {
		return Registration{}, err
	}
	return Registration{fd: fd, tok: tok, ok: true}, nil
}

// Rearm asks for one more readiness event of r's socket.
func (p *Poller) Rearm(r Registration) error { return p.rearm(r.fd, r.tok) }

// Forget gives r up before its socket is closed. It makes no system call:
// closing the socket takes it out of the epoll set.
func (p *Poller) Forget(r Registration) {
	if r.ok {
		p.forget(r.tok)
	}
}

// Retarget makes a disarmed registration run target on its next event, so
// that a socket keeps one registration from its first byte to its close.
func (p *Poller) Retarget(r Registration, target func()) { p.retarget(r.tok, target) }

// Close stops the poller; registered targets are not called any more.
func (p *Poller) Close() { p.close() }
