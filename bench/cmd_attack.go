package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// edgeLimits are the limits the attack lab writes into the edge's
// configuration. The per-address keys are the names the edge's limits
// (issue 16) were to get; an edge that does not list a key in `config
// describe` does not get it (its config would not load).
type edgeLimits struct {
	MaxConnections        int
	PerAddressConnections int // [edge] max_connections_per_address
	PerAddressHandshakes  int // [edge] max_handshakes_per_address
	PerAddressNew         int // [edge] new_connections_per_address (per second)
}

func cmdAttack(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("attack", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts := addLabFlags(fs)
	af := addAttackFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	o, chosen, err := af.options()
	if err != nil {
		return err
	}
	l, err := startLab(ctx, *opts, stderr)
	if err != nil {
		return err
	}
	defer l.closeKeepingOnError(&err)
	setup, err := l.configureForAttacks(ctx, af.limits, af.nginxLimits == "chatmail")
	if err != nil {
		return err
	}
	for _, line := range setup {
		fmt.Fprintln(stderr, line)
	}
	stacks, err := l.attackStacks(o, af.edgeUpgrade, af.nginxUpgrade)
	if err != nil {
		return err
	}

	started := time.Now()
	noise := startNoiseMeter()
	results := attackResults{}
	for _, a := range chosen {
		fmt.Fprintf(stderr, "== attack %s: %s\n", a.Name, a.Title)
		err := rounds(ctx, af.runs, stackList(stacks), stderr, func(run int, s stack) error {
			st := stacks[s.Name]
			if err := s.restart(ctx); err != nil {
				return err
			}
			res, err := runAttack(ctx, a, st, o)
			if err != nil {
				return err
			}
			results.add(a.Name, s.Name, res)
			fmt.Fprintf(stderr, "%s run %d %-16s %s\n", a.Name, run+1, s.Name, res.summaryLine(st))
			return nil
		})
		if err != nil {
			return fmt.Errorf("attack %s: %w", a.Name, err)
		}
	}
	header := fmt.Sprintf("## attack, %s\n\n%s\nRuns per attack and stack: %d; took %v. %s\n\n%s\n", started.Format(time.DateTime),
		machineInfo(l), af.runs, time.Since(started).Round(time.Second), noise.report(), strings.Join(setup, "\n"))
	fmt.Fprintln(stdout, header)
	rows := results.rows(chosen, stacks)
	printTable(stdout, rows)
	fmt.Fprintln(stdout)
	results.printClients(stdout, chosen, stacks)
	fmt.Fprintln(stdout)
	results.printAttackers(stdout, chosen, stacks)
	if af.jsonFile != "" {
		return writeJSON(af.jsonFile, header, rows)
	}
	return nil
}

// attackFlags are the flags of `bench attack` besides the lab's.
type attackFlags struct {
	o                         attackOptions
	runs                      int
	attacks, ports            string
	attackerNet, stormNet     string
	clientFrom                string
	limits                    edgeLimits
	nginxLimits               string
	edgeUpgrade, nginxUpgrade string
	jsonFile                  string
}

func addAttackFlags(fs *flag.FlagSet) *attackFlags {
	f := &attackFlags{}
	o := &f.o
	fs.IntVar(&f.runs, "runs", 3, "runs of every attack against every stack; medians, min and max are over them")
	fs.StringVar(&f.attacks, "attacks", strings.Join(defaultAttacks, ","), "attacks to run, comma-separated: slow-hello, dribble, plaintext, flood, upgrade")
	fs.DurationVar(&o.Duration, "duration", 40*time.Second, "each attack opens connections this long; then it lets go")
	fs.DurationVar(&o.Warmup, "warmup", 10*time.Second, "the legitimate client starts measuring this long after the attack")
	fs.StringVar(&f.ports, "attack-ports", "443", "ports attacked: 443 and/or 993, comma-separated (the legitimate client measures both)")
	fs.StringVar(&f.attackerNet, "attacker-net", "127.0.0.2/32", "the attackers' source addresses (a loopback prefix; /32 is one address)")
	fs.StringVar(&f.stormNet, "storm-net", "127.0.1.0/24", "the upgrade storm's source addresses (many clients)")
	fs.StringVar(&f.clientFrom, "client-from", "127.0.0.3", "the legitimate client's source address")
	fs.Float64Var(&o.ClientRate, "client-rate", 2, "the legitimate client's new connections per second, on each port")
	fs.DurationVar(&o.ClientTimeout, "client-timeout", 30*time.Second, "a connection not greeted within this is a failure (also the attackers' TLS sessions)")
	fs.DurationVar(&o.ConnectTimeout, "connect-timeout", 5*time.Second, "an attacker's TCP connect")
	fs.IntVar(&o.SlowN, "slow-n", 3000, "slow hello: connections in all")
	fs.Float64Var(&o.SlowRate, "slow-rate", 100, "slow hello: new connections per second")
	fs.IntVar(&o.SlowBytes, "slow-bytes", 20, "slow hello: bytes of a real ClientHello each sends")
	fs.Float64Var(&o.DribbleRate, "dribble-rate", 40, "dribble: new connections per second")
	fs.DurationVar(&o.DribbleEvery, "dribble-every", time.Second, "dribble: one byte of the ClientHello per this")
	fs.Float64Var(&o.PlainRate, "plain-rate", 50, "plaintext: GET / HTTP/1.1 requests per second, one per connection")
	fs.IntVar(&o.FloodN, "flood-n", 3000, "flood: TLS+IMAP sessions attempted from the attacker address")
	fs.IntVar(&o.FloodC, "flood-c", 8, "flood: attempts at once")
	fs.Float64Var(&o.StormRate, "storm-rate", 50, "upgrade: new TLS+IMAP sessions per second, held, from -storm-net")
	fs.DurationVar(&o.UpgradeAt, "upgrade-at", 20*time.Second, "upgrade: when into the attack the front end is upgraded")
	fs.StringVar(&f.edgeUpgrade, "edge-upgrade", "restart", "upgrade: how the edge is upgraded: restart (SIGTERM, start again), signal:NAME (to its PID), or a shell command with {pid}, {bin}, {config}")
	fs.StringVar(&f.nginxUpgrade, "nginx-upgrade", "signal:HUP", "upgrade: the same for nginx; HUP reloads with new workers, the old ones keep their connections")
	fs.IntVar(&f.limits.MaxConnections, "edge-max-connections", 2000, "the edge's max_connections in the lab (about the 2,048 connections chatmail's nginx allows)")
	fs.IntVar(&f.limits.PerAddressConnections, "max-connections-per-address", 500, "written as [edge] max_connections_per_address if the edge knows the key; 0 leaves its default")
	fs.IntVar(&f.limits.PerAddressHandshakes, "max-handshakes-per-address", 0, "written as [edge] max_handshakes_per_address if the edge knows the key; 0 leaves its default")
	fs.IntVar(&f.limits.PerAddressNew, "new-connections-per-address", 0, "written as [edge] new_connections_per_address (per second) if the edge knows the key; 0 leaves its default")
	fs.StringVar(&f.nginxLimits, "nginx-limits", "chatmail", "chatmail: nginx with chatmail's worker_connections 2048 and worker_rlimit_nofile 2048; raised: both at the open-file limit, as the other figures run it")
	fs.StringVar(&f.jsonFile, "json", "", "also write every row with its per-run values to this JSON file")
	return f
}

// options checks the flags and returns the attack options and attacks.
func (f *attackFlags) options() (*attackOptions, []attack, error) {
	o := f.o
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{errUsage}, args...)...)
	}
	chosen, err := findAttacks(splitList(f.attacks))
	switch {
	case err != nil:
		return nil, nil, err
	case len(chosen) == 0:
		return nil, nil, bad("-attacks: none given")
	case f.runs < 1:
		return nil, nil, bad("-runs must be at least 1")
	case o.Duration <= 0 || o.Warmup < 0 || o.Warmup >= o.Duration:
		return nil, nil, bad("want 0 <= -warmup < -duration, got %v and %v", o.Warmup, o.Duration)
	case (o.UpgradeAt <= 0 || o.UpgradeAt >= o.Duration) && slices.ContainsFunc(chosen, func(a attack) bool { return a.Name == "upgrade" }):
		return nil, nil, bad("-upgrade-at must be within -duration")
	case o.ClientRate <= 0 || o.SlowRate <= 0 || o.DribbleRate <= 0 || o.PlainRate <= 0 || o.StormRate <= 0:
		return nil, nil, bad("rates must be positive")
	case o.SlowN < 1 || o.SlowBytes < 1 || o.FloodN < 1 || o.FloodC < 1 || o.DribbleEvery <= 0:
		return nil, nil, bad("-slow-n, -slow-bytes, -flood-n, -flood-c and -dribble-every must be positive")
	case f.nginxLimits != "chatmail" && f.nginxLimits != "raised":
		return nil, nil, bad("-nginx-limits: want chatmail or raised, got %q", f.nginxLimits)
	case f.limits.MaxConnections < 1 || f.limits.PerAddressConnections < 0 || f.limits.PerAddressHandshakes < 0 || f.limits.PerAddressNew < 0:
		return nil, nil, bad("-edge-max-connections must be positive, the per-address limits 0 or more")
	}
	o.AttackPorts = splitList(f.ports)
	if len(o.AttackPorts) == 0 {
		return nil, nil, bad("-attack-ports: none given")
	}
	for _, p := range o.AttackPorts {
		if p != "443" && p != "993" {
			return nil, nil, bad("-attack-ports: want 443 and/or 993, got %q", p)
		}
	}
	if o.ClientFrom, err = netip.ParseAddr(f.clientFrom); err != nil || !o.ClientFrom.Is4() || !o.ClientFrom.IsLoopback() {
		return nil, nil, bad("-client-from: want an IPv4 loopback address, got %q", f.clientFrom)
	}
	for _, n := range []struct {
		flag, text string
		prefix     *netip.Prefix
	}{{"-attacker-net", f.attackerNet, &o.AttackerNet}, {"-storm-net", f.stormNet, &o.StormNet}} {
		p, err := netip.ParsePrefix(n.text)
		if err != nil || !p.Addr().Is4() || p.Bits() < 8 || !p.Masked().Addr().IsLoopback() {
			return nil, nil, bad("%s: want a prefix within 127.0.0.0/8, got %q", n.flag, n.text)
		}
		if p.Contains(o.ClientFrom) {
			return nil, nil, bad("%s %s holds the legitimate client's address %s", n.flag, p, o.ClientFrom)
		}
		*n.prefix = p
	}
	return &o, chosen, nil
}

