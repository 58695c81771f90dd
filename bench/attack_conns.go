package main

import (
	"errors"
	"net"
	"os"
	"slices"
	"sync"
	"time"
)

// attackConns holds the attacker's open connections and counts what
// happens to them. Each connection has one goroutine parked in Read in Go's
// netpoller (the sockets are non-blocking underneath): while a connection
// idles it costs no CPU, only the goroutine's small stack, and a close by the
// server is seen at once. A dribbling connection's next byte is due when its
// read deadline passes, so the same goroutine sends it; no timer per
// connection besides that, no sweeping of idle sockets.
type attackConns struct {
	start time.Time // the attack's start; close times are kept relative to it

	mu      sync.Mutex
	open    map[net.Conn]struct{}
	closing bool // end has begun: closes from now on are the attacker's own
	counts  attackerCounts
	closes  []serverClose
	upgrade time.Duration // since start; 0: no upgrade
	wg      sync.WaitGroup
}

// attackerCounts are the attack's own figures.
type attackerCounts struct {
	Started     int // connection attempts
	Failed      int // connect failed (or, for TLS sessions, handshake or greeting)
	Established int // connected (TLS sessions: greeting read)
	PeakOpen    int // the most held at once
	GotBytes    int // connections on which the server sent something (an alert, an HTTP answer)
	OpenAtEnd   int // still held when the attack ended
	CutOff      int // still connecting (or in the TLS handshake) when the attack ended
	// HeldAtUpgrade is how many were open when the upgrade began;
	// DroppedAfterUpgrade how many of all connections the server closed
	// after it began.
	HeldAtUpgrade, DroppedAfterUpgrade int
	FirstFailure                       string
}

// serverClose is one connection the server ended (FIN, reset, or a failed
// write), with how long it had been held.
type serverClose struct {
	At, Held time.Duration
}

func newAttackConns(start time.Time) *attackConns {
	return &attackConns{start: start, open: make(map[net.Conn]struct{})}
}

// failed counts an attempt that did not connect (or, for a TLS session,
// did not get its greeting).
func (p *attackConns) failed(err error) {
	p.mu.Lock()
	if p.counts.Failed == 0 {
		p.counts.FirstFailure = err.Error()
	}
	p.counts.Started++
	p.counts.Failed++
	p.mu.Unlock()
}

// cutOff counts an attempt the attack's end interrupted: the server had
// not answered it by then.
func (p *attackConns) cutOff() {
	p.mu.Lock()
	p.counts.CutOff++
	p.mu.Unlock()
}

// watch counts an attempt that connected and holds c until the server
// closes it or end is called. dribble, if not empty, is sent one byte per
// every, the first after every.
func (p *attackConns) watch(c net.Conn, dribble []byte, every time.Duration) {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.open[c] = struct{}{}
	p.counts.Started++
	p.counts.Established++
	p.counts.PeakOpen = max(p.counts.PeakOpen, len(p.open))
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		opened := time.Now()
		next := opened.Add(every)
		var buf [256]byte // what the server sends is counted, not kept
		got := false
		for {
			if len(dribble) > 0 {
				c.SetReadDeadline(next)
			}
			n, err := c.Read(buf[:])
			if n > 0 && !got {
				got = true
				p.mu.Lock()
				p.counts.GotBytes++
				p.mu.Unlock()
			}
			if err == nil {
				continue
			}
			if len(dribble) > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				if _, err = c.Write(dribble[:1]); err == nil {
					dribble, next = dribble[1:], next.Add(every)
					if len(dribble) == 0 {
						c.SetReadDeadline(time.Time{})
					}
					continue
				}
			}
			p.ended(c, opened)
			return
		}
	}()
}

// ended takes c out of the set; unless the attacker is closing everything,
// the server closed it.
func (p *attackConns) ended(c net.Conn, opened time.Time) {
	c.Close()
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.open, c)
	if p.closing {
		return
	}
	at := now.Sub(p.start)
	p.closes = append(p.closes, serverClose{At: at, Held: now.Sub(opened)})
	if p.upgrade > 0 && at >= p.upgrade {
		p.counts.DroppedAfterUpgrade++
	}
}

// upgradeBegins notes the moment an upgrade of the server starts.
func (p *attackConns) upgradeBegins() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.upgrade = max(time.Since(p.start), time.Nanosecond)
	p.counts.HeldAtUpgrade = len(p.open)
}

// openNow is how many connections are held.
func (p *attackConns) openNow() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.open)
}

// drained waits until every watched connection has ended (the server
// closed them all, or end ran).
func (p *attackConns) drained() { p.wg.Wait() }

// end closes every connection still held and returns the counts, with the
// connections the server closed.
func (p *attackConns) end() (attackerCounts, []serverClose) {
	p.mu.Lock()
	p.closing = true
	p.counts.OpenAtEnd = len(p.open)
	conns := make([]net.Conn, 0, len(p.open))
	for c := range p.open {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts, slices.Clone(p.closes)
}

// medianHeld is the median time the server let its closed connections
// live; 0 when it closed none.
func medianHeld(closes []serverClose) time.Duration {
	held := make([]float64, len(closes))
	for i, c := range closes {
		held[i] = float64(c.Held)
	}
	slices.Sort(held)
	if len(held) == 0 {
		return 0
	}
	return time.Duration(percentile(held, 50))
}
