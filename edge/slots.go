package edge

import (
	"net/netip"
	"sync"
)

// handshakeSlots bound the handshakes that compute at once (MaxHandshakes),
// so that a reconnect storm queues instead of thrashing, and keep the line
// fair.
//
// A slot is held only while a handshake has work to do: one that waits for
// its client (the client's Finished, a second ClientHello after a
// HelloRetryRequest, a write the client does not read) gives its slot back
// for the wait and takes one again, before new handshakes do, when the
// client has answered. A slow or silent client therefore holds no slot, only
// its goroutine.
//
// New handshakes wait in one line per source and take slots in turn, one
// source after another, so a source with many connections in line delays
// another one's by at most one handshake per source ahead of it.
type handshakeSlots struct {
	mu     sync.Mutex
	size   int // MaxHandshakes
	busy   int // slots held
	closed bool
	// resuming are handshakes whose client answered while they had given
	// their slot back, in the order they asked.
	resuming []*handshakeTurn
	line     fairLine
	// start runs a handshake that got a slot from the line; it must not
	// block (Edge hands it to the runner).
	start func(*pendingConn)
}

// handshakeTurn is one handshake's hold on a slot.
type handshakeTurn struct {
	slots   *handshakeSlots
	holding bool
	wake    chan struct{} // made when it first has to wait for a slot
}

func newHandshakeSlots(size int, start func(*pendingConn)) *handshakeSlots {
	return &handshakeSlots{size: size, start: start}
}

// enqueue starts pc's handshake at once if a slot is free and nothing waits
// for one, else puts it in its source's line.
func (hs *handshakeSlots) enqueue(pc *pendingConn) {
	hs.mu.Lock()
	if hs.closed {
		hs.mu.Unlock()
		return
	}
	if hs.busy < hs.size && len(hs.resuming) == 0 && hs.line.empty() {
		hs.busy++
		hs.mu.Unlock()
		pc.turn.holding = true
		hs.start(pc)
		return
	}
	hs.line.push(pc)
	hs.mu.Unlock()
}

// release gives t's slot back: to a waiting handshake whose client has
// answered first, else to the next one in line.
//
// A nil turn (a connection not in a handshake) holds nothing.
func (t *handshakeTurn) release() {
	if t == nil || !t.holding {
		return
	}
	t.holding = false
	t.slots.handOn()
}

// handOn passes a slot that was given back to whoever waits for one.
func (hs *handshakeSlots) handOn() {
	hs.mu.Lock()
	if hs.busy > hs.size || hs.closed { // lowered by SetLimits, or shutting down
		hs.busy--
		hs.mu.Unlock()
		return
	}
	if len(hs.resuming) > 0 {
		t := hs.resuming[0]
		hs.resuming[0] = nil
		hs.resuming = hs.resuming[1:]
		hs.mu.Unlock()
		t.holding = true
		t.wake <- struct{}{}
		return
	}
	pc := hs.line.pop()
	if pc == nil {
		hs.busy--
		hs.mu.Unlock()
		return
	}
	hs.mu.Unlock()
	pc.turn.holding = true
	hs.start(pc)
}

// acquire takes a slot again after a wait, ahead of the line. It returns at
// once when the edge is shutting down, or for a nil turn.
func (t *handshakeTurn) acquire() {
	if t == nil || t.holding {
		return
	}
	hs := t.slots
	hs.mu.Lock()
	if hs.closed {
		hs.mu.Unlock()
		return
	}
	if hs.busy < hs.size && len(hs.resuming) == 0 {
		hs.busy++
		hs.mu.Unlock()
		t.holding = true
		return
	}
	if t.wake == nil {
		t.wake = make(chan struct{}, 1)
	}
	hs.resuming = append(hs.resuming, t)
	hs.mu.Unlock()
	<-t.wake
}

// resize changes the number of slots. More slots start handshakes from the
// line at once; fewer take effect as handshakes give theirs back.
func (hs *handshakeSlots) resize(n int) {
	hs.mu.Lock()
	hs.size = n
	var start []*pendingConn
	for hs.busy < hs.size && !hs.closed {
		pc := hs.line.pop()
		if pc == nil {
			break
		}
		hs.busy++
		start = append(start, pc)
	}
	hs.mu.Unlock()
	for _, pc := range start {
		pc.turn.holding = true
		hs.start(pc)
	}
}

// close wakes every handshake waiting for a slot and empties the line; the
// connections themselves are closed by Shutdown.
func (hs *handshakeSlots) close() {
	hs.mu.Lock()
	hs.closed = true
	resuming := hs.resuming
	hs.resuming = nil
	hs.line = fairLine{}
	hs.mu.Unlock()
	for _, t := range resuming {
		t.wake <- struct{}{}
	}
}

// queued is the number of handshakes in line for a slot.
func (hs *handshakeSlots) queued() int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.line.n
}

// fairLine is the line of handshakes waiting for a first slot: a queue per
// source, and the sources with someone in line in turn.
type fairLine struct {
	bySource map[netip.Addr]*sourceLine
	turns    []*sourceLine // sources with waiting handshakes; the first is next
	n        int
}

type sourceLine struct {
	key   netip.Addr
	conns []*pendingConn
}

func (fl *fairLine) empty() bool { return fl.n == 0 }

func (fl *fairLine) push(pc *pendingConn) {
	if fl.bySource == nil {
		fl.bySource = make(map[netip.Addr]*sourceLine)
	}
	key := sourceKey(pc.tc.remote.Addr())
	sl := fl.bySource[key]
	if sl == nil {
		sl = &sourceLine{key: key}
		fl.bySource[key] = sl
		fl.turns = append(fl.turns, sl)
	}
	sl.conns = append(sl.conns, pc)
	fl.n++
}

// pop takes the first handshake of the next source in turn; that source,
// if it has more, goes to the back.
func (fl *fairLine) pop() *pendingConn {
	if fl.n == 0 {
		return nil
	}
	sl := fl.turns[0]
	fl.turns[0] = nil
	fl.turns = fl.turns[1:]
	pc := sl.conns[0]
	sl.conns[0] = nil
	sl.conns = sl.conns[1:]
	fl.n--
	if len(sl.conns) > 0 {
		fl.turns = append(fl.turns, sl)
	} else {
		delete(fl.bySource, sl.key)
	}
	return pc
}
