package netpoll

import "sync/atomic"

// maxIdleRunners bounds the goroutines a runner keeps waiting for work: about
// the number of pump turns and backend dials in flight at once on a busy edge.
const maxIdleRunners = 128

// Runner runs the short tasks of a connection's life (a pump's turn after the
// poller saw data, the dial to the backend) on goroutines that outlive them.
// A new goroutine starts on the smallest stack, and a TLS read or a dial
// grows it by copying two or three times, which on a short turn costs more
// than the turn's own work; a goroutine that stays keeps its stack. A task
// never waits for one: without an idle goroutine it gets a new one.
type Runner struct {
	tasks chan func()
	idle  atomic.Int32 // goroutines waiting in tasks, or about to
	stop  chan struct{}
}

func NewRunner() *Runner {
	return &Runner{tasks: make(chan func()), stop: make(chan struct{})}
}

// Do runs task on an idle goroutine if one is waiting, else on a new one.
func (r *Runner) Do(task func()) {
	select {
	case r.tasks <- task:
	default:
		go r.loop(task)
	}
}

func (r *Runner) loop(task func()) {
	for {
		task()
		task = nil // let it go while waiting
		if r.idle.Add(1) > maxIdleRunners {
			r.idle.Add(-1)
			return
		}
		select {
		case task = <-r.tasks:
			r.idle.Add(-1)
		case <-r.stop:
			r.idle.Add(-1)
			return
		}
	}
}

// Close lets the idle goroutines go; tasks handed in later still run, each
// on a goroutine that ends with it.
func (r *Runner) Close() { close(r.stop) }
