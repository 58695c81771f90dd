package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDescribedKeys(t *testing.T) {
	text := `# chatmail-edge configuration (/etc/chatmail-edge/chatmail-edge.ini).
# Every key is optional; the values shown are the defaults. Lines starting
# with # are comments.

[edge]
# Listen address for implicit-TLS IMAP with ECH (e.g. :993). Empty leaves the
# port = to Dovecot.
#imaps = 

#max_connections = 20000

[ech]
#public_name = 
`
	got := describedKeys(text)
	want := map[string]bool{"edge.imaps": true, "edge.max_connections": true, "ech.public_name": true}
	if len(got) != len(want) {
		t.Errorf("describedKeys = %v, want %v", got, want)
	}
	for k := range want {
		if !got[k] {
			t.Errorf("describedKeys lacks %s: %v", k, got)
		}
	}
}

func TestAttackEdgeLinesOnlyKnownKeys(t *testing.T) {
	lim := edgeLimits{MaxConnections: 2000, PerAddressConnections: 500, PerAddressNew: 20}
	// An edge without the per-address keys gets none of them (its config
	// would not load), and the notes say so.
	lines, notes := attackEdgeLines(map[string]bool{"edge.imaps": true}, 9993, lim)
	if !slices.Equal(lines, []string{"imaps = 127.0.0.1:9993"}) {
		t.Errorf("old edge: lines %q", lines)
	}
	for _, want := range []string{"has no [edge] exempt_networks", "has no [edge] max_connections_per_address", "has no [edge] new_connections_per_address"} {
		if !slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, want) }) {
			t.Errorf("old edge: notes %q lack %q", notes, want)
		}
	}
	known := map[string]bool{"edge.imaps": true, "edge.exempt_networks": true, "edge.max_connections_per_address": true,
		"edge.max_handshakes_per_address": true, "edge.new_connections_per_address": true}
	lines, _ = attackEdgeLines(known, 9993, lim)
	want := []string{"imaps = 127.0.0.1:9993", "exempt_networks =", "max_connections_per_address = 500", "new_connections_per_address = 20"}
	if !slices.Equal(lines, want) {
		t.Errorf("new edge: lines %q, want %q (0 leaves max_handshakes_per_address at its default)", lines, want)
	}
	f := edgeFile{ChatmailINI: "/c.ini", StateDir: "/s", Port: 1, Backend: 2, MaxConnections: 2000, Extra: want}
	conf := edgeConf(f)
	if strings.Count(conf, "max_connections = ") != 1 || !strings.Contains(conf, "max_connections = 2000\n") || !strings.Contains(conf, "exempt_networks =\n") ||
		strings.Index(conf, "exempt_networks") > strings.Index(conf, "[imap]") {
		t.Errorf("edge config:\n%s", conf)
	}
}

func TestPrefixAddrs(t *testing.T) {
	for _, c := range []struct {
		prefix string
		limit  int
		first  string
		last   string
		n      int
	}{
		{"127.0.0.2/32", 10, "127.0.0.2", "127.0.0.2", 1},
		{"127.0.1.0/24", 1000, "127.0.1.1", "127.0.1.254", 254},
		{"127.0.1.7/24", 3, "127.0.1.1", "127.0.1.3", 3},
		{"127.0.0.4/31", 10, "127.0.0.4", "127.0.0.5", 2},
	} {
		got := prefixAddrs(netip.MustParsePrefix(c.prefix), c.limit)
		if len(got) != c.n || got[0].String() != c.first || got[len(got)-1].String() != c.last {
			t.Errorf("prefixAddrs(%s, %d) = %d addresses %v…%v, want %d %s…%s", c.prefix, c.limit, len(got), got[0], got[len(got)-1], c.n, c.first, c.last)
		}
	}
}

