//go:build !linux

package edge

type pollToken uint64

type poller struct{}

func newPoller(func(func())) (*poller, error)        { return nil, errNoPoller }
func (p *poller) add(int, func()) (pollToken, error) { return 0, errNoPoller }
func (p *poller) rearm(int, pollToken) error         { return errNoPoller }
func (p *poller) forget(pollToken)                   {}
func (p *poller) retarget(pollToken, func())         {}
func (p *poller) close()                             {}
