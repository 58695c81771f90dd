//go:build integration

package integration

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/servicemanager"
)

// edgeProcess is the real chatmail-edge binary serving a relay, run as
// systemd runs it (servicemanager), for what only a process can show: an
// upgrade hands the listening sockets to a new process, a restart leaves
// them with systemd.
type edgeProcess struct {
	bin, config string
	m           *servicemanager.Manager
}

// startEdgeProcess writes the edge's configuration for r (its daemons in
// r.mode, the daemons' certificate, every listener on a loopback port the
// first process picks) and starts it; r then dials its listeners.
func (r *relay) startEdgeProcess(t *testing.T, bin string, drainTimeout time.Duration) *edgeProcess {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "chatmail.ini"), "[params]\nmail_domain = "+domain+"\n", 0o644)
	p := &edgeProcess{bin: bin, config: filepath.Join(dir, "chatmail-edge.ini")}
	writeFile(t, p.config, fmt.Sprintf(`[edge]
chatmail_ini = %[1]s/chatmail.ini
state_dir = %[1]s/state
https = 127.0.0.1:0
imaps = 127.0.0.1:0
smtps = 127.0.0.1:0
http =
control_socket = %[1]s/control
drain_timeout = %[2]v
[ech]
metadata_file = %[1]s/ech-config-list
[admin]
address =
[imap]
backend = %[3]s
address = %[4]s
[smtp]
backend = %[3]s
address = %[5]s
[tls]
cert = %[6]s
key = %[7]s
[web]
mxdeliv_upstream =
iroh_relay_upstream =
new_account_cgi =
site_dir = %[1]s/site
`, dir, drainTimeout, r.mode, r.dovecot.Backend, r.postfix.Backend, r.certFile, r.keyFile), 0o644)
	journal := logFile(filepath.Join(dir, "journal"))
	out, err := os.Create(string(journal))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	dumpOnFailure(t, journal)
	p.m = servicemanager.New(t, servicemanager.Unit{Binary: bin, Args: []string{"serve", "--config", p.config}, Stderr: out})
	t.Cleanup(func() {
		for _, problem := range p.m.Problems() {
			t.Errorf("systemd would object: %s", problem)
		}
	})
	if _, err := p.m.Start(time.Minute); err != nil {
		t.Fatal(err)
	}
	r.addrs = map[string]string{}
	for _, name := range []string{"https", "imaps", "smtps"} {
		if r.addrs[name], err = p.m.Addr(name, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	list, err := os.ReadFile(filepath.Join(dir, "ech-config-list"))
	if err != nil {
		t.Fatal(err)
	}
	if r.echList, err = base64.StdEncoding.DecodeString(strings.TrimSpace(string(list))); err != nil {
		t.Fatal(err)
	}
	return p
}

// upgrade runs `chatmail-edge upgrade` and waits for the new process to be
// the main one; it returns the old and the new process.
func (p *edgeProcess) upgrade() (old, pid int, err error) {
	old = p.m.MainPID()
	out, err := exec.Command(p.bin, "upgrade", "--config", p.config).CombinedOutput()
	if err != nil {
		return old, 0, fmt.Errorf("upgrade: %w: %s", err, out)
	}
	pid, err = p.m.WaitNewMain(old, time.Minute)
	return old, pid, err
}