// describedKeys are the keys `chatmail-edge config describe` lists (as
// "#key = default" under its "[section]"), as "section.key".
func describedKeys(text string) map[string]bool {
	keys := map[string]bool{}
	section := ""
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		rest, ok := strings.CutPrefix(line, "#")
		key, _, hasValue := strings.Cut(rest, "=")
		key = strings.TrimSpace(key)
		if ok && hasValue && key != "" && !strings.HasPrefix(rest, " ") && !strings.ContainsAny(key, " \t") {
			keys[section+"."+key] = true
		}
	}
	return keys
}

// attackEdgeLines are the [edge] lines of the edge under attack besides
// max_connections: its 993 listener, no exemption for loopback (the lab's
// attackers are on loopback) and the per-address limits asked for, each
// only if this edge knows its key. notes say what was set and what not.
func attackEdgeLines(known map[string]bool, imapsPort int, lim edgeLimits) (lines, notes []string) {
	lines = []string{fmt.Sprintf("imaps = 127.0.0.1:%d", imapsPort)}
	notes = []string{fmt.Sprintf("edge: max_connections = %d", lim.MaxConnections)}
	if known["edge.drain_timeout"] {
		// An upgrade's old process keeps its sessions untouched for half of
		// drain_timeout, then says goodbye to them: at 60 s the whole
		// measured window after the upgrade lies in the untouched half.
		lines = append(lines, "drain_timeout = 60s")
		notes = append(notes, "edge: drain_timeout = 60s (sessions untouched for 30 s after an upgrade)")
	}
	for _, kv := range []struct {
		key   string
		value int
		want  bool
	}{
		{"exempt_networks", 0, true},
		{"max_connections_per_address", lim.PerAddressConnections, lim.PerAddressConnections > 0},
		{"max_handshakes_per_address", lim.PerAddressHandshakes, lim.PerAddressHandshakes > 0},
		{"new_connections_per_address", lim.PerAddressNew, lim.PerAddressNew > 0},
	} {
		switch {
		case !kv.want:
		case !known["edge."+kv.key]:
			notes = append(notes, fmt.Sprintf("edge: has no [edge] %s, not set", kv.key))
		case kv.key == "exempt_networks":
			lines = append(lines, "exempt_networks =")
			notes = append(notes, "edge: exempt_networks = (empty: loopback not exempt)")
		default:
			line := fmt.Sprintf("%s = %d", kv.key, kv.value)
			lines = append(lines, line)
			notes = append(notes, "edge: "+line)
		}
	}
	return lines, notes
}

