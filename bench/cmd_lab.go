package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func cmdLab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts := addLabFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := startLab(ctx, *opts, stderr)
	if err != nil {
		return err
	}
	defer l.close()
	p := l.ports
	pids := func(ds ...*daemon) string {
		var s []string
		for _, d := range ds {
			s = append(s, strconv.Itoa(d.PID()))
		}
		return strings.Join(s, ",")
	}
	fmt.Fprintf(stdout, "lab folder %s (configs, logs); CA %s\n\n", l.dir, l.caFile)
	fmt.Fprintf(stdout, "edge to Dovecot      127.0.0.1:%d  (ALPN imap, ECH %s)\n", p.EdgeIMAP, base64.StdEncoding.EncodeToString(l.echIMAP))
	fmt.Fprintf(stdout, "edge to the backend  127.0.0.1:%d  (ALPN imap, ECH %s)\n", p.EdgeEcho, base64.StdEncoding.EncodeToString(l.echEcho))
	fmt.Fprintf(stdout, "chatmail today       127.0.0.1:%d  (ALPN imap; nginx ssl_preread to Dovecot 127.0.0.1:%d)\n", p.Today, p.DovecotTLS)
	fmt.Fprintf(stdout, "nginx termination    127.0.0.1:%d  to Dovecot, 127.0.0.1:%d to the backend\n", p.TermIMAP, p.TermEcho)
	fmt.Fprintf(stdout, "Dovecot haproxy=yes  127.0.0.1:%d; bench backend 127.0.0.1:%d (PROXY header first)\n\n", p.DovecotProxy, p.BackendProxy)
	fmt.Fprintf(stdout, "PIDs: edge to Dovecot %s, edge to the backend %s, nginx today %s, nginx termination %s, Dovecot %s, backend %s\n\n",
		pids(l.edgeIMAP), pids(l.edgeEcho), pids(l.nginxToday), pids(l.nginxTerm), pids(l.dovecot), pids(l.backend))
	fmt.Fprintf(stdout, "for example:\n  go run ./bench handshake -addr 127.0.0.1:%d -alpn imap -server-name %s -ech %s -pids %s\n",
		p.EdgeIMAP, benchDomain, base64.StdEncoding.EncodeToString(l.echIMAP), pids(l.edgeIMAP, l.dovecot))
	fmt.Fprintf(stdout, "  go run ./bench bulk -addr 127.0.0.1:%d -alpn imap -server-name %s -pids %s -conns 8\n\n", p.TermEcho, benchDomain, pids(l.nginxTerm))
	fmt.Fprintln(stdout, "(PIDs change when a figure restarts a process; -procs nginx,dovecot,chatmail-edge finds them by name.) Ctrl-C stops everything.")
	<-ctx.Done()
	return nil
}

func cmdFigure(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var names []string
	for _, f := range figures {
		names = append(names, f.Name)
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return fmt.Errorf("%w: figure NAME [flags], NAME one of %s", errUsage, strings.Join(names, ", "))
	}
	for _, f := range figures {
		if f.Name == args[0] {
			return runFigures(ctx, "figure "+f.Name, []figure{f}, args[1:], stdout, stderr)
		}
	}
	return fmt.Errorf("%w: unknown figure %q, want one of %s", errUsage, args[0], strings.Join(names, ", "))
}

func cmdAll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runFigures(ctx, "all", figures, args, stdout, stderr)
}

// runFigures starts the lab, runs the figures (printing each one's rows as
// it completes) and then the whole table.
func runFigures(ctx context.Context, name string, figs []figure, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	opts := addLabFlags(fs)
	fo := addFigureFlags(fs)
	jsonFile := fs.String("json", "", "also write every row with its per-run values to this JSON file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if fo.Runs < 1 {
		return fmt.Errorf("%w: -runs must be at least 1", errUsage)
	}
	l, err := startLab(ctx, *opts, stderr)
	if err != nil {
		return err
	}
	defer l.closeKeepingOnError(&err)

	started := time.Now()
	noise := startNoiseMeter()
	var rows []row
	for _, f := range figs {
		fmt.Fprintf(stderr, "== %s: %s\n", f.Name, f.What)
		var fr []row
		fr, err = f.Run(ctx, l, fo, stderr)
		if err != nil {
			if len(rows) > 0 {
				fmt.Fprintf(stdout, "## %s, stopped by a failure; the figures measured before it\n\n", name)
				printTable(stdout, rows)
			}
			return fmt.Errorf("figure %s: %w", f.Name, err)
		}
		printTable(stderr, fr)
		rows = append(rows, fr...)
	}
	header := fmt.Sprintf("## %s, %s\n\n%s\nRuns per figure: %d; took %v. %s\n", name, started.Format(time.DateTime),
		machineInfo(l), fo.Runs, time.Since(started).Round(time.Second), noise.report())
	fmt.Fprintln(stdout, header)
	printTable(stdout, rows)
	fmt.Fprintln(stdout)
	printDetails(stdout, rows)
	if *jsonFile != "" {
		return writeJSON(*jsonFile, header, rows)
	}
	return nil
}

// machineInfo describes where the figures were measured.
func machineInfo(l *lab) string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	debian, _ := os.ReadFile("/etc/debian_version")
	version := func(argv ...string) string {
		out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		return strings.TrimSpace(string(out))
	}
	pin := "servers unpinned, sharing every CPU with the load generator"
	if l.opts.ServerCPUs != "" {
		pin = "servers pinned to CPUs " + l.opts.ServerCPUs
	}
	return fmt.Sprintf("Machine: %d × %s, Linux %s, Debian %s, %s; %s, %s, %s; %s; open-file limit %d.",
		runtime.NumCPU(), model, strings.TrimSpace(string(kernel)), strings.TrimSpace(string(debian)), runtime.Version(),
		version("nginx", "-v"), "Dovecot "+version("dovecot", "--version"), version(l.edgeBin, "version"), pin, l.fileLimit)
}

// noiseMeter tells how busy the machine was with work other than the
// bench's own (the load generator, and everything it started).
type noiseMeter struct {
	start      time.Time
	busy, self time.Duration
}

func startNoiseMeter() *noiseMeter {
	return &noiseMeter{start: time.Now(), busy: machineBusy(), self: selfAndChildrenCPU()}
}

func (m *noiseMeter) report() string {
	wall := time.Since(m.start).Seconds() * float64(runtime.NumCPU())
	busy := (machineBusy() - m.busy).Seconds()
	self := (selfAndChildrenCPU() - m.self).Seconds()
	return fmt.Sprintf("Machine CPU busy %.0f%% of all cores during the runs; work outside the bench took about %.0f%%.",
		100*busy/wall, 100*max(0, busy-self)/wall)
}

// machineBusy is the non-idle CPU time of the machine (/proc/stat).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * clockTick
}

// selfAndChildrenCPU is the bench's own CPU time plus that of the processes
// it started: those still running (with their helpers) and, through
// cutime/cstime, those it has reaped.
func selfAndChildrenCPU() time.Duration {
	procs, err := readProcs()
	if err != nil {
		return 0
	}
	var t uint64
	for _, pid := range descendants(procs, []int{os.Getpid()}) {
		t += procs[pid].Ticks
	}
	return time.Duration(t) * clockTick
}
