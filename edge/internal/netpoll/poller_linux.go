//go:build linux

package netpoll

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// poller tells parked connections when their socket turns readable, so that an
// idle connection holds neither a goroutine nor a buffer: only its kernel socket
// and a few hundred bytes of Go state.
//
// Each registration is one-shot (EPOLLONESHOT): after an event fires, nothing
// more is delivered for that socket until the owner re-arms it. So at most one
// goroutine ever works on a socket's reads, without any lock.
type Poller struct {
	epfd   int
	wakefd int // eventfd that stops the wait loop on close

	// epFile wraps epfd for Go's own netpoller: an epoll set is readable
	// while it has events ready, so the wait loop parks like any network
	// read instead of blocking a thread in epoll_wait. A thread blocked in a
	// system call keeps the runtime's sysmon waking every 20 µs to take its
	// P back, which cost more CPU per connection than the wait itself.
	epFile *os.File
	run    func(func()) // runs a target: Edge's runner

	mu    sync.Mutex
	slots []pollSlot
	free  []uint32
	done  bool
}

// pollSlot ties an epoll registration to its owner. The generation in the
// token makes an event that was already queued for a previous owner of the
// slot harmless.
type pollSlot struct {
	gen    uint32
	target func()
}

// pollToken identifies one registration: slot index and generation.
type pollToken uint64

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

const wakeToken = ^uint64(0)

func New(run func(func())) (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create epoll set: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setEventData(&ev, wakeToken)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("register eventfd: %w", err)
	}
	// os.NewFile only hands a file to the netpoller if it is nonblocking.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("make the epoll set nonblocking: %w", err)
	}
	p := &Poller{epfd: epfd, wakefd: wakefd, epFile: os.NewFile(uintptr(epfd), "edge-epoll"), run: run}
	rc, err := p.epFile.SyscallConn()
	if err != nil {
		p.epFile.Close()
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll set as a file: %w", err)
	}
	go p.loop(rc)
	return p, nil
}

// add registers fd; target runs (through run) once fd is readable (or
// hung up). The registration is disarmed after that until rearm is called.
func (p *Poller) add(fd int, target func()) (pollToken, error) {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return 0, ErrClosed
	}
	var idx uint32
	if n := len(p.free); n > 0 {
		idx = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		idx = uint32(len(p.slots))
		p.slots = append(p.slots, pollSlot{})
	}
	slot := &p.slots[idx]
	slot.target = target
	tok := pollToken(uint64(slot.gen)<<32 | uint64(idx))
	p.mu.Unlock()

	ev := unix.EpollEvent{Events: pollEvents}
	setEventData(&ev, uint64(tok))
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.release(tok)
		return 0, fmt.Errorf("epoll add fd %d: %w", fd, err)
	}
	return tok, nil
}

// rearm asks for one more readiness event on fd.
func (p *Poller) rearm(fd int, tok pollToken) error {
	ev := unix.EpollEvent{Events: pollEvents}
	setEventData(&ev, uint64(tok))
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return fmt.Errorf("epoll rearm fd %d: %w", fd, err)
	}
	return nil
}

// forget gives up the registration tok of a socket that is about to be
// closed. It makes no system call: closing the last descriptor of a socket
// takes it out of every epoll set (epoll(7), Q6), and an event already in
// flight for tok, or one from a descriptor that a forked child still holds
// for a moment, is dropped by the generation check.
func (p *Poller) forget(tok pollToken) {
	p.release(tok)
}

// retarget makes a disarmed registration (its one event has fired and it
// has not been re-armed since) run target on its next event, so that a
// socket keeps one registration from its first byte to its close.
func (p *Poller) retarget(tok pollToken, target func()) {
	idx, gen := uint32(tok), uint32(tok>>32)
	p.mu.Lock()
	defer p.mu.Unlock()
	if int(idx) < len(p.slots) && p.slots[idx].gen == gen {
		p.slots[idx].target = target
	}
}

func (p *Poller) release(tok pollToken) {
	idx, gen := uint32(tok), uint32(tok>>32)
	p.mu.Lock()
	defer p.mu.Unlock()
	if int(idx) >= len(p.slots) || p.slots[idx].gen != gen {
		return
	}
	p.slots[idx] = pollSlot{gen: gen + 1}
	p.free = append(p.free, idx)
}

func (p *Poller) lookup(tok uint64) func() {
	idx, gen := uint32(tok), uint32(tok>>32)
	p.mu.Lock()
	defer p.mu.Unlock()
	if int(idx) >= len(p.slots) || p.slots[idx].gen != gen {
		return nil
	}
	return p.slots[idx].target
}

func (p *Poller) loop(rc syscallConn) {
	events := make([]unix.EpollEvent, 256)
	for {
		var n int
		var werr error
		// Read calls the function first and waits in the netpoller only
		// when it reports false, so no event is missed between batches.
		err := rc.Read(func(fd uintptr) bool {
			n, werr = unix.EpollWait(int(fd), events, 0)
			return n > 0 || werr != nil
		})
		if err == nil && werr != unix.EINTR {
			err = werr
		}
		if err != nil {
			// Only a programming error (bad epfd) gets here; nothing to recover.
			panic(fmt.Sprintf("edge: epoll_wait: %v", err))
		}
		for i := range n {
			tok := eventData(&events[i])
			if tok == wakeToken {
				p.epFile.Close()
				unix.Close(p.wakefd)
				return
			}
			if target := p.lookup(tok); target != nil {
				p.run(target)
			}
		}
	}
}

// syscallConn is the part of syscall.RawConn the wait loop uses.
type syscallConn interface {
	Read(func(fd uintptr) bool) error
}

// close stops the wait loop. Registered targets are not called any more.
func (p *Poller) close() {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return
	}
	p.done = true
	p.slots, p.free = nil, nil
	p.mu.Unlock()
	var one = [8]byte{1}
	_, _ = unix.Write(p.wakefd, one[:])
}

// The 64-bit epoll_data sits in the Fd and Pad fields of x/sys's EpollEvent on
// every little-endian Linux port (amd64 and arm64 differ only in padding before it).
func setEventData(ev *unix.EpollEvent, v uint64) {
	ev.Fd = int32(uint32(v))
	ev.Pad = int32(uint32(v >> 32))
}

func eventData(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// Registered is the number of registrations in use.
func (p *Poller) Registered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.slots) - len(p.free)
}
