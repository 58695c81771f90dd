//go:build integration

package integration

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"chatmail-edge/mail"
)

// postfixMainCf is chatmail's main.cf.j2 (chatmail/relay,
// cmdeploy/src/cmdeploy/postfix/main.cf.j2) without outgoing SMTP, DKIM and
// aliases, plus the paths of an instance that runs from the test's folder
// (postfix -c, postconf(5) queue_directory, data_directory, maillog_file).
var postfixMainCf = template.Must(template.New("main.cf").Parse(`# Written by the chatmail-edge integration tests.
compatibility_level = 3.6
queue_directory = {{.Spool}}
data_directory = {{.Data}}
maillog_file = {{.Log}}
maillog_file_prefixes = {{.Dir}}

myhostname = {{.Domain}}
myorigin = {{.Domain}}
mydestination =
relayhost =
append_dot_mydomain = no
biff = no
readme_directory = no
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# Not chatmail's 127.0.0.0/8: the test client at 127.0.0.2 stands for a
# client elsewhere, so only the edge's own address is "my network".
mynetworks = 127.0.0.1/32

smtpd_tls_cert_file = {{.Cert}}
smtpd_tls_key_file = {{.Key}}
smtpd_tls_security_level = may
tls_preempt_cipherlist = yes
smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination
mailbox_size_limit = 0
recipient_delimiter = +

virtual_transport = lmtp:unix:private/dovecot-lmtp
virtual_mailbox_domains = {{.Domain}}

mua_client_restrictions = permit_sasl_authenticated, reject
mua_sender_restrictions = reject_sender_login_mismatch, permit_sasl_authenticated, reject
mua_helo_restrictions = permit_mynetworks, reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname, permit
smtpd_sender_login_maps = regexp:{{.Conf}}/login_map
smtpd_peername_lookup = no
`))

// postfixSMTPS is chatmail's smtps entry of master.cf.j2 on a test port,
// without chroot and filtermail: what the edge re-encrypts to in tls mode.
var postfixSMTPS = `127.0.0.1:%d inet  n       -       n       -       1000    smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_mandatory_protocols=>=TLSv1.3
` + mail.ChatmailSubmissionOptions(mail.DefaultMaxSMTPConnections)

// postfixInternalServices are the rest of chatmail's master.cf that local
// delivery uses, none chrooted.
const postfixInternalServices = `pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// postfix is one Postfix instance of a test, with its own configuration
// folder (postfix -c).
type postfix struct {
	conf  string
	spool string
	log   logFile
	out   string // output of the postfix commands
	// Backend is where the edge reaches SMTP submission: the smtps service
	// in tls mode, the haproxy one in proxy mode.
	Backend string
}

// startPostfix writes the configuration for mode into dir, with the
// master.cf entries extra besides the mode's, and starts Postfix. Its queue
// folder holds spool/private, where Dovecot puts the LMTP and auth
// sockets. It is stopped when the test ends.
func startPostfix(t *testing.T, dir, domain string, mode mail.Mode, cert, key string, extra ...string) *postfix {
	t.Helper()
	p := &postfix{
		conf:  filepath.Join(dir, "postfix"),
		spool: filepath.Join(dir, "spool"),
		log:   logFile(filepath.Join(dir, "postfix.log")),
		out:   filepath.Join(dir, "postfix.out"),
	}
	data := filepath.Join(dir, "data")
	// The queue folder is root's, the data folder the mail_owner's; postfix
	// creates the queue's subfolders itself (post-install create-missing).
	for _, d := range []string{p.conf, p.spool, data} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	owner, err := user.Lookup("postfix")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(owner.Uid)
	if err := os.Chown(data, uid, -1); err != nil {
		t.Fatal(err)
	}

	port := freePort(t)
	p.Backend = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	service := fmt.Sprintf(postfixSMTPS, port)
	if mode == mail.ModeProxy {
		service = forTest(postfixProxyService, proxyPostfixPort, port)
	}
	var mainCf strings.Builder
	err = postfixMainCf.Execute(&mainCf, map[string]any{
		"Dir": dir, "Conf": p.conf, "Spool": p.spool, "Data": data, "Log": p.log,
		"Domain": domain, "Cert": cert, "Key": key,
	})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(p.conf, "main.cf"), mainCf.String(), 0o644)
	writeFile(t, filepath.Join(p.conf, "master.cf"), service+strings.Join(extra, "")+postfixInternalServices, 0o644)
	// chatmail's login_map: a SASL user may send only as itself.
	writeFile(t, filepath.Join(p.conf, "login_map"), "/^(.*)$/\t${1}\n", 0o644)

	dumpOnFailure(t, p.log, logFile(p.out))
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("stop postfix: %v", err)
		}
	})
	// `postfix start` returns once the master has bound its listeners
	// (master -w, postfix-script).
	if err := runLogged(p.out, "postfix", "-c", p.conf, "start"); err != nil {
		t.Fatal(err)
	}
	return p
}

// stop ends the master and its children as `postfix stop` does (SIGTERM to
// the master, which leads its own process group), and waits until they are
// gone.
func (p *postfix) stop() error {
	pid, err := os.ReadFile(filepath.Join(p.spool, "pid", "master.pid"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // never started, or already stopped
	}
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(pid)))
	if err != nil {
		return fmt.Errorf("master.pid: %w", err)
	}
	return stopGroup(n, 15*time.Second)
}

// waitQueueEmpty waits until Postfix holds no message: everything was
// delivered (or bounced), so no retry can bring a duplicate later.
func (p *postfix) waitQueueEmpty(t *testing.T, timeout time.Duration) {
	t.Helper()
	waitUntil(t, timeout, "an empty Postfix queue", func() bool {
		// postqueue(1) -j: one JSON object per queued message.
		queue, err := exec.Command("postqueue", "-c", p.conf, "-j").Output()
		return err == nil && len(queue) == 0
	})
}
