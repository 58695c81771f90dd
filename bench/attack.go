package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// attackOptions size the attacks and the legitimate client (the flags of
// `bench attack`).
type attackOptions struct {
	Duration time.Duration // each attack opens connections this long
	Warmup   time.Duration // the legitimate client starts measuring after it
	// AttackerNet are the attackers' source addresses; StormNet the
	// upgrade storm's clients'; ClientFrom the legitimate client's.
	AttackerNet, StormNet netip.Prefix
	ClientFrom            netip.Addr
	AttackPorts           []string // the ports attacked: "443", "993"
	ClientRate            float64  // the legitimate client's connections per second, per port
	ClientTimeout         time.Duration
	ConnectTimeout        time.Duration // an attacker's TCP connect

	SlowN        int     // slow hello: connections in all
	SlowRate     float64 // slow hello: new per second
	SlowBytes    int     // slow hello: bytes of the ClientHello sent
	DribbleRate  float64 // dribble: new per second
	DribbleEvery time.Duration
	PlainRate    float64 // plaintext: requests per second
	FloodN       int     // per-address flood: sessions attempted
	FloodC       int     // per-address flood: attempts at once
	StormRate    float64 // upgrade: new sessions per second
	UpgradeAt    time.Duration
}

// attack is one kind of attack: run opens its connections until ctx ends.
type attack struct {
	Name, Title string
	run         func(ctx context.Context, env *attackEnv)
}

// attackEnv is what an attack works with against one stack.
type attackEnv struct {
	o    *attackOptions
	pool *attackConns
	// raw are the attacked ports from the attacker addresses, without ECH
	// (the cheapest for an attacker, whether it completes TLS or not);
	// storm the same ports from the upgrade storm's addresses, with ECH
	// where the legitimate client has it.
	raw, storm []*target
	hello      []byte // a real ClientHello for raw[i]
}

var attacks = []attack{
	{"slow-hello", "slow hello: 3,000 connections from one address, 20 bytes of a ClientHello each, then nothing (100 new/s)", attackSlowHello},
	{"dribble", "dribble: a ClientHello at one byte per second, 40 new connections/s", attackDribble},
	{"plaintext", "plaintext: 50 `GET / HTTP/1.1` requests/s on the TLS port", attackPlaintext},
	{"flood", "per-address flood: one address opens TLS+IMAP sessions that idle, as fast as it can, beyond its limit", attackFlood},
	{"upgrade", "connection storm while the front end is upgraded (restarted)", attackUpgradeStorm},
}

// defaultAttacks run without -attacks; upgrade waits for an edge that can
// upgrade without dropping connections (a restart drops them all).
var defaultAttacks = []string{"slow-hello", "dribble", "plaintext", "flood"}

func findAttacks(names []string) ([]attack, error) {
	var out []attack
	for _, n := range names {
		i := slices.IndexFunc(attacks, func(a attack) bool { return a.Name == n })
		if i < 0 {
			var known []string
			for _, a := range attacks {
				known = append(known, a.Name)
			}
			return nil, fmt.Errorf("%w: unknown attack %q, want some of %s", errUsage, n, strings.Join(known, ","))
		}
		out = append(out, attacks[i])
	}
	return out, nil
}

func attackSlowHello(ctx context.Context, env *attackEnv) {
	first := env.hello[:min(env.o.SlowBytes, len(env.hello))]
	paced(ctx, env.o.SlowRate, env.o.SlowN, func(i int) { env.rawConn(ctx, i, first, nil) })
}

func attackDribble(ctx context.Context, env *attackEnv) {
	paced(ctx, env.o.DribbleRate, 0, func(i int) { env.rawConn(ctx, i, env.hello[:1], env.hello[1:]) })
}

func attackPlaintext(ctx context.Context, env *attackEnv) {
	request := []byte("GET / HTTP/1.1\r\nHost: " + env.raw[0].ServerName + "\r\n\r\n")
	paced(ctx, env.o.PlainRate, 0, func(i int) { env.rawConn(ctx, i, request, nil) })
}

// attackFlood opens complete sessions from the attacker addresses (one by
// default), FloodC at a time, until FloodN have been attempted; the ones
// that succeed idle until the end.
func attackFlood(ctx context.Context, env *attackEnv) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range max(1, env.o.FloodC) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= env.o.FloodN {
					return
				}
				env.session(ctx, env.raw, i)
			}
		})
	}
	wg.Wait()
}

