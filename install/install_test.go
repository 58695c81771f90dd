package install

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/internal/acmetest"
	"chatmail-edge/internal/ini"
	"chatmail-edge/systemd"

	"go.uber.org/zap"
)

const installDomain = "chat.example.org"

// requireInstallTools stops a test that installs into a folder when the
// machine lacks what install runs there: root (it gives files to the
// service user), and systemd's tools (Debian package systemd; .ci/run
// installs it).
func requireInstallTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("install gives files to its service user, which needs root (as in .ci/run)")
	}
	for _, bin := range []string{"systemctl", "systemd-sysusers"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: apt-get install systemd (see .ci/run)", bin)
		}
	}
}

// relayTree is a folder laid out like a chatmail relay deployed by
// cmdeploy: chatmail.ini, acmetool's state with an account, a live
// certificate and its target, and the units of nginx, acmetool and fcgiwrap
// (testdata/cmdeploy: Debian's and cmdeploy's own), enabled as cmdeploy
// leaves them.
func relayTree(t *testing.T) (string, *acmetest.Relay) {
	t.Helper()
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(root, config.DefaultChatmailINI), "[params]\nmail_domain = "+installDomain+"\nmax_message_size = 31457280\n")
	relay := acmetest.NewRelay(t, filepath.Join(root, "var/lib/acme"), acme.LetsEncrypt, installDomain)
	for fixture, dest := range cmdeployUnits {
		writeTestFile(t, filepath.Join(root, dest), fixtureText(t, fixture))
	}
	writeTestFile(t, filepath.Join(root, acmetoolDesired), fixtureText(t, "acmetool-desired"))
	if out, err := exec.Command("systemctl", append([]string{"--root=" + root, "enable"}, cmdeployEnables...)...).CombinedOutput(); err != nil {
		t.Fatalf("enable chatmail's units in the tree: %v\n%s", err, out)
	}
	return root, relay
}

// cmdeployUnits are the units of chatmail's front end on a relay: fixture
// file to path. cmdeployEnables are those cmdeploy enables.
var (
	cmdeployUnits = map[string]string{
		"nginx.service":               "/lib/systemd/system/nginx.service",
		"fcgiwrap.service":            "/lib/systemd/system/fcgiwrap.service",
		"fcgiwrap.socket":             "/lib/systemd/system/fcgiwrap.socket",
		"acmetool-redirector.service": "/etc/systemd/system/acmetool-redirector.service",
		"acmetool-reconcile.service":  "/etc/systemd/system/acmetool-reconcile.service",
		"acmetool-reconcile.timer":    "/etc/systemd/system/acmetool-reconcile.timer",
	}
	cmdeployEnables = []string{"nginx.service", "fcgiwrap.service", "acmetool-redirector.service", "acmetool-reconcile.timer"}
)

// acmetoolDesired is acmetool's target for the mail domain, which cmdeploy
// writes.
var acmetoolDesired = "/var/lib/acme/desired/" + installDomain

