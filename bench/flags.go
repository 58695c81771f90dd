package main

import (
	"encoding/base64"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// endpointFlags are the flags every load mode has: where to connect, how,
// and which server processes to watch.
type endpointFlags struct {
	addr, serverName, alpn, ech, ca string
	sources                         int
	timeout                         time.Duration
	pids, procs, cgroups            string
}

func addEndpointFlags(fs *flag.FlagSet, defaultSources int) *endpointFlags {
	f := &endpointFlags{}
	fs.StringVar(&f.addr, "addr", "", "TLS endpoint host:port (required)")
	fs.StringVar(&f.serverName, "server-name", "", "SNI, and with ECH the inner SNI (default: the host of -addr)")
	fs.StringVar(&f.alpn, "alpn", "", "ALPN protocols to offer, comma-separated (imap for chatmail's 443)")
	fs.StringVar(&f.ech, "ech", "", "base64 ECHConfigList (`chatmail-edge ech show`); every connection must then be accepted with ECH")
	fs.StringVar(&f.ca, "ca", "", "PEM file of trusted CAs; without it certificates are not verified (saves client CPU)")
	fs.IntVar(&f.sources, "sources", defaultSources, "spread connections over 127.0.0.1..127.0.0.N when -addr is on loopback")
	fs.DurationVar(&f.timeout, "timeout", 60*time.Second, "per connection: connect, handshake and greeting")
	fs.StringVar(&f.pids, "pids", "", "server PIDs to measure, comma-separated; each with its descendants is one group")
	fs.StringVar(&f.procs, "procs", "", "server process names to measure (/proc/PID/comm, e.g. nginx,dovecot), with descendants; each name is one group")
	fs.StringVar(&f.cgroups, "cgroup", "", "cgroup folders to measure, comma-separated (e.g. /sys/fs/cgroup/system.slice/nginx.service); each is one group")
	return f
}

func (f *endpointFlags) target() (*target, error) {
	if f.addr == "" {
		return nil, fmt.Errorf("%w: -addr is required", errUsage)
	}
	host, _, err := net.SplitHostPort(f.addr)
	if err != nil {
		return nil, fmt.Errorf("%w: -addr %q: %v", errUsage, f.addr, err)
	}
	t := &target{Addr: f.addr, ServerName: f.serverName}
	if t.ServerName == "" {
		t.ServerName = host
	}
	if f.alpn != "" {
		t.ALPN = strings.Split(f.alpn, ",")
	}
	if f.ech != "" {
		if t.ECH, err = base64.StdEncoding.DecodeString(strings.TrimSpace(f.ech)); err != nil {
			return nil, fmt.Errorf("%w: -ech: %v", errUsage, err)
		}
	}
	if f.ca != "" {
		if t.Roots, err = loadRoots(f.ca); err != nil {
			return nil, err
		}
	}
	if t.Sources, err = loopbackSources(f.addr, f.sources); err != nil {
		return nil, err
	}
	return t, nil
}

func (f *endpointFlags) groups() ([]procGroup, error) {
	var gs []procGroup
	for _, p := range splitList(f.pids) {
		pid, err := strconv.Atoi(p)
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("%w: -pids: %q is not a PID", errUsage, p)
		}
		gs = append(gs, procGroup{Label: "pid " + p, Roots: fixedRoots(pid)})
	}
	for _, n := range splitList(f.procs) {
		gs = append(gs, procGroup{Label: n, Roots: rootsByName(n)})
	}
	for _, c := range splitList(f.cgroups) {
		gs = append(gs, procGroup{Label: c, Roots: rootsByCgroup(c)})
	}
	if len(gs) == 0 {
		return nil, fmt.Errorf("%w: say which server processes to measure with -pids, -procs or -cgroup", errUsage)
	}
	return gs, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseSize reads a byte count such as 65536, 64KiB, 512MiB or 1GiB (also
// KB, MB, GB as powers of 1000).
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes like 65536, 64KiB or 512MiB", s)
	}
	return n * mult, nil
}

// sizeFlag is a flag.Value for parseSize.
type sizeFlag struct{ n *int64 }

func (f sizeFlag) String() string {
	if f.n == nil {
		return "0"
	}
	return strconv.FormatInt(*f.n, 10)
}

func (f sizeFlag) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*f.n = n
	return nil
}

func sizeVar(fs *flag.FlagSet, p *int64, name string, def int64, usage string) {
	*p = def
	fs.Var(sizeFlag{p}, name, usage)
}
