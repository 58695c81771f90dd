//go:build !linux

package netpoll

type pollToken uint64

type Poller struct{}

func New(func(func())) (*Poller, error)              { return nil, ErrUnsupported }
func (p *Poller) add(int, func()) (pollToken, error) { return 0, ErrUnsupported }
func (p *Poller) rearm(int, pollToken) error         { return ErrUnsupported }
func (p *Poller) forget(pollToken)                   {}
func (p *Poller) retarget(pollToken, func())         {}
func (p *Poller) close()                             {}
func (p *Poller) Registered() int                    { return 0 }