// fixtureText is a file of testdata/cmdeploy.
func fixtureText(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata/cmdeploy", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func writeTestFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// exitConfig is the command line's exit status for a configuration error.
const exitConfig = 78

// runCommand runs `chatmail-edge install` or `uninstall` with args as the
// command line does (its flags, exit status 2 for a usage error, 1 for a
// failure, the error printed last) and returns the status and the output.
func runCommand(args ...string) (int, string) {
	var out bytes.Buffer
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(&out)
	o := Options{Out: &out}
	fs.StringVar(&o.Root, "root", "/", "")
	fs.StringVar(&o.Config, "config", config.DefaultFile, "")
	fs.BoolVar(&o.DryRun, "dry-run", false, "")
	mode := fs.String("mode", "default", "")
	reapply := fs.Bool("reapply", false, "")
	fs.StringVar(&o.Node.Relay, "relay", "", "")
	fs.StringVar(&o.Node.MailDomain, "mail-domain", "", "")
	fs.StringVar(&o.Node.Connect, "connect", "", "")
	fs.StringVar(&o.Node.Name, "node-name", "", "")
	fs.StringVar(&o.Node.RelayCA, "relay-ca", "", "")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() > 0 {
		return 2, out.String()
	}
	var err error
	switch {
	case args[0] == "install" && *reapply:
		err = Reapply(o)
	case args[0] == "install":
		err = Install(o, *mode)
	default:
		err = Uninstall(o)
	}
	switch {
	case errors.Is(err, ErrBadMode) || errors.Is(err, ErrBadRoot):
		return 2, out.String()
	case errors.Is(err, config.ErrConfig):
		fmt.Fprintf(&out, "chatmail-edge %s: %v\n", args[0], err)
		return exitConfig, out.String()
	case err != nil:
		fmt.Fprintf(&out, "chatmail-edge %s: %v\n", args[0], err)
		return 1, out.String()
	}
	return 0, out.String()
}

// chatmailUnitStates is systemctl is-enabled of each of chatmail's units
// in the tree, one per line.
func chatmailUnitStates(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	for _, u := range slices.Sorted(maps.Keys(cmdeployUnits)) {
		fmt.Fprintf(&b, "%s %s\n", u, unitState(t, root, u))
	}
	return b.String()
}

// loadWritten loads the configuration install wrote below root as serve
// loads it.
func loadWritten(t *testing.T, root string) *config.Settings {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, config.DefaultFile))
	if err != nil {
		t.Fatal(err)
	}
	f, err := ini.Parse(config.DefaultFile, data)
	if err != nil {
		t.Fatal(err)
	}
	s, err := config.FromFile(f, root)
	if err != nil {
		t.Fatalf("the written configuration does not load: %v\n%s", err, data)
	}
	return s
}

func unitState(t *testing.T, root, unit string) string {
	t.Helper()
	out, _ := exec.Command("systemctl", "--root="+root, "is-enabled", unit).Output()
	return strings.TrimSpace(string(out))
}

