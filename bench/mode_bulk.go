package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// bulkDirection is which way the data flows.
type bulkDirection string

const (
	bulkUp   bulkDirection = "up"   // client to backend (SINK)
	bulkDown bulkDirection = "down" // backend to client (SOURCE)
	bulkBoth bulkDirection = "both" // both at once (ECHO)
)

func parseDirection(s string) (bulkDirection, error) {
	switch d := bulkDirection(s); d {
	case bulkUp, bulkDown, bulkBoth:
		return d, nil
	}
	return "", fmt.Errorf("direction %q: want up, down or both", s)
}

// bulkConfig is one run of the bulk mode.
type bulkConfig struct {
	Conns     int
	Bytes     int64 // per direction, split over the connections
	Direction bulkDirection
	Timeout   time.Duration
}

// bulkResult holds what one run measured.
type bulkResult struct {
	Conns     int
	Direction bulkDirection
	Moved     int64 // bytes through the proxy, both directions counted
	Cipher    string
	Wall      time.Duration
	Groups    []string
	CPU       []time.Duration
}

// MBps is the throughput in 10^6 bytes per second.
func (r bulkResult) MBps() float64 { return float64(r.Moved) / 1e6 / r.Wall.Seconds() }

// CPUPerGB is the CPU seconds per 10^9 bytes moved, of group i or of all
// groups when i < 0.
func (r bulkResult) CPUPerGB(i int) float64 {
	var t time.Duration
	for j, c := range r.CPU {
		if i < 0 || i == j {
			t += c
		}
	}
	return t.Seconds() / (float64(r.Moved) / 1e9)
}

// runBulk opens the connections first (handshakes are not part of the
// figure), then moves the data on all of them at once.
func runBulk(ctx context.Context, t *target, groups []procGroup, cfg bulkConfig) (bulkResult, error) {
	res := bulkResult{Conns: cfg.Conns, Direction: cfg.Direction}
	for _, g := range groups {
		res.Groups = append(res.Groups, g.Label)
	}
	conns := make([]*tls.Conn, cfg.Conns)
	defer closeAll(conns)
	for i := range conns {
		c, _, err := t.dial(ctx, i, nil, time.Now().Add(cfg.Timeout))
		if err != nil {
			return res, err
		}
		conns[i] = c
	}
	res.Cipher = tls.CipherSuiteName(conns[0].ConnectionState().CipherSuite)
	per := cfg.Bytes / int64(cfg.Conns)
	before, err := waitCPUQuiet(groups, 2*time.Second)
	if err != nil {
		return res, err
	}
	start := time.Now()
	errs := make([]error, cfg.Conns)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			c.SetDeadline(time.Now().Add(cfg.Timeout))
			errs[i] = moveBulk(c, cfg.Direction, per)
		})
	}
	wg.Wait()
	res.Wall = time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("bulk %s on %d connections: %w", cfg.Direction, cfg.Conns, err)
	}
	after, err := waitCPUQuiet(groups, 2*time.Second)
	if err != nil {
		return res, err
	}
	res.Moved = per * int64(cfg.Conns)
	if cfg.Direction == bulkBoth {
		res.Moved *= 2
	}
	for i := range groups {
		res.CPU = append(res.CPU, after[i].CPU-before[i].CPU)
	}
	return res, nil
}

// moveBulk runs one connection's share with the bench backend.
func moveBulk(c *tls.Conn, dir bulkDirection, n int64) error {
	buf := make([]byte, 32<<10)
	switch dir {
	case bulkUp:
		if _, err := io.WriteString(c, backendCommand("SINK", n)); err != nil {
			return err
		}
		if _, err := io.CopyBuffer(onlyWriter{c}, io.LimitReader(zeroReader{}, n), buf); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		line, err := readLine(c)
		if err != nil || !strings.HasPrefix(line, "OK") {
			return fmt.Errorf("backend did not confirm %d bytes: %q %v", n, line, err)
		}
		return nil
	case bulkDown:
		if _, err := io.WriteString(c, backendCommand("SOURCE", n)); err != nil {
			return err
		}
		if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, n), buf); err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		return nil
	default:
		return echoExchange(c, n)
	}
}

// onlyWriter hides ReadFrom, so io.CopyBuffer uses the given buffer and
// writes full TLS records.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

func (r bulkResult) print(w io.Writer) {
	fmt.Fprintf(w, "%s on %d connections (%s): %.1f MB moved in %.2fs, %.1f MB/s\n", r.Direction, r.Conns, r.Cipher, float64(r.Moved)/1e6, r.Wall.Seconds(), r.MBps())
	for i, g := range r.Groups {
		fmt.Fprintf(w, "  %-24s CPU %6.2fs  %6.2f CPU-s/GB\n", g, r.CPU[i].Seconds(), r.CPUPerGB(i))
	}
	fmt.Fprintf(w, "  %-24s %6.2f CPU-s/GB\n", "all processes", r.CPUPerGB(-1))
}
