// Command bench is chatmail-edge's load tool (issue 7). Its four load modes
// work against any TLS endpoint and measure the server processes from /proc;
// `lab`, `figure` and `all` start the edge and today's nginx/Dovecot
// baselines side by side and print the table of issue 7; `attack` runs the
// attacks of issue 16 against the edge and chatmail's nginx in the same lab.
//
// Run it from the repository root: go run ./bench MODE [flags].
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

const usage = `bench: load tool and baselines for chatmail-edge (issue 7). Run from the repository root.

Load modes, against any TLS endpoint (measure the servers with -pids, -procs or -cgroup):
  go run ./bench handshake [flags]  N connections, full or resumed, with or without ECH:
                                    handshakes/s and server CPU per connection
  go run ./bench idle [flags]       hold N idle connections: server RSS per connection
  go run ./bench bulk [flags]       move data up, down or both ways: MB/s and server CPU per GB
  go run ./bench storm [flags]      N clients within one second, optionally after a restart
  go run ./bench backend [flags]    the plaintext backend the bulk figures need (greeting, SINK/SOURCE/ECHO)

With the baselines (starts nginx, Dovecot, the edge and the backend; root; installs missing packages):
  go run ./bench lab [flags]          start everything, print the addresses and PIDs, wait for Ctrl-C
  go run ./bench figure NAME [flags]  one figure of issue 7: handshake, idle, idle-traffic, bulk, storm, resume
  go run ./bench all [flags]          every figure, then the table
  go run ./bench attack [flags]       attacks (slow hello, dribble, plaintext, per-address flood, upgrade storm)
                                      on the edge and on chatmail's nginx passthrough: a legitimate
                                      client's time to its IMAP greeting meanwhile (issue 16)

Run "go run ./bench MODE -h" for a mode's flags; docs/BENCHMARKS.md explains each figure.
`

var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	mode, args := args[0], args[1:]
	switch mode {
	case "handshake":
		return cmdHandshake(ctx, args, stdout, stderr)
	case "idle":
		return cmdIdle(ctx, args, stdout, stderr)
	case "bulk":
		return cmdBulk(ctx, args, stdout, stderr)
	case "storm":
		return cmdStorm(ctx, args, stdout, stderr)
	case "backend":
		return cmdBackend(ctx, args)
	case "lab":
		return cmdLab(ctx, args, stdout, stderr)
	case "figure":
		return cmdFigure(ctx, args, stdout, stderr)
	case "all":
		return cmdAll(ctx, args, stdout, stderr)
	case "attack":
		return cmdAttack(ctx, args, stdout, stderr)
	}
	return fmt.Errorf("%w: unknown mode %q (see go run ./bench help)", errUsage, mode)
}

// printer is a load mode's result.
type printer interface{ print(io.Writer) }

// runMode parses a load mode's flags, resolves the endpoint and the server
// processes, runs the mode and prints its result.
func runMode(fs *flag.FlagSet, ef *endpointFlags, args []string, stdout io.Writer, measure func(*target, []procGroup) (printer, error)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	t, err := ef.target()
	if err != nil {
		return err
	}
	groups, err := ef.groups()
	if err != nil {
		return err
	}
	if _, err := raiseFileLimit(); err != nil {
		return err
	}
	res, err := measure(t, groups)
	if err != nil {
		return err
	}
	res.print(stdout)
	return nil
}

func cmdHandshake(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("handshake", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ef := addEndpointFlags(fs, 1)
	var cfg handshakeConfig
	fs.IntVar(&cfg.N, "n", 2000, "connections measured")
	fs.IntVar(&cfg.Concurrency, "c", 16, "connections at once")
	fs.BoolVar(&cfg.Resume, "resume", false, "resumed handshakes: a first pass collects one TLS 1.3 ticket per client, the measured pass offers it")
	fs.IntVar(&cfg.Warmup, "warmup", 200, "unmeasured connections before the measured pass")
	return runMode(fs, ef, args, stdout, func(t *target, groups []procGroup) (printer, error) {
		cfg.Timeout = ef.timeout
		return runHandshakes(ctx, t, groups, cfg)
	})
}

func cmdIdle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ef := addEndpointFlags(fs, 4)
	var cfg idleConfig
	var traffic int64
	fs.IntVar(&cfg.N, "n", 10000, "connections to hold")
	fs.IntVar(&cfg.Concurrency, "c", 32, "connections opened at once")
	sizeVar(fs, &traffic, "traffic", 0, "bytes to echo each way per connection before going idle, e.g. 64KiB (the backend must be `bench backend`)")
	fs.DurationVar(&cfg.SettleTimeout, "settle", 30*time.Second, "longest wait for the servers' RSS to settle")
	fs.DurationVar(&cfg.Hold, "hold", 0, "keep the connections this much longer after measuring")
	return runMode(fs, ef, args, stdout, func(t *target, groups []procGroup) (printer, error) {
		cfg.Traffic, cfg.Timeout = int(traffic), ef.timeout
		return runIdle(ctx, t, groups, cfg)
	})
}

func cmdBulk(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bulk", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ef := addEndpointFlags(fs, 1)
	var cfg bulkConfig
	dir := fs.String("dir", "both", "up (client to backend), down, or both at once")
	fs.IntVar(&cfg.Conns, "conns", 1, "connections carrying the data at once")
	sizeVar(fs, &cfg.Bytes, "bytes", 512<<20, "bytes per direction, split over the connections")
	return runMode(fs, ef, args, stdout, func(t *target, groups []procGroup) (printer, error) {
		var err error
		if cfg.Direction, err = parseDirection(*dir); err != nil {
			return nil, fmt.Errorf("%w: -dir: %v", errUsage, err)
		}
		cfg.Timeout = max(ef.timeout, 10*time.Minute)
		return runBulk(ctx, t, groups, cfg)
	})
}

func cmdStorm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("storm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ef := addEndpointFlags(fs, 4)
	var cfg stormConfig
	fs.IntVar(&cfg.N, "n", 10000, "clients")
	fs.DurationVar(&cfg.Window, "window", time.Second, "the clients start evenly within this time")
	fs.BoolVar(&cfg.Tickets, "tickets", false, "connect every client once first to collect a session ticket, which the storm offers")
	fs.IntVar(&cfg.Concurrency, "c", 32, "connections at once while collecting tickets")
	restartCmd := fs.String("restart-cmd", "", "shell command run after collecting tickets, e.g. \"systemctl restart chatmail-edge\"; the storm starts once -addr accepts connections again")
	fs.DurationVar(&cfg.Sample, "sample", 20*time.Millisecond, "RSS sampling period for the peak")
	fs.BoolVar(&cfg.PrepareHellos, "prepare-hellos", true, "build every client's ClientHello (key shares, ECH encryption, PSK binders) before the storm starts, as clients do on their own devices; false builds each at its connect, on this machine's cores")
	return runMode(fs, ef, args, stdout, func(t *target, groups []procGroup) (printer, error) {
		cfg.Timeout = ef.timeout
		if *restartCmd != "" {
			cfg.Restart = func(ctx context.Context) error {
				cmd := exec.CommandContext(ctx, "sh", "-c", *restartCmd)
				cmd.Stdout, cmd.Stderr = stderr, stderr
				if err := cmd.Run(); err != nil {
					return fmt.Errorf("run %q: %w", *restartCmd, err)
				}
				return waitListening(ctx, t.Addr, 60*time.Second)
			}
		}
		return runStorm(ctx, t, groups, cfg)
	})
}

// waitListening waits until addr accepts TCP connections.
func waitListening(ctx context.Context, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not accept connections after %v: %w", addr, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