func TestAttackFlags(t *testing.T) {
	parse := func(args ...string) (*attackOptions, []attack, error) {
		fs := flag.NewFlagSet("attack", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f := addAttackFlags(fs)
		if err := fs.Parse(args); err != nil {
			return nil, nil, err
		}
		return f.options()
	}
	o, chosen, err := parse()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range chosen {
		names = append(names, a.Name)
	}
	if !slices.Equal(names, defaultAttacks) || o.ClientFrom.String() != "127.0.0.3" || o.AttackerNet.String() != "127.0.0.2/32" || !slices.Equal(o.AttackPorts, []string{"443"}) {
		t.Errorf("defaults: %v, %+v", names, o)
	}
	if _, _, err := parse("-attacks", "upgrade", "-upgrade-at", "1m"); !errors.Is(err, errUsage) {
		t.Errorf("an upgrade after the attack's end: %v", err)
	}
	if _, _, err := parse("-upgrade-at", "1m"); err != nil {
		t.Errorf("-upgrade-at matters only for the upgrade attack: %v", err)
	}
	for name, args := range map[string][]string{
		"unknown attack":            {"-attacks", "slow-hello,smurf"},
		"client among the attacker": {"-attacker-net", "127.0.0.0/24"},
		"client in the storm":       {"-storm-net", "127.0.0.3/32"},
		"attacker off loopback":     {"-attacker-net", "192.0.2.0/24"},
		"client off loopback":       {"-client-from", "192.0.2.1"},
		"port 25":                   {"-attack-ports", "443,25"},
		"warm-up past the end":      {"-warmup", "1m", "-duration", "30s"},
		"no rate":                   {"-plain-rate", "0"},
		"nginx limits":              {"-nginx-limits", "none"},
	} {
		if _, _, err := parse(args...); !errors.Is(err, errUsage) {
			t.Errorf("%s (%q): %v, want a usage error", name, args, err)
		}
	}
}

func TestCaptureClientHello(t *testing.T) {
	hello, err := captureClientHello(&target{Addr: "127.0.0.1:443", ServerName: "bench.example", ALPN: []string{"imap"}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(hello, []byte("\x04imap")) || !bytes.Contains(hello, []byte("bench.example")) {
		t.Errorf("ClientHello lacks the ALPN or SNI: % x", hello)
	}
}

// acceptOne serves one connection of ln with serve, in the background.
func acceptOne(t *testing.T, ln net.Listener, serve func(net.Conn)) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		serve(c)
	}()
	return done
}

func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func rawEnv(t *testing.T, addr string) *attackEnv {
	tg := &target{Addr: addr, ServerName: "bench.example", ALPN: []string{"imap"}}
	if runtime.GOOS == "linux" { // all of 127.0.0.0/8 is local there
		tg.Sources = []netip.Addr{netip.MustParseAddr("127.0.0.2")}
	}
	hello, err := captureClientHello(tg)
	if err != nil {
		t.Fatal(err)
	}
	return &attackEnv{o: &attackOptions{ConnectTimeout: 10 * time.Second, DribbleEvery: time.Millisecond, ClientTimeout: 10 * time.Second},
		pool: newAttackConns(time.Now()), raw: []*target{tg}, hello: hello}
}

// A slow hello sends its bytes and nothing more; the attack's end closes
// it, which is not the server's doing.
func TestSlowHelloSendsItsPrefixOnly(t *testing.T) {
	ln := listenLoopback(t)
	env := rawEnv(t, ln.Addr().String())
	var got []byte
	var from string
	done := acceptOne(t, ln, func(c net.Conn) {
		from = c.RemoteAddr().(*net.TCPAddr).IP.String()
		got, _ = io.ReadAll(c) // until the attacker lets go
	})
	env.rawConn(context.Background(), 0, env.hello[:20], nil)
	counts, closes := env.pool.end()
	<-done
	if !bytes.Equal(got, env.hello[:20]) {
		t.Errorf("server got % x, want the first 20 bytes of the ClientHello % x", got, env.hello[:20])
	}
	if runtime.GOOS == "linux" && from != "127.0.0.2" {
		t.Errorf("attacker came from %s, want 127.0.0.2", from)
	}
	if counts.Started != 1 || counts.Established != 1 || counts.OpenAtEnd != 1 || counts.PeakOpen != 1 || len(closes) != 0 {
		t.Errorf("counts %+v, server closes %v", counts, closes)
	}
}

// A dribbler sends the whole hello, byte by byte; the server closing it is
// counted with how long it was held.
func TestDribbleSendsTheWholeHello(t *testing.T) {
	ln := listenLoopback(t)
	env := rawEnv(t, ln.Addr().String())
	var got []byte
	done := acceptOne(t, ln, func(c net.Conn) {
		got = make([]byte, len(env.hello))
		io.ReadFull(c, got)
	})
	env.rawConn(context.Background(), 0, env.hello[:1], env.hello[1:])
	<-done // the server closed the connection after the whole hello
	env.pool.drained()
	counts, closes := env.pool.end()
	if !bytes.Equal(got, env.hello) {
		t.Errorf("server got % x, want the ClientHello % x", got, env.hello)
	}
	if counts.Established != 1 || counts.OpenAtEnd != 0 || len(closes) != 1 || closes[0].Held <= 0 {
		t.Errorf("counts %+v, server closes %v", counts, closes)
	}
}

// A plaintext request that is answered and closed counts as answered and
// closed by the server; a connect that fails counts as failed.
func TestPlaintextAnsweredAndRefused(t *testing.T) {
	ln := listenLoopback(t)
	env := rawEnv(t, ln.Addr().String())
	var request string
	done := acceptOne(t, ln, func(c net.Conn) {
		request, _ = readLine(c)
		io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
	})
	env.rawConn(context.Background(), 0, []byte("GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n"), nil)
	<-done
	env.pool.drained()

	closed := listenLoopback(t)
	closedAddr := closed.Addr().String()
	closed.Close()
	env.raw = []*target{{Addr: closedAddr}}
	env.rawConn(context.Background(), 1, []byte("x"), nil)
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	env.rawConn(ended, 2, []byte("x"), nil) // the attack is over: not a failure

	counts, closes := env.pool.end()
	if request != "GET / HTTP/1.1\r\n" {
		t.Errorf("server read %q", request)
	}
	if counts.Started != 2 || counts.Established != 1 || counts.GotBytes != 1 || len(closes) != 1 || counts.Failed != 1 || !strings.Contains(counts.FirstFailure, closedAddr) || counts.CutOff != 1 {
		t.Errorf("counts %+v, server closes %v", counts, closes)
	}
}

// The flood attempts exactly FloodN sessions; a server at its limit ends
// the ones beyond it, and they count as failed.
func TestFloodBeyondTheLimit(t *testing.T) {
	tg := startTLSBackend(t)
	backend := tg.Addr
	limited := listenLoopback(t)
	const limit = 3
	var served sync.WaitGroup
	served.Go(func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := limited.Accept()
			if err != nil {
				return
			}
			if len(held) == 2*limit { // a client and a backend connection each
				c.Close() // refused, as a front end over its limit does
				continue
			}
			b, err := net.Dial("tcp", backend) // the TLS backend does the rest
			if err != nil {
				t.Error(err)
				return
			}
			held = append(held, c, b)
			go io.Copy(b, c)
			go io.Copy(c, b)
		}
	})
	tg.Addr, tg.ECH = limited.Addr().String(), nil
	env := &attackEnv{o: &attackOptions{FloodN: 5, FloodC: 2, ClientTimeout: 10 * time.Second}, pool: newAttackConns(time.Now()), raw: []*target{tg}}
	attackFlood(context.Background(), env)
	counts, _ := env.pool.end()
	limited.Close()
	served.Wait()
	if counts.Started != 5 || counts.Established != limit || counts.Failed != 5-limit || counts.OpenAtEnd != limit {
		t.Errorf("counts %+v, want 5 attempted, %d held, the rest failed", counts, limit)
	}
}