func modeOf(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestInstallIntoRootAndUninstall(t *testing.T) {
	requireInstallTools(t)
	root, relay := relayTree(t)
	pristine := treeContents(t, root)
	cmdeployStates := chatmailUnitStates(t, root)

	// A dry run changes nothing and lists the steps.
	code, out := runCommand("install", "--root", root, "--dry-run")
	if code != 0 || !strings.Contains(out, "would  write /usr/local/bin/chatmail-edge") || !strings.Contains(out, "would  replace nginx.service by a no-op") {
		t.Fatalf("dry run: exit %d\n%s", code, out)
	}
	if treeContents(t, root) != pristine {
		t.Fatalf("the dry run changed the tree:\n%s", out)
	}

	code, out = runCommand("install", "--root", root)
	if code != 0 {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	t.Logf("install:\n%s", out)
	user, err := lookupUser(filepath.Join(root, "etc/passwd"), systemd.User)
	if err != nil {
		t.Fatalf("service user: %v", err)
	}

	self, _ := os.Executable()
	want, _ := os.ReadFile(self)
	if got, err := os.ReadFile(filepath.Join(root, installedBinary)); err != nil || !bytes.Equal(got, want) || modeOf(t, filepath.Join(root, installedBinary)) != 0o755 {
		t.Errorf("installed binary: %v", err)
	}
	unit, err := os.ReadFile(filepath.Join(root, unitDir, systemd.Service))
	if err != nil || !strings.Contains(string(unit), "ExecStart=/usr/local/bin/chatmail-edge serve --config /etc/chatmail-edge/chatmail-edge.ini\n") {
		t.Errorf("unit: %v\n%s", err, unit)
	}
	pathUnit, err := os.ReadFile(filepath.Join(root, unitDir, systemd.ReloadPath))
	if err != nil || !strings.Contains(string(pathUnit), "PathChanged=/var/lib/acme/live/"+installDomain+"/fullchain\n") {
		t.Errorf("path unit: %v\n%s", err, pathUnit)
	}
	for _, u := range []string{systemd.Service, systemd.ReloadPath} {
		if s := unitState(t, root, u); s != "enabled" {
			t.Errorf("%s is %q, want enabled", u, s)
		}
	}
	// chatmail's units are no-ops now, still enabled, as cmdeploy wants
	// them; acmetool has nothing to renew.
	for _, u := range replacedUnits {
		if got, _ := os.ReadFile(filepath.Join(root, dropInPath(u))); !strings.Contains(string(got), "\nExecStart=/bin/true\n") {
			t.Errorf("%s has no drop-in that makes it a no-op:\n%s", u, got)
		}
	}
	if got := chatmailUnitStates(t, root); got != cmdeployStates {
		t.Errorf("chatmail's units after install:\n%s\nwant them as cmdeploy left them:\n%s", got, cmdeployStates)
	}
	if _, err := os.Stat(filepath.Join(root, acmetoolDesired)); err == nil {
		t.Errorf("acmetool's target %s is still there", acmetoolDesired)
	}

	// The configuration is derived from chatmail.ini and loads as serve loads it.
	s := loadWritten(t, root)
	if s.MailDomain != installDomain || s.Certs.Reload != nil || s.IMAPS != "" || s.CertMode() != "acme" {
		t.Errorf("settings from the written configuration: domain %q, reload %v, imaps %q, mode %s", s.MailDomain, s.Certs.Reload, s.IMAPS, s.CertMode())
	}

	// Folders, modes and owners.
	for _, c := range []struct {
		path string
		mode os.FileMode
		own  owner
	}{
		{"/etc/chatmail-edge", 0o755, owner{0, 0}},
		{"/var/lib/chatmail-edge", 0o700, user},
		{"/var/lib/chatmail-edge/acme", 0o700, user},
	} {
		st, err := os.Stat(filepath.Join(root, c.path))
		if err != nil {
			t.Errorf("%s: %v", c.path, err)
			continue
		}
		if got, _ := statOwner(st); st.Mode().Perm() != c.mode || got != c.own {
			t.Errorf("%s: mode %04o owner %v, want %04o %v", c.path, st.Mode().Perm(), got, c.mode, c.own)
		}
	}
	exportDir, _ := filepath.EvalSymlinks(relay.Live)
	if st, _ := os.Stat(exportDir); !ownedBy(st, user) {
		t.Errorf("%s is not the service user's", exportDir)
	}

	// acmetool's account and certificate are in the edge's storage: taking
	// them over again finds nothing new.
	cfg := s.ACME()
	cfg.StorageDir, cfg.AcmetoolDir, cfg.ExportCert, cfg.ExportKey = filepath.Join(root, cfg.StorageDir), filepath.Join(root, cfg.AcmetoolDir), "", ""
	if !strings.Contains(out, "took over "+filepath.Join(relay.Dir, "accounts")) || !strings.Contains(out, "took over "+filepath.Join(relay.Live, "fullchain")) {
		t.Errorf("install did not say it took over acmetool's account and certificate:\n%s", out)
	}
	if imp, err := acme.ImportAcmetool(cfg, zap.NewNop()); err != nil || imp != (acme.Imported{}) {
		t.Errorf("account or certificate not imported: %+v, %v", imp, err)
	}

	// A second run changes nothing and says so.
	installed := treeContents(t, root)
	code, out = runCommand("install", "--root", root)
	if code != 0 || !strings.Contains(out, "Nothing to change") || strings.Contains(out, "done ") {
		t.Errorf("second install: exit %d\n%s", code, out)
	}
	if treeContents(t, root) != installed {
		t.Errorf("the second install changed the tree")
	}

	code, out = runCommand("uninstall", "--root", root)
	if code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	t.Logf("uninstall:\n%s", out)
	for _, p := range []string{installedBinary, sysusersFile, config.DefaultFile, installRecordFile,
		filepath.Join(unitDir, systemd.Service), filepath.Join(unitDir, systemd.ReloadPath), filepath.Join(unitDir, systemd.ReloadService)} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s is still there after uninstall", p)
		}
	}
	if got := chatmailUnitStates(t, root); got != cmdeployStates {
		t.Errorf("chatmail's units after uninstall:\n%s\nwant them as cmdeploy left them:\n%s", got, cmdeployStates)
	}
	for _, u := range replacedUnits {
		if _, err := os.Stat(filepath.Join(root, dropInPath(u))); err == nil {
			t.Errorf("%s keeps its drop-in after uninstall", u)
		}
	}
	if got, err := os.ReadFile(filepath.Join(root, acmetoolDesired)); err != nil || string(got) != fixtureText(t, "acmetool-desired") {
		t.Errorf("acmetool's target after uninstall: %v %q", err, got)
	}
	if st, _ := os.Stat(exportDir); !ownedBy(st, owner{0, 0}) {
		t.Errorf("%s was not given back to root", exportDir)
	}
	if imp, err := acme.ImportAcmetool(cfg, zap.NewNop()); err != nil || imp != (acme.Imported{}) {
		t.Errorf("uninstall removed the edge's account or certificate: %+v, %v", imp, err)
	}
	code, out = runCommand("uninstall", "--root", root)
	if code != 0 || strings.Contains(out, "done ") {
		t.Errorf("second uninstall: exit %d\n%s", code, out)
	}
}

