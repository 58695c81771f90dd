package install

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"chatmail-edge/config"
	"chatmail-edge/systemd"
)

// nodeTree is a machine that is no relay: nothing of chatmail on it.
func nodeTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

var nodeFlags = []string{"--mode", "node", "--relay", "relay.example.net", "--mail-domain", installDomain, "--connect", "proxy", "--node-name", "fra-1"}

func TestInstallNodeIntoRootAndUninstall(t *testing.T) {
	requireInstallTools(t)
	root := nodeTree(t)
	pristine := treeContents(t, root)
	install := append([]string{"install", "--root", root}, nodeFlags...)

	code, out := runCommand(append(install, "--dry-run")...)
	if code != 0 || !strings.Contains(out, "would  write "+nodeChatmailINI) || !strings.Contains(out, "would  write "+config.DefaultFile) ||
		!strings.Contains(out, "exempt_networks") {
		t.Fatalf("dry run: exit %d\n%s", code, out)
	}
	if treeContents(t, root) != pristine {
		t.Fatalf("the dry run changed the tree:\n%s", out)
	}

	code, out = runCommand(install...)
	if code != 0 {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	t.Logf("install:\n%s", out)
	for _, want := range []string{
		"node of the relay relay.example.net (connect = proxy) for " + installDomain,
		"exempt_networks", "haproxy_trusted_networks", "ports 11993, 11465",
		"let in TCP 80, 443, 993 and 465; let out TCP 443, 11993, 11465 to relay.example.net",
		"A/AAAA records of " + installDomain, "Ports 25, 143 and 587",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("install output lacks %q", want)
		}
	}
	user, err := lookupUser(filepath.Join(root, "etc/passwd"), systemd.User)
	if err != nil {
		t.Fatalf("service user: %v", err)
	}
	self, _ := os.Executable()
	want, _ := os.ReadFile(self)
	if got, err := os.ReadFile(filepath.Join(root, installedBinary)); err != nil || !bytes.Equal(got, want) {
		t.Errorf("installed binary: %v", err)
	}
	if s := unitState(t, root, systemd.Service); s != "enabled" {
		t.Errorf("%s is %q, want enabled", systemd.Service, s)
	}
	if _, err := os.Stat(filepath.Join(root, unitDir, systemd.ReloadPath)); err == nil {
		t.Errorf("a node got %s: it has no Postfix or Dovecot to reload", systemd.ReloadPath)
	}

	// Both files load as serve loads them: a node in front of the relay.
	s := loadWritten(t, root)
	if !s.IsNode() || s.Node.Relay != "relay.example.net" || s.Node.Connect != "proxy" || s.Node.Name != "fra-1" || s.MailDomain != installDomain ||
		s.IMAPS != ":993" || s.SMTPS != ":465" || s.Certs.ExportCert != "" || s.Certs.Reload != nil {
		t.Errorf("settings from the written files: %+v", s)
	}
	if st, err := os.Stat(filepath.Join(root, s.StateDir)); err != nil || st.Mode().Perm() != 0o700 || !ownedBy(st, user) {
		t.Errorf("state folder: %v", err)
	}

	installed := treeContents(t, root)
	code, out = runCommand(install...)
	if code != 0 || !strings.Contains(out, "Nothing to change") || strings.Contains(out, "done ") {
		t.Errorf("second install: exit %d\n%s", code, out)
	}
	if treeContents(t, root) != installed {
		t.Errorf("the second install changed the tree")
	}
	// The kept files need no flags again.
	if code, out = runCommand("install", "--root", root, "--mode", "node"); code != 0 || !strings.Contains(out, "Nothing to change") {
		t.Errorf("install without the flags: exit %d\n%s", code, out)
	}
	if code, out = runCommand("install", "--root", root); code != 1 || !strings.Contains(out, "installed in node mode") {
		t.Errorf("install in default mode over a node: exit %d\n%s", code, out)
	}

	code, out = runCommand("uninstall", "--root", root)
	if code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	for _, p := range []string{installedBinary, sysusersFile, config.DefaultFile, nodeChatmailINI, installRecordFile, filepath.Join(unitDir, systemd.Service), "/etc/chatmail-edge"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s is still there after uninstall", p)
		}
	}
	if _, err := os.Stat(filepath.Join(root, s.StateDir)); err != nil {
		t.Errorf("uninstall removed the state folder: %v", err)
	}
	if code, out = runCommand("uninstall", "--root", root); code != 0 || strings.Contains(out, "done ") {
		t.Errorf("second uninstall: exit %d\n%s", code, out)
	}
}

func TestInstallNodePreflight(t *testing.T) {
	requireInstallTools(t)
	cases := []struct {
		name  string
		setup func(t *testing.T, root string)
		args  []string
		code  int
		want  string
	}{
		{"on a relay", func(t *testing.T, root string) {
			writeTestFile(t, filepath.Join(root, config.DefaultChatmailINI), "[params]\nmail_domain = "+installDomain+"\n")
		}, nodeFlags, 1, "this machine is a chatmail relay"},
		{"no relay", nil, []string{"--mode", "node", "--mail-domain", installDomain}, 2, ""},
		{"no mail domain", nil, []string{"--mode", "node", "--relay", "relay.example.net"}, 2, ""},
		{"bad connect", nil, []string{"--mode", "node", "--relay", "r.example.net", "--mail-domain", installDomain, "--connect", "udp"}, 2, ""},
		{"node flags in default mode", nil, []string{"--relay", "r.example.net"}, 2, ""},
		{"the relay is the mail domain", nil, []string{"--mode", "node", "--relay", installDomain, "--mail-domain", installDomain}, exitConfig, "is the mail domain"},
		{"kept config of a relay", func(t *testing.T, root string) {
			writeTestFile(t, filepath.Join(root, config.DefaultFile), "[edge]\nchatmail_ini = "+nodeChatmailINI+"\n")
		}, nodeFlags, exitConfig, "it has no [node] relay"},
		{"kept config of another relay", func(t *testing.T, root string) {
			writeTestFile(t, filepath.Join(root, config.DefaultFile), "[edge]\nchatmail_ini = "+nodeChatmailINI+"\n[node]\nrelay = other.example.net\n")
		}, nodeFlags, exitConfig, "it names the relay other.example.net, not --relay relay.example.net"},
		{"kept chatmail.ini of another domain", func(t *testing.T, root string) {
			writeTestFile(t, filepath.Join(root, nodeChatmailINI), "[params]\nmail_domain = other.example\n")
		}, nodeFlags, exitConfig, "with mail_domain other.example, not --mail-domain " + installDomain},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := nodeTree(t)
			if c.setup != nil {
				c.setup(t, root)
			}
			code, out := runCommand(append([]string{"install", "--root", root}, c.args...)...)
			if code != c.code || !strings.Contains(out, c.want) {
				t.Errorf("exit %d, want %d with %q\n%s", code, c.code, c.want, out)
			}
			if _, err := os.Stat(filepath.Join(root, installedBinary)); err == nil {
				t.Errorf("install went ahead after a failed preflight")
			}
		})
	}
}
