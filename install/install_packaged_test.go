package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"chatmail-edge/config"
	"chatmail-edge/systemd"
)

// TestInstallRunsPackagedBinary: run from the Debian package's binary (here
// the test binary, linked to the tree's /usr/bin/chatmail-edge), install
// writes units that run it in place, removes its own copy of an earlier
// install from /usr/local/bin, and uninstall leaves dpkg's file alone.
func TestInstallRunsPackagedBinary(t *testing.T) {
	requireInstallTools(t)
	root, _ := relayTree(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	packaged := filepath.Join(root, packagedBinary)
	if err := os.MkdirAll(filepath.Dir(packaged), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(self, packaged); err != nil {
		t.Skipf("the test binary cannot be linked into the tree (another file system?): %v", err)
	}
	writeTestFile(t, filepath.Join(root, installedBinary), "an earlier install's copy")
	sameAsPackaged := func() bool {
		a, err1 := os.Stat(self)
		b, err2 := os.Stat(packaged)
		return err1 == nil && err2 == nil && os.SameFile(a, b)
	}

	code, out := runCommand("install", "--root", root)
	if code != 0 || !strings.Contains(out, "  ok     run the packaged "+packagedBinary+"\n") || !strings.Contains(out, "  done   remove "+installedBinary+"\n") {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	unit, err := os.ReadFile(filepath.Join(root, unitDir, systemd.Service))
	if err != nil || !strings.Contains(string(unit), "\nExecStart="+packagedBinary+" serve --config "+config.DefaultFile+"\n") {
		t.Errorf("unit: %v\n%s", err, unit)
	}
	if _, err := os.Lstat(filepath.Join(root, installedBinary)); err == nil {
		t.Errorf("%s is still there", installedBinary)
	}
	if !sameAsPackaged() {
		t.Errorf("install changed %s", packagedBinary)
	}

	code, out = runCommand("install", "--root", root)
	if code != 0 || !strings.Contains(out, "Nothing to change") {
		t.Errorf("second install: exit %d\n%s", code, out)
	}

	code, out = runCommand("uninstall", "--root", root)
	if code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	if _, err := os.Lstat(filepath.Join(root, unitDir, systemd.Service)); err == nil {
		t.Errorf("the unit is still there after uninstall")
	}
	if !sameAsPackaged() {
		t.Errorf("uninstall removed or changed %s, which is dpkg's", packagedBinary)
	}
}
