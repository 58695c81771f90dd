package install

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"chatmail-edge/config"
)

// cmdeployFiles are the files `cmdeploy run` writes that matter here:
// fixture (testdata/cmdeploy, rendered from chatmail's templates) to path.
// cmdeployMailFiles are those of its Dovecot and Postfix deployers.
var (
	cmdeployFiles = map[string]string{
		"chatmail.ini":                "/usr/local/lib/chatmaild/chatmail.ini",
		"nginx.conf":                  "/etc/nginx/nginx.conf",
		"acmetool-target":             "/var/lib/acme/conf/target",
		"acmetool-desired":            acmetoolDesired,
		"acmetool-redirector.service": "/etc/systemd/system/acmetool-redirector.service",
		"acmetool-reconcile.service":  "/etc/systemd/system/acmetool-reconcile.service",
		"acmetool-reconcile.timer":    "/etc/systemd/system/acmetool-reconcile.timer",
	}
	cmdeployMailFiles = map[string]string{
		"dovecot.conf": dovecotConf,
		"main.cf":      postfixDir + "/main.cf",
		"master.cf":    postfixDir + "/master.cf",
	}
)

// replayCmdeploy does to the tree what `cmdeploy run` does to a relay, as far
// as the edge is concerned (docs/CMDEPLOY.md): it writes its files again,
// each replaced by a rename as pyinfra's files.put and files.template do
// (removing desired/<d>-* first, as the AcmetoolDeployer does), and enables
// and disables its units as its ensure_service calls do. A masked unit would
// make those fail, as they fail on a relay.
func replayCmdeploy(t *testing.T, root string, files ...map[string]string) {
	t.Helper()
	stale, _ := filepath.Glob(filepath.Join(root, acmetoolDesired+"-*"))
	for _, f := range stale {
		os.Remove(f)
	}
	for _, set := range files {
		for fixture, dest := range set {
			full := filepath.Join(root, dest)
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				t.Fatal(err)
			}
			tmp := full + ".pyinfra"
			if err := os.WriteFile(tmp, []byte(fixtureText(t, fixture)), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, full); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, args := range [][]string{append([]string{"enable"}, cmdeployEnables...), {"disable", "acmetool-reconcile.service"}} {
		if out, err := exec.Command("systemctl", append([]string{"--root=" + root}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("cmdeploy's systemctl %v: %v\n%s", args, err, out)
		}
	}
}

// treeContents is every path below root with its mode, owner and content
// (a digest; a link's target), to see whether anything changed.
func treeContents(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		o, _ := statOwner(info)
		content := ""
		switch {
		case info.Mode()&os.ModeSymlink != 0:
			content, _ = os.Readlink(path)
		case info.Mode().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			content = hex.EncodeToString(sum[:8])
		}
		b.WriteString(strings.TrimPrefix(path, root) + " " + info.Mode().String() + " " + strconv.Itoa(o.uid) + ":" + strconv.Itoa(o.gid) + " " + content + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// diffLines names the lines of a and b that the other lacks.
func diffLines(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// surviveCmdeploy installs into root in mode, replays `cmdeploy run`, runs
// what chatmail-edge-reapply.path runs and checks that the tree is the
// installed one again, byte for byte; then that uninstall gives back what
// cmdeploy wrote. check, if set, looks at the tree after each step:
// "installed", "cmdeploy" (before the reapply), "reapplied", "uninstalled".
func surviveCmdeploy(t *testing.T, root, mode string, check func(step string), files ...map[string]string) {
	t.Helper()
	replayCmdeploy(t, root, files...) // the relay as cmdeploy deployed it
	cmdeployStates := chatmailUnitStates(t, root)
	code, out := runCommand("install", "--root", root, "--mode", mode)
	t.Logf("install --mode %s:\n%s", mode, out)
	if code != 0 {
		t.Fatalf("install: exit %d", code)
	}
	unit, err := os.ReadFile(filepath.Join(root, unitDir, "chatmail-edge-reapply.path"))
	if err != nil || !strings.Contains(string(unit), "\nPathChanged="+acmetoolDesired+"\n") ||
		strings.Contains(string(unit), "PathChanged="+dovecotConf) != (mode == "full") {
		t.Errorf("chatmail-edge-reapply.path (%s mode): %v\n%s", mode, err, unit)
	}
	installed := treeContents(t, root)
	if check == nil {
		check = func(string) {}
	}
	check("installed")

	replayCmdeploy(t, root, files...)
	if treeContents(t, root) == installed {
		t.Fatal("the replay of cmdeploy changed nothing: the test would prove nothing")
	}
	check("cmdeploy")
	code, out = runCommand("install", "--root", root, "--reapply")
	t.Logf("install --reapply after cmdeploy:\n%s", out)
	if code != 0 || !strings.Contains(out, "Re-applied chatmail-edge's changes ("+mode+" mode)") {
		t.Fatalf("reapply: exit %d", code)
	}
	if got := treeContents(t, root); got != installed {
		t.Errorf("after cmdeploy and reapply the tree is not the installed one:\n%s", diffLines(installed, got))
	}
	check("reapplied")
	if code, out := runCommand("install", "--root", root, "--reapply"); code != 0 || !strings.Contains(out, "Nothing to re-apply") {
		t.Errorf("second reapply: exit %d\n%s", code, out)
	}

	// A second cmdeploy run, then uninstall: everything cmdeploy wrote is
	// as it wrote it, and its units as it left them.
	replayCmdeploy(t, root, files...)
	code, out = runCommand("uninstall", "--root", root)
	t.Logf("uninstall after cmdeploy:\n%s", out)
	if code != 0 {
		t.Fatalf("uninstall: exit %d", code)
	}
	for _, set := range files {
		for fixture, dest := range set {
			if got, err := os.ReadFile(filepath.Join(root, dest)); err != nil || string(got) != fixtureText(t, fixture) {
				t.Errorf("%s after uninstall is not what cmdeploy wrote: %v", dest, err)
			}
		}
	}
	if got := chatmailUnitStates(t, root); got != cmdeployStates {
		t.Errorf("chatmail's units after uninstall:\n%s\nwant them as cmdeploy left them:\n%s", got, cmdeployStates)
	}
	check("uninstalled")
}

// The default mode survives `cmdeploy run`: its units start, restart and
// enable as cmdeploy wants, and acmetool's target it writes again is taken
// away again.
func TestInstallSurvivesCmdeploy(t *testing.T) {
	requireInstallTools(t)
	root, _ := relayTree(t)
	writeTestFile(t, filepath.Join(root, config.DefaultChatmailINI), fixtureText(t, "chatmail.ini"))
	surviveCmdeploy(t, root, "default", nil, cmdeployFiles)
}
