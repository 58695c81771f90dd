package web

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"chatmail-edge/internal/testserver"
	"chatmail-edge/mail"

	"go.uber.org/zap/zaptest"
)

// healthServer is a web server with the given probes only.
func healthServer(t *testing.T, probes ...Probe) *Server {
	t.Helper()
	s, err := New(Config{Domain: "chat.example", ProbeInterval: time.Hour}, Deps{Log: zaptest.NewLogger(t), Probes: probes})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// spinningIMAPBackend is an IMAP daemon whose greeting made go-imap
// v2.0.0-beta.8's client loop forever; it then says nothing more.
func spinningIMAPBackend(t *testing.T) *mail.Backend {
	t.Helper()
	addr := testserver.Serve(t, func(conn net.Conn) { conn.Write([]byte("* OK [CAPABILITY (IMAP4rev1)] x\r\n")) })
	b, err := mail.NewBackend(mail.BackendConfig{Protocol: mail.IMAP, Mode: mail.ModeProxy, Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// returnedInTime is what a wrapped Run reports when it returns: whether
// before its context's deadline.
type returnedInTime struct {
	beforeDeadline bool
	err            error
}

// reporting wraps run so that each return is sent on the channel.
func reporting(run func(context.Context) error) (func(context.Context) error, <-chan returnedInTime) {
	returned := make(chan returnedInTime, 16)
	return func(ctx context.Context) error {
		err := run(ctx)
		deadline, _ := ctx.Deadline()
		returned <- returnedInTime{time.Now().Before(deadline), err}
		return err
	}, returned
}

// TestHealthSpinningIMAPGreeting: the backend whose greeting made the probe
// spin a core forever shows as down with the reason, from a check that has
// returned: nothing is left spinning.
func TestHealthSpinningIMAPGreeting(t *testing.T) {
	b := spinningIMAPBackend(t)
	run, returned := reporting(func(ctx context.Context) error { _, err := b.Probe(ctx); return err })
	s := healthServer(t, Probe{Name: "IMAP", Target: b.Config().Address, Run: run})

	s.CheckHealth(t.Context())
	select {
	case r := <-returned:
		if !r.beforeDeadline {
			t.Errorf("the probe returned only at its deadline: %v", r.err)
		}
	default:
		t.Fatal("CheckHealth returned while the probe's Run had not")
	}
	h := s.Health()[0]
	if h.Up || h.Checked.IsZero() || !strings.Contains(h.Error, "imap greeting: ") || !strings.Contains(h.Error, `"(IMAP4rev1)" is not an atom`) {
		t.Fatalf("IMAP health %+v, want down with the greeting's fault", h)
	}
	admin := do(s.AdminHandler(), "GET", "http://127.0.0.1:8081/").Body.String()
	if !strings.Contains(admin, "imap greeting: ") || !strings.Contains(admin, "down") {
		t.Errorf("the admin page does not show IMAP down with the reason")
	}
}

// TestWatchHealthShowsSpinningGreetingAtOnce: WatchHealth's first round,
// at its start, shows the backend down, well within one probe interval.
func TestWatchHealthShowsSpinningGreetingAtOnce(t *testing.T) {
	b := spinningIMAPBackend(t)
	run, returned := reporting(func(ctx context.Context) error { _, err := b.Probe(ctx); return err })
	s := healthServer(t, Probe{Name: "IMAP", Target: b.Config().Address, Run: run})
	stop := make(chan struct{})
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		s.WatchHealth(stop)
	}()
	defer func() {
		close(stop)
		<-watching
	}()

	if r := <-returned; !r.beforeDeadline || r.err == nil {
		t.Fatalf("the first probe returned %v, before its deadline %v; want an error before it", r.err, r.beforeDeadline)
	}
	waitRecorded(s, 0)
	if h := s.Health()[0]; h.Up || !strings.Contains(h.Error, "imap greeting: ") {
		t.Errorf("IMAP health %+v, want down with the greeting's fault", h)
	}
}

// waitRecorded returns once the Run of probe i under way, which has been
// started, has returned and its result (if any) is recorded: the flight is
// cleared and its result recorded in one step, and done closed after it.
func waitRecorded(s *Server, i int) {
	s.health.mu.Lock()
	f := s.health.flights[i]
	s.health.mu.Unlock()
	if f != nil {
		<-f.done
	}
}

// stuckProbe is a Run that ignores its context until released, as a probe
// with a bug would; it reports each start.
type stuckProbe struct {
	started chan struct{}
	release chan struct{}
	mu      sync.Mutex
	calls   int
}

func newStuckProbe(t *testing.T) *stuckProbe {
	p := &stuckProbe{started: make(chan struct{}, 16), release: make(chan struct{})}
	t.Cleanup(p.free)
	return p
}

func (p *stuckProbe) Run(context.Context) error {
	p.mu.Lock()
	p.calls++
	p.mu.Unlock()
	p.started <- struct{}{}
	<-p.release
	return nil
}

func (p *stuckProbe) free() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.release:
	default:
		close(p.release)
	}
}

func (p *stuckProbe) callCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls
}

// TestWatchHealthStopsDespiteStuckProbe: shutdown never waits on a probe.
func TestWatchHealthStopsDespiteStuckProbe(t *testing.T) {
	stuck := newStuckProbe(t)
	s := healthServer(t, Probe{Name: "IMAP", Run: stuck.Run})
	stop := make(chan struct{})
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		s.WatchHealth(stop)
	}()
	<-stuck.started
	close(stop)
	watchdog := time.NewTimer(10 * time.Second) // far less than the probe's own bound of 12 s
	defer watchdog.Stop()
	select {
	case <-watching:
	case <-watchdog.C:
		t.Fatal("WatchHealth did not return after stop while a probe was stuck")
	}
	if h := s.Health()[0]; !h.Checked.IsZero() {
		t.Errorf("a probe cut short by shutdown was recorded: %+v", h)
	}
}

// TestHealthStuckProbeIsDownNotRepeated: a Run that does not return counts
// as down after its bound, the round goes on, and no second Run starts
// until the stuck one returns.
func TestHealthStuckProbeIsDownNotRepeated(t *testing.T) {
	stuck := newStuckProbe(t)
	s := healthServer(t, Probe{Name: "IMAP", Run: stuck.Run}, Probe{Name: "SMTP", Run: func(context.Context) error { return nil }})
	s.health.timeout, s.health.grace = 50*time.Millisecond, 50*time.Millisecond

	s.CheckHealth(t.Context())
	if h := s.Health(); h[0].Up || !strings.Contains(h[0].Error, "no result within 100ms: the check did not return") || !h[1].Up {
		t.Fatalf("health %+v, want IMAP down for not returning, SMTP up", h)
	}
	s.CheckHealth(t.Context())
	if h := s.Health()[0]; h.Up || !strings.Contains(h.Error, "has not returned yet") || h.Failures != 2 {
		t.Errorf("IMAP health %+v, want still down, 2 failures", h)
	}
	if n := stuck.callCount(); n != 1 {
		t.Errorf("Run called %d times, want once while it is stuck", n)
	}

	// Once it returns, the next round runs it again.
	stuck.free()
	waitRecorded(s, 0)
	s.CheckHealth(t.Context())
	if h := s.Health()[0]; !h.Up || stuck.callCount() != 2 {
		t.Errorf("IMAP health %+v after %d calls, want up after 2", h, stuck.callCount())
	}
}
