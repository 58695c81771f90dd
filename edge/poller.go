package edge

import "errors"

var (
	errPollerClosed = errors.New("edge: poller closed")
	// errNoPoller means this platform cannot park connections; pumps then keep
	// one goroutine per direction blocked in Read, as a plain Go proxy does.
	errNoPoller = errors.New("edge: no readiness poller on this platform")
)
