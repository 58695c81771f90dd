//go:build integration

package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"chatmail-edge/mail"
)

// dovecotConf is chatmail's dovecot.conf.j2 (chatmail/relay,
// cmdeploy/src/cmdeploy/dovecot/dovecot.conf.j2) cut down to what the edge
// touches: IMAP login with ssl = required and TLS 1.3, the high-performance
// login processes, LMTP delivery from Postfix and SASL for Postfix, both on
// sockets in Postfix's queue folder as on a relay. It runs from its own
// folder (base_dir, state_dir, log_path), so that it never meets the
// system's Dovecot. Listeners holds the mode's listeners, Extra a test's
// own settings.
var dovecotConf = template.Must(template.New("dovecot.conf").Parse(`# Written by the chatmail-edge integration tests.
base_dir = {{.Dir}}/run
state_dir = {{.Dir}}/state
instance_name = {{.Instance}}
log_path = {{.Dir}}/dovecot.log
listen = 127.0.0.1

protocols = imap lmtp
auth_mechanisms = plain
auth_verbose = yes
imap_capability = +XDELTAPUSH XCHATMAIL

passdb {
  driver = passwd-file
  args = scheme=PLAIN {{.Dir}}/users
}
userdb {
  driver = static
  args = uid={{.UID}} gid={{.GID}}
}
mail_location = maildir:{{.Dir}}/mail/%u
lmtp_add_received_header = no

service lmtp {
  unix_listener {{.Spool}}/private/dovecot-lmtp {
    group = postfix
    mode = 0600
    user = postfix
  }
}
service auth {
  unix_listener {{.Spool}}/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}

service imap-login {
  # High-performance mode, as chatmail: one login process serves many
  # clients and, in tls mode, keeps proxying their TLS after login.
  service_count = 0
  process_min_avail = 1
  # Not chatmail: the suite has no use for 143 (and must not take it).
  inet_listener imap {
    port = 0
  }
}

ssl = required
ssl_cert = <{{.Cert}}
ssl_key = <{{.Key}}
ssl_min_protocol = TLSv1.3
ssl_prefer_server_ciphers = yes

{{.Listeners}}{{.Extra}}`))

// dovecotTLSListener moves chatmail's imaps (Dovecot's default 993, implicit
// TLS) to a test port; tls mode needs nothing else.
const dovecotTLSListener = `service imap-login {
  inet_listener imaps {
    address = 127.0.0.1
    port = %d
  }
}
`

// dovecot is one Dovecot instance of a test, run as `dovecot -F` (the
// systemd unit's way) in its own process group.
type dovecot struct {
	conf string
	log  logFile
	out  string // the master's stdout and stderr, for startup failures
	// Backend is where the edge reaches IMAP: imaps in tls mode, the
	// haproxy listener in proxy mode.
	Backend string

	cmd  *exec.Cmd
	done chan struct{} // closed when the master has exited and was reaped
}

// startDovecot writes the configuration for mode into dir and starts
// Dovecot, with its LMTP and auth sockets in spool/private for Postfix. It is
// stopped when the test ends.
func startDovecot(t *testing.T, dir, spool string, mode mail.Mode, cert, key string, users map[string]string, extra string) *dovecot {
	t.Helper()
	d := &dovecot{
		conf: filepath.Join(dir, "dovecot.conf"),
		log:  logFile(filepath.Join(dir, "dovecot.log")),
		out:  filepath.Join(dir, "dovecot.out"),
	}
	uid, gid := mailOwner(t)
	port := freePort(t)
	d.Backend = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	listeners := fmt.Sprintf(dovecotTLSListener, port)
	if mode == mail.ModeProxy {
		listeners = forTest(dovecotProxyDropIn, proxyDovecotPort, port)
	}
	var conf strings.Builder
	err := dovecotConf.Execute(&conf, map[string]any{
		"Dir": dir, "Spool": spool, "Instance": "cme-test-" + strconv.Itoa(port), "UID": uid, "GID": gid,
		"Cert": cert, "Key": key, "Listeners": listeners, "Extra": extra,
	})
	if err != nil {
		t.Fatal(err)
	}
	var passwd strings.Builder
	for u, p := range users {
		fmt.Fprintf(&passwd, "%s:{PLAIN}%s\n", u, p)
	}
	writeFile(t, d.conf, conf.String(), 0o644)
	// Read by the auth process, which runs as the dovecot user.
	writeFile(t, filepath.Join(dir, "users"), passwd.String(), 0o644)
	mailDir := filepath.Join(dir, "mail")
	if err := os.Mkdir(mailDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(mailDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	dumpOnFailure(t, d.log, logFile(d.out))
	t.Cleanup(func() {
		if err := d.stopProcesses(); err != nil {
			t.Errorf("stop dovecot: %v", err)
		}
	})
	d.start(t)
	return d
}

// mailOwner is the uid and gid that own the test mailboxes: nobody's, an
// unprivileged account that no daemon runs as, like chatmail's vmail.
func mailOwner(t *testing.T) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// start runs the master and waits until it has bound its listeners: it logs
// "starting up" after that (master/main.c binds in main_preinit).
func (d *dovecot) start(t *testing.T) {
	t.Helper()
	offset := d.log.size()
	out, err := os.OpenFile(d.out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	d.cmd = exec.Command("dovecot", "-F", "-c", d.conf)
	d.cmd.Stdout, d.cmd.Stderr = out, out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start dovecot: %v", err)
	}
	d.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		cmd.Wait()
		close(done)
	}(d.cmd, d.done)
	var exited bool
	waitUntil(t, 20*time.Second, "dovecot to start", func() bool {
		select {
		case <-d.done:
			exited = true
			return true
		default:
		}
		return len(d.log.linesSince(offset, "starting up")) > 0
	})
	if exited {
		t.Fatalf("dovecot exited at start: %v (see %s and %s)", d.cmd.ProcessState, d.out, d.log)
	}
}

// stop shuts Dovecot down as `systemctl stop dovecot` does (see stopGroup)
// and returns once all its processes are gone.
func (d *dovecot) stop(t *testing.T) {
	t.Helper()
	if err := d.stopProcesses(); err != nil {
		t.Fatalf("stop dovecot: %v", err)
	}
}

func (d *dovecot) stopProcesses() error {
	if d.cmd == nil {
		return nil
	}
	err := stopGroup(d.cmd.Process.Pid, 15*time.Second)
	<-d.done
	d.cmd = nil
	return err
}
