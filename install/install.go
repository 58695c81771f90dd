package install

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/systemd"

	"go.uber.org/zap"
)

// Where install puts things on the relay (below --root).
const (
	installedBinary = "/usr/local/bin/chatmail-edge"
	// install run from the Debian package's binary uses it in place.
	packagedBinary = systemd.PackagedBinary
	unitDir        = "/etc/systemd/system"
	sysusersFile   = "/etc/sysusers.d/chatmail-edge.conf"
	// installRecordFile says what install changed, for uninstall. It is
	// root's: the state folder belongs to the service user.
	installRecordFile = "/etc/chatmail-edge/installed.json"
)

// commandTimeout bounds one external command; startTimeout a start of the
// edge, which waits for READY=1 (TimeoutStartSec in the unit is 5 minutes).
const (
	commandTimeout = 2 * time.Minute
	startTimeout   = 6 * time.Minute
)

// installer changes one system: "/" (live: it also creates users, runs
// systemctl on the running systemd, checks ports and probes) or a folder
// given with --root, where it only writes files, and edits units with
// `systemctl --root` and Postfix's configuration with `postconf -c`.
type installer struct {
	root   string
	live   bool
	dryRun bool
	// reapplying is `install --reapply`: the same steps, without starting
	// the edge or probing it.
	reapplying bool
	out        io.Writer
	log        *zap.Logger
	// changes counts the steps that changed something (or would, in a dry run).
	changes int
}

func newInstaller(root string, dryRun bool, out io.Writer, log *zap.Logger) (*installer, error) {
	if log == nil {
		log = zap.NewNop()
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("%w: --root %q: %w", ErrBadRoot, root, err)
	}
	return &installer{root: abs, live: abs == "/", dryRun: dryRun, out: out, log: log}, nil
}

// path is p (an absolute path on the relay) below the root.
func (in *installer) path(p string) string { return filepath.Join(in.root, p) }

// step runs act when needed, and prints one line either way: "ok" for
// nothing to do, "would" in a dry run, "done" after the change.
func (in *installer) step(what string, needed bool, act func() error) error {
	switch {
	case !needed:
		fmt.Fprintf(in.out, "  ok     %s\n", what)
		return nil
	case in.dryRun:
		fmt.Fprintf(in.out, "  would  %s\n", what)
		in.changes++
		return nil
	}
	if err := act(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	fmt.Fprintf(in.out, "  done   %s\n", what)
	in.changes++
	return nil
}

// skip prints a step that only a live install takes.
func (in *installer) skip(what string) {
	fmt.Fprintf(in.out, "  skip   %s (not on a live system: --root %s)\n", what, in.root)
}

// writeFile writes p atomically when its content or mode differ, and
// tells whether it did (or would).
func (in *installer) writeFile(p string, data []byte, mode fs.FileMode) (bool, error) {
	full := in.path(p)
	old, err := os.ReadFile(full)
	needed := err != nil || !bytes.Equal(old, data)
	if st, err := os.Stat(full); err == nil && st.Mode().Perm() != mode {
		needed = true
	}
	return needed, in.step("write "+p, needed, func() error {
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		return atomicfile.Write(full, data, mode)
	})
}

// removeFile removes p if it exists.
func (in *installer) removeFile(p string) (bool, error) {
	_, err := os.Lstat(in.path(p))
	needed := err == nil
	return needed, in.step("remove "+p, needed, func() error { return os.Remove(in.path(p)) })
}

// owner is a numeric user and group; uid -1 for unknown (a dry run before
// the user exists).
type owner struct{ uid, gid int }

// mkdir makes folder p with mode and owner, or corrects them.
func (in *installer) mkdir(p string, mode fs.FileMode, o owner) error {
	full := in.path(p)
	st, err := os.Stat(full)
	needed := err != nil || st.Mode().Perm() != mode || (o.uid >= 0 && !ownedBy(st, o))
	return in.step(fmt.Sprintf("folder %s (%04o)", p, mode), needed, func() error {
		if err := os.MkdirAll(full, mode); err != nil {
			return err
		}
		if err := os.Chmod(full, mode); err != nil {
			return err
		}
		if o.uid >= 0 {
			return os.Chown(full, o.uid, o.gid)
		}
		return nil
	})
}

func ownedBy(st fs.FileInfo, o owner) bool {
	got, ok := statOwner(st)
	return ok && got == o
}

func statOwner(st fs.FileInfo) (owner, bool) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return owner{}, false
	}
	return owner{int(sys.Uid), int(sys.Gid)}, true
}

