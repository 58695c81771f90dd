package web

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap/zapcore"
)

// maxRecentText bounds the text kept of one entry.
const maxRecentText = 400

// RecentLog keeps the latest warnings and errors of the process for the
// admin status page. Install it with RecentLog.Core in a zapcore.NewTee.
type RecentLog struct {
	mu      sync.Mutex
	entries []RecentEntry // ring
	next    int
	full    bool
}

// RecentEntry is one log entry, flattened to text.
type RecentEntry struct {
	Time    time.Time
	Level   string // "warn", "error", ...
	Logger  string
	Message string
	Fields  string // key=value pairs
}

// NewRecentLog keeps the latest size entries.
func NewRecentLog(size int) *RecentLog {
	return &RecentLog{entries: make([]RecentEntry, size)}
}

// Entries returns the kept entries, newest first.
func (l *RecentLog) Entries() []RecentEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.next
	if l.full {
		n = len(l.entries)
	}
	out := make([]RecentEntry, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, l.entries[(l.next-i+len(l.entries))%len(l.entries)])
	}
	return out
}

func (l *RecentLog) add(e RecentEntry) {
	if len(l.entries) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries[l.next] = e
	l.next = (l.next + 1) % len(l.entries)
	l.full = l.full || l.next == 0
}

// Core is a zapcore.Core that records warnings and worse into l.
func (l *RecentLog) Core() zapcore.Core { return &recentCore{log: l} }

type recentCore struct {
	log    *RecentLog
	fields []zapcore.Field
}

func (c *recentCore) Enabled(lvl zapcore.Level) bool { return lvl >= zapcore.WarnLevel }

func (c *recentCore) With(fields []zapcore.Field) zapcore.Core {
	return &recentCore{log: c.log, fields: append(slices.Clip(c.fields), fields...)}
}

func (c *recentCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *recentCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range append(slices.Clip(c.fields), fields...) {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%v", k, enc.Fields[k])
	}
	c.log.add(RecentEntry{
		Time: e.Time, Level: e.Level.String(), Logger: e.LoggerName,
		Message: truncate(e.Message, maxRecentText), Fields: truncate(b.String(), maxRecentText),
	})
	return nil
}

func (c *recentCore) Sync() error { return nil }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