func TestInstallPreflight(t *testing.T) {
	requireInstallTools(t)
	t.Run("not a relay", func(t *testing.T) {
		code, out := runCommand("install", "--root", t.TempDir())
		if code != 1 || !strings.Contains(out, "not a chatmail relay") || !strings.Contains(out, "chatmail.ini") {
			t.Errorf("exit %d\n%s", code, out)
		}
	})
	t.Run("no mail_domain", func(t *testing.T) {
		root := t.TempDir()
		writeTestFile(t, filepath.Join(root, config.DefaultChatmailINI), "[params]\nmax_message_size = 1000\n")
		code, out := runCommand("install", "--root", root)
		if code != exitConfig || !strings.Contains(out, "mail_domain is missing") {
			t.Errorf("exit %d\n%s", code, out)
		}
	})
	t.Run("kept config disagrees with the mode", func(t *testing.T) {
		root, _ := relayTree(t)
		writeTestFile(t, filepath.Join(root, config.DefaultFile), "[edge]\nimaps = :993\n")
		code, out := runCommand("install", "--root", root)
		if code != exitConfig || !strings.Contains(out, "--mode full") {
			t.Errorf("exit %d\n%s", code, out)
		}
		code, out = runCommand("install", "--root", root, "--mode", "full")
		if code != exitConfig || !strings.Contains(out, "backend = proxy") {
			t.Errorf("full: exit %d\n%s", code, out)
		}
		if _, err := os.Stat(filepath.Join(root, installedBinary)); err == nil {
			t.Errorf("install went ahead after a failed preflight")
		}
	})
	t.Run("kept config with reload commands", func(t *testing.T) {
		root, _ := relayTree(t)
		writeTestFile(t, filepath.Join(root, config.DefaultFile), "[acme]\nreload = systemctl reload dovecot.service\n")
		code, out := runCommand("install", "--root", root, "--dry-run")
		if code != 0 || !strings.Contains(out, "warn") || !strings.Contains(out, "set `reload =`") {
			t.Errorf("exit %d\n%s", code, out)
		}
		writeTestFile(t, filepath.Join(root, config.DefaultFile), "[acme]\nreload =\n")
		if code, out := runCommand("install", "--root", root, "--dry-run"); code != 0 || strings.Contains(out, "warn") {
			t.Errorf("empty reload: exit %d\n%s", code, out)
		}
	})
	t.Run("bad mode", func(t *testing.T) {
		if code, out := runCommand("install", "--mode", "half"); code != 2 {
			t.Errorf("exit %d\n%s", code, out)
		}
	})
}

// A port held by a program the edge does not take over from is refused,
// naming the program: here the test itself holds it.
func TestPortHolders(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	holders, err := portHolders([]int{port})
	if err != nil {
		t.Fatal(err)
	}
	comm, _ := os.ReadFile("/proc/self/comm")
	me := holder{os.Getpid(), strings.TrimSpace(string(comm))}
	if len(holders[port]) != 1 || holders[port][0] != me {
		t.Fatalf("holders of %d: %+v, want %+v", port, holders[port], me)
	}
	err = portConflicts([]int{port}, holders, allowedHolders)
	if err == nil || !strings.Contains(err.Error(), me.command+" (pid "+strconv.Itoa(me.pid)+")") {
		t.Errorf("conflict: %v", err)
	}
	if err := portConflicts([]int{443}, map[int][]holder{443: {{1, "nginx"}, {2, "chatmail-edge"}}}, allowedHolders); err != nil {
		t.Errorf("nginx and the edge on 443: %v", err)
	}
	if err := portConflicts([]int{443}, map[int][]holder{443: {{1, "apache2"}}}, allowedHolders); err == nil || !strings.Contains(err.Error(), "where the edge expects nginx: stop it first") {
		t.Errorf("apache2 on 443: %v", err)
	}
}