// configureForAttacks rewrites the edge's and chatmail today's nginx
// configuration for the attacks (they take effect at the next restart,
// which every run begins with) and says what it set.
func (l *lab) configureForAttacks(ctx context.Context, lim edgeLimits, chatmailNginx bool) ([]string, error) {
	out, err := exec.CommandContext(ctx, l.edgeBin, "config", "describe").Output()
	if err != nil {
		return nil, fmt.Errorf("list the edge's configuration keys (config describe): %w", err)
	}
	lines, notes := attackEdgeLines(describedKeys(string(out)), l.ports.EdgeIMAPS, lim)
	f := l.edgeFile("edge-imap-state", l.ports.EdgeIMAP, l.ports.DovecotProxy)
	f.MaxConnections, f.Extra = lim.MaxConnections, lines
	if err := os.WriteFile(l.path("edge-imap.ini"), []byte(edgeConf(f)), 0o644); err != nil {
		return nil, fmt.Errorf("write edge-imap.ini: %w", err)
	}
	l.edgeIMAP.Ports = append(l.edgeIMAP.Ports, fmt.Sprintf("127.0.0.1:%d", l.ports.EdgeIMAPS))
	nofile := min(l.fileLimit, 65536)
	if chatmailNginx {
		nofile = 2048 // chatmail's worker_connections and worker_rlimit_nofile
	}
	if err := os.WriteFile(l.path("nginx-today.conf"), []byte(l.todayConf(nofile)), 0o644); err != nil {
		return nil, fmt.Errorf("write nginx-today.conf: %w", err)
	}
	notes = append(notes, fmt.Sprintf("nginx (chatmail today): worker_connections and worker_rlimit_nofile %d, %s", nofile,
		"stream on 443 with ssl_preread by ALPN (imap to Dovecot's 993, default to the HTTPS site); 993 is Dovecot's own"))
	return notes, nil
}

