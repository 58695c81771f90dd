package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// maxExposure is the highest `systemd-analyze security` score the service
// may have (0 is fully sandboxed, 10 not at all).
const maxExposure = 2.5

func requireSystemdAnalyze(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (apt-get install systemd; .ci/run does)")
	}
	return bin
}

// renderTo writes the units into dir. ExecStart names this test's own
// binary: verify checks that the command exists and is executable.
func renderTo(t *testing.T, dir string) []string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	units, err := Units(Params{Binary: self, Config: "/etc/chatmail-edge/chatmail-edge.ini", ExportCert: "/var/lib/acme/live/chat.example.org/fullchain"})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, u := range units {
		p := filepath.Join(dir, u.Name)
		if err := os.WriteFile(p, u.Data, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	if len(paths) != 3 {
		t.Fatalf("want the service, the path unit and its service, got %v", paths)
	}
	return paths
}

func TestUnitsVerify(t *testing.T) {
	bin := requireSystemdAnalyze(t)
	paths := renderTo(t, t.TempDir())
	out, err := exec.Command(bin, append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestUnitSecurityExposure(t *testing.T) {
	bin := requireSystemdAnalyze(t)
	paths := renderTo(t, t.TempDir())
	checkExposure(t, bin, paths[0], Service)
}

// checkExposure fails when `systemd-analyze security` rates unit above
// maxExposure.
func checkExposure(t *testing.T, bin, path, unit string) {
	t.Helper()
	out, err := exec.Command(bin, "security", "--offline=yes", "--no-pager", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for ` + regexp.QuoteMeta(unit) + `: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd-analyze security --offline=yes: %s exposure %.1f (at most %.1f)", unit, score, maxExposure)
	if score > maxExposure {
		t.Errorf("exposure %.1f above %.1f:\n%s", score, maxExposure, out)
	}
}

// The unit holds what the edge relies on: sd_notify, SIGHUP reload,
// upgrades and restarts that keep the sockets, no restart loop on a
// configuration error (main.go's exitConfig), the capability for low
// ports, and enough file descriptors.
func TestServiceUnitSettings(t *testing.T) {
	units, err := Units(Params{Binary: "/usr/local/bin/chatmail-edge", Config: "/etc/chatmail-edge/chatmail-edge.ini"})
	if err != nil {
		t.Fatal(err)
	}
	if len(units) != 1 {
		t.Fatalf("without an export there is no reload path unit: %v", units)
	}
	unit := string(units[0].Data)
	for _, line := range []string{
		"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "RestartPreventExitStatus=78",
		// An upgrade's new process says MAINPID= itself; the fd store holds
		// the sockets through a restart (handoff.go).
		"NotifyAccess=all", "FileDescriptorStoreMax=8", "TimeoutStopSec=90s",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE", "User=" + User, "StateDirectory=chatmail-edge",
		"ConfigurationDirectory=chatmail-edge", "ProtectSystem=strict", "SystemCallFilter=@system-service",
		"MemoryDenyWriteExecute=yes", "ExecStart=/usr/local/bin/chatmail-edge serve --config /etc/chatmail-edge/chatmail-edge.ini",
	} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("unit lacks %q", line)
		}
	}
	m := regexp.MustCompile(`\nLimitNOFILE=(\d+)\n`).FindStringSubmatch(unit)
	if m == nil {
		t.Fatal("unit has no LimitNOFILE")
	}
	if n, _ := strconv.Atoi(m[1]); n < 65536 {
		t.Errorf("LimitNOFILE %v, want at least 65536", m)
	}
}

func renderMetadataProxy(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	u, err := MetadataProxyUnit(Params{Binary: self, ECHFile: "/run/chatmail-edge/ech-config-list"})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, u.Name)
	if err := os.WriteFile(p, u.Data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMetadataProxyUnitVerify(t *testing.T) {
	bin := requireSystemdAnalyze(t)
	path := renderMetadataProxy(t, t.TempDir())
	out, err := exec.Command(bin, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	checkExposure(t, bin, path, MetadataProxy)
}

// The proxy's unit holds what METADATA relies on: Dovecot's and
// chatmail-metadata's user, the socket where Dovecot's configuration points,
// the edge's file, and no dependency on the edge's own unit.
func TestMetadataProxyUnitSettings(t *testing.T) {
	u, err := MetadataProxyUnit(Params{Binary: "/usr/local/bin/chatmail-edge", ECHFile: "/run/chatmail-edge/ech-config-list"})
	if err != nil {
		t.Fatal(err)
	}
	unit := string(u.Data)
	for _, line := range []string{
		"Type=notify", "Restart=always", "User=vmail", "Group=vmail", "RuntimeDirectory=chatmail-edge-metadata",
		"Before=dovecot.service", "RestrictAddressFamilies=AF_UNIX", "PrivateNetwork=yes",
		"ExecStart=/usr/local/bin/chatmail-edge metadata-proxy --socket /run/chatmail-edge-metadata/metadata.socket --upstream /run/chatmail-metadata/metadata.socket --ech-file /run/chatmail-edge/ech-config-list",
	} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("unit lacks %q", line)
		}
	}
	if strings.Contains(unit, Service) {
		t.Errorf("the proxy's unit depends on %s", Service)
	}
	if _, err := MetadataProxyUnit(Params{Binary: "/usr/local/bin/chatmail-edge"}); err == nil {
		t.Error("rendered without an ECH file")
	}
}

// The edge's unit keeps its runtime folder when it stops: the proxy serves
// the ECH config list from there while the edge is not running.
func TestServiceKeepsPublishedFileWhenStopped(t *testing.T) {
	units, err := Units(Params{Binary: "/usr/local/bin/chatmail-edge", Config: "/etc/chatmail-edge/chatmail-edge.ini"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(units[0].Data), "\nRuntimeDirectoryPreserve=yes\n") {
		t.Error("the edge's unit removes /run/chatmail-edge when it stops")
	}
}

// The reapply units verify, watch what they are given and run `install
// --reapply` with the configuration.
func TestReapplyUnits(t *testing.T) {
	bin := requireSystemdAnalyze(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	watch := []string{"/etc/dovecot/dovecot.conf", "/etc/postfix/master.cf"}
	units, err := ReapplyUnits(Params{Binary: self, Config: "/etc/chatmail-edge/chatmail-edge.ini", Watch: watch})
	if err != nil || len(units) != 2 || units[0].Name != ReapplyPath || units[1].Name != ReapplyService {
		t.Fatalf("ReapplyUnits: %v %v", units, err)
	}
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		p := filepath.Join(dir, u.Name)
		os.WriteFile(p, u.Data, 0o644)
		paths = append(paths, p)
	}
	for _, w := range watch {
		if !strings.Contains(string(units[0].Data), "\nPathChanged="+w+"\n") {
			t.Errorf("%s does not watch %s:\n%s", ReapplyPath, w, units[0].Data)
		}
	}
	if !strings.Contains(string(units[1].Data), "\nExecStart="+self+" install --reapply --config /etc/chatmail-edge/chatmail-edge.ini\n") {
		t.Errorf("%s:\n%s", ReapplyService, units[1].Data)
	}
	out, err := exec.Command(bin, append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	if _, err := ReapplyUnits(Params{Binary: self}); err == nil {
		t.Error("rendered with nothing to watch")
	}
}

// The drop-ins verify on top of the units they change: Debian 12's
// nginx.service and cmdeploy's acmetool units (install/testdata/cmdeploy),
// loaded from a unit folder as systemd loads them (SYSTEMD_UNIT_PATH, with
// the system's folders after it for the targets they name).
func TestTakeoverDropInsVerify(t *testing.T) {
	bin := requireSystemdAnalyze(t)
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	edge, err := Units(Params{Binary: self, Config: "/etc/chatmail-edge/chatmail-edge.ini"})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, Service), edge[0].Data, 0o644)
	for _, unit := range []string{"nginx.service", "acmetool-redirector.service", "acmetool-reconcile.service"} {
		data, err := os.ReadFile(filepath.Join("../install/testdata/cmdeploy", unit))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, unit), data, 0o644)
		dropIn, ok := TakeoverDropIn(unit)
		if !ok || !strings.Contains(string(dropIn), "\nExecStart=\nExecStart=/bin/true\n") {
			t.Fatalf("%s: drop-in %v\n%s", unit, ok, dropIn)
		}
		os.MkdirAll(filepath.Join(dir, unit+".d"), 0o755)
		os.WriteFile(filepath.Join(dir, unit+".d", DropIn), dropIn, 0o644)
		cmd := exec.Command(bin, "verify", "--man=no", unit)
		cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
		out, err := cmd.CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s with its drop-in: %v\n%s", unit, err, out)
		}
	}
	nginx, _ := TakeoverDropIn("nginx.service")
	for _, line := range []string{"Wants=" + Service, "PartOf=" + Service, "Type=oneshot", "RemainAfterExit=yes", "ExecStop=", "ExecStartPre="} {
		if !strings.Contains(string(nginx), "\n"+line+"\n") {
			t.Errorf("nginx's drop-in lacks %q", line)
		}
	}
	if _, ok := TakeoverDropIn("fcgiwrap.service"); ok {
		t.Error("a drop-in for fcgiwrap, which cmdeploy runs and nothing uses")
	}
}