// chownTree gives everything below p (p included) to o.
func (in *installer) chownTree(p string, o owner) error {
	full := in.path(p)
	needed := false
	_ = filepath.WalkDir(full, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := os.Lstat(path); err == nil && !ownedBy(info, o) {
			needed = true
			return filepath.SkipAll
		}
		return nil
	})
	return in.step(fmt.Sprintf("owner of %s: %d:%d", p, o.uid, o.gid), needed && o.uid >= 0, func() error {
		return filepath.WalkDir(full, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(path, o.uid, o.gid)
		})
	})
}

// runTool runs a program and returns its standard output; an error
// carries the command line and everything it printed.
func runTool(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err,
			strings.TrimSpace(stderr.String()+" "+stdout.String()))
	}
	return stdout.String(), nil
}

// systemctl runs systemctl on the running systemd when live, else on the
// unit files below the root (enable, disable, mask, unmask, is-enabled).
func (in *installer) systemctl(args ...string) (string, error) {
	if !in.live {
		args = append([]string{"--root=" + in.root}, args...)
	}
	return runTool(startTimeout, "systemctl", args...)
}

// daemonReload has the running systemd read the unit files again, when
// needed (live only: systemctl --root needs none).
func (in *installer) daemonReload(needed bool) error {
	if !in.live {
		return nil
	}
	return in.step("systemctl daemon-reload", needed, func() error {
		_, err := runTool(commandTimeout, "systemctl", "daemon-reload")
		return err
	})
}

// enable enables a unit unless it is.
func (in *installer) enable(unit string) error {
	return in.step("enable "+unit, in.unitState(unit) != "enabled", func() error {
		_, err := in.systemctl("enable", unit)
		return err
	})
}

// stopAndDisable stops a unit (live) and disables it, when it runs or is
// enabled.
func (in *installer) stopAndDisable(unit string) error {
	active := in.live && in.active(unit)
	return in.step("stop and disable "+unit, active || in.unitState(unit) == "enabled", func() error {
		if active {
			if _, err := in.systemctl("stop", unit); err != nil {
				return err
			}
		}
		_, err := in.systemctl("disable", unit)
		return err
	})
}

// unitState is systemctl is-enabled's word for a unit ("" when unknown).
func (in *installer) unitState(unit string) string {
	out, _ := in.systemctl("is-enabled", unit)
	return strings.TrimSpace(out)
}

// active tells whether a unit runs (live only).
func (in *installer) active(unit string) bool {
	out, _ := runTool(commandTimeout, "systemctl", "is-active", unit)
	return strings.TrimSpace(out) == "active"
}

// serviceUser creates the edge's user with systemd-sysusers (from the
// sysusers.d entry written just before) and returns it.
func (in *installer) serviceUser() (owner, error) {
	if _, err := in.writeFile(sysusersFile, systemd.SysusersConf(), 0o644); err != nil {
		return owner{}, err
	}
	o, err := lookupUser(in.path("/etc/passwd"), systemd.User)
	exists := err == nil
	err = in.step("user "+systemd.User, !exists, func() error {
		args := []string{in.path(sysusersFile)}
		if !in.live {
			args = []string{"--root=" + in.root, in.path(sysusersFile)}
		}
		_, err := runTool(commandTimeout, "systemd-sysusers", args...)
		return err
	})
	if err != nil {
		return owner{}, err
	}
	if !exists && !in.dryRun {
		return lookupUser(in.path("/etc/passwd"), systemd.User)
	}
	if !exists {
		return owner{-1, -1}, nil
	}
	return o, nil
}