// attackUpgradeStorm opens sessions at StormRate (from the storm's
// addresses, as many reconnecting clients) for the whole attack; the
// upgrade itself is run by runAttack at UpgradeAt.
func attackUpgradeStorm(ctx context.Context, env *attackEnv) {
	paced(ctx, env.o.StormRate, 0, func(i int) { env.session(ctx, env.storm, i) })
}

// paced calls open(i) in a goroutine of its own at start + i/rate, for
// i < n (n 0: no limit), until ctx ends, and waits for them.
func paced(ctx context.Context, rate float64, n int, open func(i int)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	start := time.Now()
	for i := 0; n == 0 || i < n; i++ {
		at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		if ctx.Err() != nil {
			return
		}
		wg.Go(func() { open(i) })
	}
}

// pick is the attacked port and source address of connection i: the
// ports take turns, and each source address gets its turn on every port.
func pick(targets []*target, i int) (*target, int) {
	return targets[i%len(targets)], i / len(targets)
}

// rawConn connects (the TCP connect only), sends first and holds the
// connection, sending dribble one byte at a time if it is not empty.
func (env *attackEnv) rawConn(ctx context.Context, i int, first, dribble []byte) {
	t, source := pick(env.raw, i)
	c, err := t.connectTCP(ctx, source, time.Now().Add(env.o.ConnectTimeout))
	if err != nil {
		env.failed(ctx, err)
		return
	}
	c.SetDeadline(time.Time{})
	if _, err := c.Write(first); err != nil {
		c.Close()
		env.failed(ctx, fmt.Errorf("send to %s: %w", t.Addr, err))
		return
	}
	env.pool.watch(c, dribble, env.o.DribbleEvery)
}

// session opens a complete TLS session, reads the IMAP greeting and leaves
// it idle.
func (env *attackEnv) session(ctx context.Context, targets []*target, i int) {
	t, source := pick(targets, i)
	conn, _, err := t.dial(ctx, source, nil, time.Now().Add(env.o.ClientTimeout))
	if err != nil {
		env.failed(ctx, err)
		return
	}
	env.pool.watch(conn, nil, 0)
}

// failed counts a failed attempt, or one the attack's end cut off.
func (env *attackEnv) failed(ctx context.Context, err error) {
	if ctx.Err() != nil {
		env.pool.cutOff()
		return
	}
	env.pool.failed(err)
}

// captureClientHello is the first flight a TLS client of t sends: one
// record holding its ClientHello (RFC 8446 §5.1, §4.1.2), built by
// crypto/tls into a connection that is never opened.
func captureClientHello(t *target) ([]byte, error) {
	errCaptured := errors.New("captured")
	hc := &helloFirstConn{open: func() (net.Conn, error) { return nil, errCaptured }}
	err := tls.Client(hc, t.tlsConfig(nil)).Handshake()
	hello := hc.held
	if !errors.Is(err, errCaptured) || len(hello) < 6 || hello[0] != 22 || int(hello[3])<<8|int(hello[4]) != len(hello)-5 || hello[5] != 1 {
		return nil, fmt.Errorf("build a ClientHello for %s: got %d bytes (%v)", t.Addr, len(hello), err)
	}
	return hello, nil
}

// prefixAddrs lists up to limit addresses of p; without its network and
// broadcast address when it has more than two.
func prefixAddrs(p netip.Prefix, limit int) []netip.Addr {
	p = p.Masked()
	a, ends := p.Addr(), p.Addr().BitLen()-p.Bits() > 1
	if ends {
		a = a.Next()
	}
	var out []netip.Addr
	for ; p.Contains(a) && len(out) < limit; a = a.Next() {
		if ends && !p.Contains(a.Next()) {
			break
		}
		out = append(out, a)
	}
	return out
}

// withSourceAddrs is t connecting from addrs.
func withSourceAddrs(t *target, addrs []netip.Addr) *target {
	c := *t
	c.Sources = addrs
	return &c
}

// selfCPU is this process's own CPU time (not that of the servers it
// started and reaped).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// selfRSSKiB is this process's resident memory now.
func selfRSSKiB() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	kib, _ := parseVmRSS(b)
	return kib
}
