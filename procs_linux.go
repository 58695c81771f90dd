package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// machineIdleTime is the time all of the machine's CPUs have spent idle
// (idle and iowait in /proc/stat, proc(5)) since boot, summed over them.
func machineIdleTime() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read the machine's idle time: %w", err)
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadSlice('\n')
	if err != nil {
		return 0, fmt.Errorf("read the machine's idle time: %w", err)
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