// The unit keeps a configuration error (exit status exitConfig) from
// restarting in a loop.
func TestUnitKnowsConfigExitStatus(t *testing.T) {
	units, err := systemd.Units(systemd.Params{Binary: installedBinary, Config: config.DefaultFile})
	if err != nil {
		t.Fatal(err)
	}
	if want := "\nRestartPreventExitStatus=" + strconv.Itoa(exitConfig) + "\n"; !strings.Contains(string(units[0].Data), want) {
		t.Errorf("unit lacks %q", want)
	}
}

// A relay without acmetool's state (a new account and certificate are got
// by the edge) converges in one run too: install's own export folder below
// /var/lib/acme is no acmetool state to take over the second time.
func TestInstallWithoutAcmetoolConvergesInOneRun(t *testing.T) {
	requireInstallTools(t)
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(root, config.DefaultChatmailINI), "[params]\nmail_domain = "+installDomain+"\n")
	code, out := runCommand("install", "--root", root)
	if code != 0 || !strings.Contains(out, "no acmetool state") {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	installed := treeContents(t, root)
	code, out = runCommand("install", "--root", root)
	if code != 0 || !strings.Contains(out, "Nothing to change") || strings.Contains(out, "done ") {
		t.Errorf("second install: exit %d\n%s", code, out)
	}
	if treeContents(t, root) != installed {
		t.Errorf("the second install changed the tree")
	}
}

// An install from before the drop-ins stopped and masked chatmail's units,
// which `cmdeploy run` cannot start: the next install unmasks them (and
// replaces those it stands in for), and uninstall leaves them as cmdeploy
// had them.
func TestInstallUnmasksWhatAnOlderInstallMasked(t *testing.T) {
	requireInstallTools(t)
	root, _ := relayTree(t)
	cmdeployStates := chatmailUnitStates(t, root)
	if code, out := runCommand("install", "--root", root); code != 0 {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	// What the older install left: no drop-ins, masks, and its record. (It
	// could not mask acmetool's units: cmdeploy puts them into
	// /etc/systemd/system, where systemctl mask refuses to replace them.)
	legacy := []string{"nginx.service", "fcgiwrap.service", "fcgiwrap.socket"}
	for _, u := range replacedUnits {
		os.Remove(filepath.Join(root, dropInPath(u)))
	}
	if out, err := exec.Command("systemctl", append([]string{"--root=" + root, "mask"}, legacy...)...).CombinedOutput(); err != nil {
		t.Fatalf("mask: %v\n%s", err, out)
	}
	in, err := newInstaller(root, false, io.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := in.loadRecord()
	if err != nil {
		t.Fatal(err)
	}
	rec.Replaced = nil
	for _, u := range legacy {
		rec.Stopped = append(rec.Stopped, stoppedUnit{Unit: u, Active: true})
	}
	if err := in.saveRecord(rec); err != nil {
		t.Fatal(err)
	}

	code, out := runCommand("install", "--root", root)
	if code != 0 || !strings.Contains(out, "done   unmask nginx.service") || !strings.Contains(out, "done   unmask fcgiwrap.socket") {
		t.Fatalf("install over the older one: exit %d\n%s", code, out)
	}
	if got := chatmailUnitStates(t, root); got != cmdeployStates {
		t.Errorf("chatmail's units:\n%s\nwant them as cmdeploy left them:\n%s", got, cmdeployStates)
	}
	if rec, _ := in.loadRecord(); len(rec.Stopped) != 0 || !slices.Contains(rec.Replaced, stoppedUnit{Unit: "nginx.service", Active: true}) {
		t.Errorf("record after the migration: %+v", rec)
	}
	if code, out := runCommand("install", "--root", root); code != 0 || !strings.Contains(out, "Nothing to change") {
		t.Errorf("second install: exit %d\n%s", code, out)
	}
	if code, out := runCommand("uninstall", "--root", root); code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	if got := chatmailUnitStates(t, root); got != cmdeployStates {
		t.Errorf("chatmail's units after uninstall:\n%s\nwant:\n%s", got, cmdeployStates)
	}
}
