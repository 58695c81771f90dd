//go:build !linux

package sdnotify

// monotonicUsec: systemd runs on Linux only.
func monotonicUsec() (uint64, bool) { return 0, false }
