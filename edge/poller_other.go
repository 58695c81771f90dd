//go:build !linux

package edge

type pollToken uint64

type poller struct{}

func newPoller() (*poller, error)                    { return nil, errNoPoller }
func (p *poller) add(int, func()) (pollToken, error) { return 0, errNoPoller }
func (p *poller) rearm(int, pollToken) error         { return errNoPoller }
func (p *poller) remove(int, pollToken)              {}
func (p *poller) close()                             {}
