package mail

import (
	"sync"

	"go.uber.org/zap/zapcore"
)

// logGate stops a LocalDelivery's logging when it closes. go-imap's
// connection goroutines can outlive imapserver.Close, and the caller may
// close or discard its logger once our Close has returned.
type logGate struct {
	mu     sync.RWMutex
	closed bool
}

func (g *logGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// gatedCore writes to its Core until the gate closes, then drops entries.
type gatedCore struct {
	zapcore.Core
	gate *logGate
}

func (c gatedCore) With(fields []zapcore.Field) zapcore.Core {
	return gatedCore{Core: c.Core.With(fields), gate: c.gate}
}

func (c gatedCore) Check(entry zapcore.Entry, checked *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(entry.Level) {
		return checked.AddCore(entry, c)
	}
	return checked
}

func (c gatedCore) Write(entry zapcore.Entry, fields []zapcore.Field) error {
	c.gate.mu.RLock()
	defer c.gate.mu.RUnlock()
	if c.gate.closed {
		return nil
	}
	return c.Core.Write(entry, fields)
}
