package main

import (
	"bytes"
	"fmt"
	"strconv"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// idleClock reads the time all of the machine's CPUs have spent idle from
// /proc/stat. The governor asks ten times a second, so the file stays open
// and each reading is one pread from its start (the kernel writes the file
// anew for every read at offset 0), without Go's file poller.
type idleClock struct{ fd int }

func openIdleClock() (*idleClock, error) {
	fd, err := syscall.Open("/proc/stat", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /proc/stat: %w", err)
	}
	return &idleClock{fd: fd}, nil
}

// read returns the idle time (idle and iowait in /proc/stat, proc(5)) since
// boot, summed over the CPUs.
func (c *idleClock) read() (time.Duration, error) {
	var buf [512]byte // the first line is under 256 bytes
	n, err := syscall.Pread(c.fd, buf[:], 0)
	if err != nil {
		return 0, fmt.Errorf("read the machine's idle time: %w", err)
	}
	return parseIdleTime(buf[:n])
}

func (c *idleClock) close() { syscall.Close(c.fd) }

// parseIdleTime reads the idle time from the start of /proc/stat.
func parseIdleTime(stat []byte) (time.Duration, error) {
	line, _, ok := bytes.Cut(stat, []byte{'\n'})
	if !ok {
		return 0, fmt.Errorf("read the machine's idle time: no whole first line in /proc/stat (%q)", stat)
	}
	// cpu  user nice system idle iowait irq softirq steal guest guest_nice
	fields := bytes.Fields(line)
	if len(fields) < 6 || string(fields[0]) != "cpu" {
		return 0, fmt.Errorf("read the machine's idle time: unexpected first line %q of /proc/stat", line)
	}
	var ticks uint64
	for _, f := range fields[4:6] {
		n, err := strconv.ParseUint(string(f), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read the machine's idle time: %q in /proc/stat: %w", f, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