func TestPacedOpensEachOnce(t *testing.T) {
	var mu sync.Mutex
	var got []int
	paced(context.Background(), 1e6, 5, func(i int) {
		mu.Lock()
		got = append(got, i)
		mu.Unlock()
	})
	slices.Sort(got)
	if !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Errorf("opened %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	paced(ctx, 1, 0, func(int) { t.Error("opened after the end") })
}

func TestProbeTimesAndStats(t *testing.T) {
	from := time.Unix(1000, 0)
	times := probeTimes(from, from.Add(2*time.Second), 2)
	if len(times) != 4 || !times[0].Equal(from) || !times[3].Equal(from.Add(1500*time.Millisecond)) {
		t.Errorf("probeTimes = %v", times)
	}
	var outs []probeOutcome
	for i := 1; i <= 10; i++ {
		outs = append(outs, probeOutcome{Latency: time.Duration(i) * time.Millisecond})
	}
	outs = append(outs, probeOutcome{Err: errors.New("reset")}, probeOutcome{Err: errors.New("timeout")})
	s := summarizeProbes(outs)
	if s.N != 12 || s.Failures != 2 || s.FirstError != "reset" || s.P50 != 5*time.Millisecond || s.P90 != 9*time.Millisecond || s.Max != 10*time.Millisecond {
		t.Errorf("summarizeProbes = %+v", s)
	}
}

// A whole attack against an in-process TLS server on two "ports": the
// legitimate client is served, the attacker's counts add up and the
// upgrade runs once. Only counts are checked.
func TestRunAttackInProcess(t *testing.T) {
	tg := startTLSBackend(t)
	client := withSourceAddrs(tg, nil)
	upgrades := 0
	s := attackStack{stack: stack{Name: "in-process"}, Ports: []attackPort{{"443", client}, {"993", client}},
		Upgrade: func(context.Context) error { upgrades++; return nil }}
	o := &attackOptions{Duration: time.Second, Warmup: 0, AttackerNet: netip.MustParsePrefix("127.0.0.1/32"), StormNet: netip.MustParsePrefix("127.0.0.1/32"),
		AttackPorts: []string{"443"}, ClientRate: 4, ClientTimeout: 10 * time.Second, ConnectTimeout: 10 * time.Second,
		SlowN: 5, SlowRate: 100, SlowBytes: 20, StormRate: 10, UpgradeAt: time.Millisecond}
	for _, name := range []string{"slow-hello", "upgrade"} {
		a, err := findAttacks([]string{name})
		if err != nil {
			t.Fatal(err)
		}
		upgrades = 0
		res, err := runAttack(context.Background(), a[0], s, o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c := res.Attacker
		if c.Started != c.Established+c.Failed || c.Started == 0 || len(res.Probes) != 2 {
			t.Errorf("%s: counts %+v, %d ports", name, c, len(res.Probes))
		}
		for i, p := range res.Probes {
			if p.N == 0 || p.Failures != 0 || p.P90 <= 0 {
				t.Errorf("%s: port %d: %+v", name, i, p)
			}
		}
		if want := map[string]int{"slow-hello": 0, "upgrade": 1}[name]; upgrades != want {
			t.Errorf("%s: %d upgrades, want %d", name, upgrades, want)
		}
	}
}

func TestUpgradeActions(t *testing.T) {
	dir := t.TempDir()
	d := &daemon{Name: "sleeper", Argv: []string{"sleep", "60"}, LogFile: filepath.Join(dir, "log")}
	if err := d.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.stop() })
	s := attackStack{stack: stack{Name: "s", Front: []*daemon{d}}}
	out := filepath.Join(dir, "out")
	act, err := upgradeAction("echo {pid} {bin} {config} > "+out, s, "/bin/edge", "/etc/edge.ini")
	if err != nil {
		t.Fatal(err)
	}
	if err := act(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != strconv.Itoa(d.PID())+" /bin/edge /etc/edge.ini\n" {
		t.Errorf("the command wrote %q", b)
	}
	if act, err = upgradeAction("signal:TERM", s, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := act(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-d.done // the signal ended the process
	if err := act(context.Background()); err == nil {
		t.Error("a signal to a process that has exited was sent")
	}
	for _, bad := range []string{"", "signal:NOPE"} {
		if _, err := upgradeAction(bad, s, "", ""); err == nil {
			t.Errorf("upgrade %q accepted", bad)
		}
	}
}

// The edge's row is met only with every run's p90 within 1 s and no
// failure; a run in which nothing succeeded has no p90 (not 0).
func TestAttackRowsAndTables(t *testing.T) {
	run := func(p90 time.Duration, failures int) attackRun {
		p := probeStats{N: 4, Failures: failures, P50: p90 / 2, P90: p90, Max: p90}
		return attackRun{Probes: []probeStats{p, p}, Attacker: attackerCounts{Started: 10, Established: 9, Failed: 1}, ToolCPU: time.Second, Window: 10 * time.Second}
	}
	stacks := map[string]attackStack{
		stackEdge:  {stack: stack{Name: stackEdge}, Ports: []attackPort{{Label: "443"}, {Label: "993"}}},
		stackToday: {stack: stack{Name: stackToday}, Ports: []attackPort{{Label: "443"}, {Label: "993"}}},
	}
	chosen, _ := findAttacks([]string{"slow-hello", "dribble", "flood", "upgrade"})
	r := attackResults{}
	dropping := run(10*time.Millisecond, 0)
	dropping.Attacker.DroppedAfterUpgrade = 1
	for _, x := range []struct {
		attack string
		edge   attackRun
	}{
		{"slow-hello", run(200*time.Millisecond, 0)},
		{"dribble", run(1500*time.Millisecond, 0)},
		{"flood", run(0, 4)},
		{"upgrade", dropping},
	} {
		for range 2 {
			r.add(x.attack, stackEdge, x.edge)
			r.add(x.attack, stackToday, run(10*time.Millisecond, 0))
		}
	}
	rows := r.rows(chosen, stacks)
	verdicts := map[string]string{}
	for _, row := range rows {
		if row.BaseName == "" {
			continue
		}
		attack, _, _ := strings.Cut(row.Figure, ":")
		port := "993"
		if strings.Contains(row.Figure, " on 443,") {
			port = "443"
		}
		verdicts[attack+port] = row.verdict()
	}
	want := map[string]string{"slow-hello443": "yes", "slow-hello993": "yes", "dribble443": "no", "dribble993": "no", "flood443": "no", "flood993": "no",
		"upgrade443": "no", "upgrade993": "no"} // the client is served, but a session was dropped
	if len(verdicts) != len(want) {
		t.Errorf("verdicts %v, want %v", verdicts, want)
	}
	for k, v := range want {
		if verdicts[k] != v {
			t.Errorf("%s: met %q, want %q", k, verdicts[k], v)
		}
	}
	if v := r.values("flood", stackEdge, latencyMillis(0, p90Of)); !math.IsNaN(v[0]) {
		t.Errorf("p90 of a run without a success: %v", v)
	}
	var b strings.Builder
	printTable(&b, rows)
	if !strings.Contains(b.String(), "| n/a | chatmail today: 10 [10–10] ms | n/a | "+attackTarget+" | no |") {
		t.Errorf("the flood's row, without a p90 on the edge:\n%s", b.String())
	}
	b.Reset()
	r.printClients(&b, chosen, stacks)
	r.printAttackers(&b, chosen, stacks)
	for _, want := range []string{
		"| slow-hello | 443 | 100 [100–100] ms | 200 [200–200] ms | 200 [200–200] ms | 0 of 8 | 5 [5–5] ms | 10 [10–10] ms | 10 [10–10] ms | 0 of 8 |",
		"| flood | 993 | n/a | n/a | n/a | 8 of 8 |",
		"| dribble | edge | 10 [10–10] | 1 [1–1] |",
		"| 10.0 [10.0–10.0] % |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("tables lack %q:\n%s", want, b.String())
		}
	}
}
