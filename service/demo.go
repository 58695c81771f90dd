package service

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"chatmail-edge/acme"
	"chatmail-edge/edge"
	"chatmail-edge/mail"
	"chatmail-edge/metadata"
)

// DemoConfig holds the demo's flags: a stable contract that scripts use.
type DemoConfig struct {
	StateDir  string
	Domain    string
	Host      string
	HTTPSPort int
	IMAPSPort int
	SMTPSPort int
	HTTPPort  int
	AdminPort int // loopback admin listener: detailed status page and metrics

	// Not flags: tests point the demo at their own upstreams and files.
	web demoWeb
}

func DefaultDemoState() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "chatmail-edge", "demo")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "chatmail-edge", "demo")
	}
	return filepath.Join(os.TempDir(), "chatmail-edge-demo")
}

// Demo is a running demo: the Service with the in-process mail delivery
// behind it and certificates from its own CA.
type Demo struct {
	*Service
	cfg      DemoConfig
	delivery *mail.LocalDelivery
	standIns *demoStandIns
	ca       *acme.LocalCA
	user     string
	password string
}

func StartDemo(c DemoConfig, log *zap.Logger) (*Demo, error) {
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state folder: %w", err)
	}
	now := time.Now()
	ca, err := acme.LoadOrCreateLocalCA(c.StateDir, now)
	if err != nil {
		return nil, err
	}
	names := []string{c.Domain, "www." + c.Domain, "mta-sts." + c.Domain, "autoconfig." + c.Domain, "localhost"}
	if ip := net.ParseIP(c.Host); ip != nil {
		names = append(names, ip.String())
	} else if c.Host != "" {
		names = append(names, c.Host)
	}
	leaf, err := ca.Leaf(c.StateDir, names, now)
	if err != nil {
		return nil, err
	}
	certs := &certs{Source: acme.NewStatic(leaf, acme.ModeLocalCA)}

	delivery := mail.NewLocalDelivery(c.Domain, log.Named("delivery"))
	// GETMETADATA "" answers the ECH entry from the file the instance
	// publishes, as Dovecot does through the metadata proxy on a relay.
	delivery.SetServerMetadata(metadata.NewECHFile(c.metadataFile(), log.Named("metadata")).ServerEntry)
	if err := delivery.Start(); err != nil {
		return nil, fmt.Errorf("start local delivery: %w", err)
	}
	standIns, err := startDemoStandIns(delivery, c.maxMessageSize(), log.Named("standin"))
	if err != nil {
		delivery.Close()
		return nil, err
	}
	d := &Demo{cfg: c, delivery: delivery, standIns: standIns, ca: ca}
	addr := func(port int) string { return net.JoinHostPort(c.Host, strconv.Itoa(port)) }
	svc, err := startService(context.Background(), instanceConfig{
		Domain:   c.Domain,
		StateDir: c.StateDir,
		Edge: edge.Config{
			Listeners: []edge.ListenerConfig{
				{Name: "https", Address: addr(c.HTTPSPort), Kind: edge.KindMux},
				{Name: "imaps", Address: addr(c.IMAPSPort), Kind: edge.KindIMAP},
				{Name: "smtps", Address: addr(c.SMTPSPort), Kind: edge.KindSMTP},
			},
			Hostname: c.Domain,
		},
		HTTPAddr:  addr(c.HTTPPort),
		HTTPSPort: c.HTTPSPort,
		Backends: func() (edge.Backends, error) {
			return demoBackends(delivery)
		},
		NewAccount: delivery.CreateAccount,

		Web:          c.webConfig(standIns),
		AdminAddr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(c.AdminPort)),
		MetadataFile: c.metadataFile(),
	}, certs, nil, nil, log, nil)
	if err != nil {
		standIns.Close()
		delivery.Close()
		return nil, err
	}
	d.Service = svc
	if d.user, d.password, err = delivery.CreateAccount(); err != nil {
		d.Shutdown()
		return nil, fmt.Errorf("create the demo account: %w", err)
	}
	return d, nil
}

// demoBackends reach the local delivery in proxy mode, so that the demo
// exercises PROXY v2 exactly as a relay in full mode does.
func demoBackends(delivery *mail.LocalDelivery) (edge.Backends, error) {
	imapB, err := mail.NewBackend(mail.BackendConfig{Protocol: mail.IMAP, Mode: mail.ModeProxy, Address: delivery.IMAPAddr()})
	if err != nil {
		return edge.Backends{}, err
	}
	smtpB, err := mail.NewBackend(mail.BackendConfig{Protocol: mail.SMTP, Mode: mail.ModeProxy, Address: delivery.SMTPAddr()})
	if err != nil {
		return edge.Backends{}, err
	}
	return edge.Backends{IMAP: imapB, SMTP: smtpB}, nil
}

func (d *Demo) Shutdown() {
	if d.Service != nil {
		d.Service.Shutdown()
	}
	d.standIns.Close()
	d.delivery.Close()
}

func (d *Demo) port(name string) int { return d.edge.Addr(name).(*net.TCPAddr).Port }

// ProbeArgs are the arguments of a `probe` of this demo (the command and
// its flags, without the domain and the account).
func (d *Demo) ProbeArgs() []string {
	return []string{"probe", "--ca", d.ca.CertFile, "--connect", d.cfg.Host,
		"--https-port", strconv.Itoa(d.port("https")), "--imaps-port", strconv.Itoa(d.port("imaps")),
		"--smtps-port", strconv.Itoa(d.port("smtps"))}
}

// PrintBanner writes what the demo serves, a probe command and the demo
// account, and "ready".
func (d *Demo) PrintBanner(w io.Writer) {
	keys := d.echKeys.Load()
	httpPort := 0
	if d.httpLn != nil {
		httpPort = d.httpLn.Addr().(*net.TCPAddr).Port
	}
	probe := append([]string{probeCommand()}, d.ProbeArgs()...)
	probe = append(probe, "--user", d.user, "--password", shellQuote(d.password), d.cfg.Domain)
	fmt.Fprintf(w, "chatmail-edge demo for %s (state folder %s)\n\n", d.cfg.Domain, d.cfg.StateDir)
	row := func(k, v string) { fmt.Fprintf(w, "  %-28s %s\n", k, v) }
	row("HTTPS, IMAP+SMTP by ALPN", net.JoinHostPort(d.cfg.Host, strconv.Itoa(d.port("https"))))
	row("IMAPS", net.JoinHostPort(d.cfg.Host, strconv.Itoa(d.port("imaps"))))
	row("SMTPS (submission)", net.JoinHostPort(d.cfg.Host, strconv.Itoa(d.port("smtps"))))
	if httpPort != 0 {
		row("HTTP (redirects to HTTPS)", net.JoinHostPort(d.cfg.Host, strconv.Itoa(httpPort)))
	}
	row("CA certificate", d.ca.CertFile)
	row("ECH config list (base64)", keys.Base64())
	d.printWebRows(row)
	row("demo account", d.user+" / "+d.password)
	fmt.Fprintf(w, "\nCheck it, with ECH, from another terminal:\n  %s\n\n", strings.Join(probe, " "))
	fmt.Fprintln(w, "ready")
}

// probeCommand is how the user runs this binary: "go run ." when it was
// built by go run, else its path.
func probeCommand() string {
	exe, err := os.Executable()
	if err != nil || strings.Contains(exe, string(filepath.Separator)+"go-build") {
		return "go run ."
	}
	return exe
}

// shellQuote quotes s for a POSIX shell when it holds special characters.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./-_", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