// attackStacks are the edge (with ECH, on 443 and its own 993) and chatmail
// today (nginx passthrough on 443, Dovecot on 993), keyed by name.
func (l *lab) attackStacks(o *attackOptions, edgeUpgrade, nginxUpgrade string) (map[string]attackStack, error) {
	from := []netip.Addr{o.ClientFrom}
	port := func(label string, p int, alpn bool, ech []byte) attackPort {
		t := l.imapTarget(p, ech)
		if !alpn {
			t.ALPN = nil // Delta Chat sends no ALPN on 993
		}
		return attackPort{label, withSourceAddrs(t, from)}
	}
	edge := attackStack{stack: l.edgeStack(true), Ports: []attackPort{
		port("443", l.ports.EdgeIMAP, true, l.echIMAP), port("993", l.ports.EdgeIMAPS, false, l.echIMAP)}}
	today := attackStack{stack: l.todayStack(), Ports: []attackPort{
		port("443", l.ports.Today, true, nil), port("993", l.ports.DovecotTLS, false, nil)}}
	var err error
	if edge.Upgrade, err = upgradeAction(edgeUpgrade, edge, l.edgeBin, l.path("edge-imap.ini")); err != nil {
		return nil, fmt.Errorf("-edge-upgrade: %w", err)
	}
	if today.Upgrade, err = upgradeAction(nginxUpgrade, today, "nginx", l.path("nginx-today.conf")); err != nil {
		return nil, fmt.Errorf("-nginx-upgrade: %w", err)
	}
	return map[string]attackStack{stackEdge: edge, stackToday: today}, nil
}