// lookupUser reads a user's ids from a passwd(5) file (that of the root,
// which need not be this system's).
func lookupUser(passwd, name string) (owner, error) {
	f, err := os.Open(passwd)
	if err != nil {
		return owner{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 4 || fields[0] != name {
			continue
		}
		uid, err1 := strconv.Atoi(fields[2])
		gid, err2 := strconv.Atoi(fields[3])
		if err1 != nil || err2 != nil {
			return owner{}, fmt.Errorf("%s: bad entry for %s", passwd, name)
		}
		return owner{uid, gid}, nil
	}
	return owner{}, fmt.Errorf("%s: no user %s: %w", passwd, name, fs.ErrNotExist)
}

// installRecord is what install changed beyond its own files, so that
// uninstall can put it back.
type installRecord struct {
	Mode string `json:"mode"`
	// Replaced are chatmail's units that install turned into no-ops with
	// a drop-in (takeover.go); uninstall removes the drop-ins and starts
	// those that ran.
	Replaced []stoppedUnit `json:"replaced,omitempty"`
	// AcmetoolDesired are the mail domain's target files that install took
	// out of acmetool's desired/ folder (name: content), so that
	// cmdeploy's `acmetool reconcile` asks no CA; uninstall puts them back.
	AcmetoolDesired map[string]string `json:"acmetool_desired,omitempty"`
	// Stopped are the units an install before the drop-ins stopped and
	// masked, which cmdeploy cannot start: the next install unmasks them.
	Stopped []stoppedUnit `json:"stopped,omitempty"`
	// Config is the configuration file install wrote, to be removed by
	// uninstall unless the operator changed it since (its SHA-256), and
	// ChatmailINI the chatmail.ini of a node.
	Config      string `json:"config,omitempty"`
	ChatmailINI string `json:"chatmail_ini,omitempty"`
	// ExportDir is the folder of the exported certificate, given to the
	// service user; ExportOwner is whose it was.
	ExportDir   string `json:"export_dir,omitempty"`
	ExportOwner *owner `json:"export_owner,omitempty"`
	// Full mode: chatmail's smtps entry of master.cf before it was turned
	// off (a `postconf -M` line), and whether the include line went into
	// dovecot.conf.
	SMTPSEntry     string `json:"smtps_entry,omitempty"`
	DovecotInclude bool   `json:"dovecot_include,omitempty"`
}

type stoppedUnit struct {
	Unit   string `json:"unit"`
	Active bool   `json:"active"`
}

func (o owner) MarshalJSON() ([]byte, error) { return json.Marshal([2]int{o.uid, o.gid}) }

func (o *owner) UnmarshalJSON(b []byte) error {
	var ids [2]int
	if err := json.Unmarshal(b, &ids); err != nil {
		return err
	}
	o.uid, o.gid = ids[0], ids[1]
	return nil
}

// loadRecord reads the record of an earlier install; an empty one if none.
func (in *installer) loadRecord() (*installRecord, error) {
	rec := &installRecord{}
	data, err := os.ReadFile(in.path(installRecordFile))
	if errors.Is(err, fs.ErrNotExist) {
		return rec, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("%s: %w", in.path(installRecordFile), err)
	}
	return rec, nil
}

// saveRecord writes the record (not in a dry run): after every change that
// uninstall has to know about, so that an install stopped half way can be
// undone too.
func (in *installer) saveRecord(rec *installRecord) error {
	if in.dryRun {
		return nil
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	full := in.path(installRecordFile)
	if old, err := os.ReadFile(full); err == nil && bytes.Equal(old, append(data, '\n')) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(full, append(data, '\n'), 0o600)
}