// stackList is the order the stacks take turns in.
func stackList(m map[string]attackStack) []stack {
	return []stack{m[stackEdge].stack, m[stackToday].stack}
}

var upgradeSignals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM,
	"INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "WINCH": syscall.SIGWINCH,
}

// upgradeAction turns an -edge-upgrade/-nginx-upgrade value into the
// upgrade of s's front end: "restart" stops and starts it (what an edge
// without an upgrade command allows), "signal:NAME" sends a signal to its
// main process, anything else is a shell command with {pid}, {bin} and
// {config} replaced. It returns once the front end accepts connections on
// every port again.
func upgradeAction(spec string, s attackStack, bin, config string) (func(context.Context) error, error) {
	var ports []string
	for _, p := range s.Ports {
		if slices.Contains(s.Front[0].Ports, p.Client.Addr) {
			ports = append(ports, p.Client.Addr)
		}
	}
	listening := func(ctx context.Context) error {
		for _, p := range ports {
			if err := waitListening(ctx, p, 60*time.Second); err != nil {
				return err
			}
		}
		return nil
	}
	front := s.Front[0]
	switch name, isSignal := strings.CutPrefix(spec, "signal:"); {
	case spec == "":
		return nil, fmt.Errorf("%w: empty", errUsage)
	case spec == "restart":
		return s.restartFront, nil
	case isSignal:
		sig, ok := upgradeSignals[strings.TrimPrefix(strings.ToUpper(name), "SIG")]
		if !ok {
			return nil, fmt.Errorf("%w: unknown signal %q", errUsage, name)
		}
		return func(ctx context.Context) error {
			pid, err := runningPID(front)
			if err != nil {
				return err
			}
			if err := syscall.Kill(pid, sig); err != nil {
				return fmt.Errorf("send %v to %s: %w", sig, front.Name, err)
			}
			return listening(ctx)
		}, nil
	}
	return func(ctx context.Context) error {
		pid, err := runningPID(front)
		if err != nil {
			return err
		}
		line := expandUpgradeCommand(spec, pid, bin, config)
		cmd := exec.CommandContext(ctx, "sh", "-c", line)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("run %q: %w: %s", line, err, strings.TrimSpace(string(out)))
		}
		return listening(ctx)
	}, nil
}

// runningPID is d's main process; never 0, which kill(2) would take for
// the tool's own process group.
func runningPID(d *daemon) (int, error) {
	if pid := d.PID(); pid > 0 {
		return pid, nil
	}
	return 0, fmt.Errorf("upgrade %s: it is not running (an earlier upgrade may have replaced its process)", d.Name)
}

func expandUpgradeCommand(spec string, pid int, bin, config string) string {
	return strings.NewReplacer("{pid}", strconv.Itoa(pid), "{bin}", bin, "{config}", config).Replace(spec)
}
