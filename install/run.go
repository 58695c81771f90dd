package install

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/dnszone"
	"chatmail-edge/probe"
	"chatmail-edge/systemd"
)

func (in *installer) header(what string) {
	suffix := ""
	if in.dryRun {
		suffix = " (dry run: nothing is changed)"
	}
	fmt.Fprintf(in.out, "chatmail-edge %s on %s%s\n", what, in.root, suffix)
}

// Options say where and how install and uninstall work.
type Options struct {
	Root   string    // "/" is the running system; another folder gets files only (packagers, tests)
	DryRun bool      // print every step without doing it
	Config string    // the edge's configuration file
	Out    io.Writer // one line per step
	Log    *zap.Logger
	Node   NodeOptions // --mode node's flags
}

// ErrBadRoot marks a --root that cannot be used, ErrBadMode a mode that
// is not default, full or node (or node flags that do not fit).
var (
	ErrBadRoot = errors.New("bad root folder")
	ErrBadMode = errors.New("want --mode default, full or node")
)

// Install installs the edge on a chatmail relay (mode "default" or
// "full"), taking over from nginx and acmetool, or on another machine in
// front of one (mode "node", install_node.go); a second run changes only
// what is not yet so.
func Install(o Options, mode string) error {
	if mode != "default" && mode != "full" && mode != "node" {
		return fmt.Errorf("%w, got %q", ErrBadMode, mode)
	}
	if mode != "node" && o.Node.given() {
		return fmt.Errorf("%w: %w", ErrBadMode, ErrNodeFlags)
	}
	in, err := newInstaller(o.Root, o.DryRun, o.Out, o.Log)
	if err != nil {
		return err
	}
	unlock, err := in.lock()
	if err != nil {
		return err
	}
	defer unlock()
	in.header("install, " + mode + " mode,")
	rec, err := in.loadRecord()
	if err != nil {
		return err
	}
	if mode == "node" {
		return in.installNode(rec, o.Config, o.Node)
	}
	return in.install(rec, mode, o.Config)
}

// Uninstall gives the relay back to nginx and acmetool.
func Uninstall(o Options) error {
	in, err := newInstaller(o.Root, o.DryRun, o.Out, o.Log)
	if err != nil {
		return err
	}
	unlock, err := in.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return in.uninstall(o.Config)
}

// ErrNotInstalled is Reapply's answer where no install is recorded.
var ErrNotInstalled = errors.New("chatmail-edge is not installed here (no " + installRecordFile + ")")

// Reapply runs an install again in its recorded mode, to put back what
// another program undid: chatmail-edge-reapply.path runs it when `cmdeploy
// run` rewrites a file that holds install's changes. It checks and rolls
// back as install does, leaves the edge running (or stopped) as it is, and
// ends with one line that says what it did.
func Reapply(o Options) error {
	in, err := newInstaller(o.Root, o.DryRun, o.Out, o.Log)
	if err != nil {
		return err
	}
	in.reapplying = true
	unlock, err := in.lock()
	if err != nil {
		return err
	}
	defer unlock()
	// systemd names the path that set a path unit off (systemd.exec(5),
	// $TRIGGER_PATH, since version 251).
	trigger := os.Getenv("TRIGGER_PATH")
	what := "install --reapply"
	if trigger != "" {
		what += " (" + trigger + " changed)"
	}
	in.header(what)
	rec, err := in.loadRecord()
	if err != nil {
		return err
	}
	if rec.Mode == "" {
		return ErrNotInstalled
	}
	if rec.Mode == "node" { // nothing of chatmail here to undo the install; its files are kept
		return in.installNode(rec, o.Config, NodeOptions{})
	}
	if err := in.install(rec, rec.Mode, o.Config); err != nil {
		return fmt.Errorf("re-apply %s mode: %w", rec.Mode, err)
	}
	return nil
}

func (in *installer) install(rec *installRecord, mode, configFile string) error {
	if rec.Mode != "" && rec.Mode != mode {
		return fmt.Errorf("chatmail-edge is installed in %s mode: run `chatmail-edge uninstall` first to change to %s mode", rec.Mode, mode)
	}
	s, configData, err := in.preflight(mode, configFile)
	if err != nil {
		return err
	}
	rec.Mode = mode
	fmt.Fprintf(in.out, "  ok     chatmail relay %s, certificates: %s\n", s.MailDomain, s.CertMode())

	user, err := in.folders(configFile, s.StateDir)
	if err != nil {
		return err
	}
	restart, err := in.writeConfig(configFile, configData, &rec.Config)
	if err != nil {
		return err
	}
	if err := in.saveRecord(rec); err != nil {
		return err
	}
	binary, changed, err := in.installBinary()
	if err != nil {
		return err
	}
	restart = restart || changed
	exportCert := ""
	if s.CertMode() == "acme" {
		exportCert = s.ACME().ExportCert
	}
	units, err := systemd.Units(systemd.Params{Binary: binary, Config: configFile, ExportCert: exportCert})
	if err != nil {
		return err
	}
	unitsChanged, err := in.writeUnits(units)
	if err != nil {
		return err
	}
	reapplyChanged, reapply, err := in.reapplyUnits(systemd.Params{Binary: binary, Config: configFile, Watch: reapplyWatch(s, mode)})
	if err != nil {
		return err
	}
	if s.CertMode() == "acme" {
		if err := in.importAcmetool(s); err != nil {
			return err
		}
		if err := in.giveExportDir(exportCert, user, rec); err != nil {
			return err
		}
		if s.Certs.AcmetoolDir != "" {
			if err := in.hideAcmetoolTargets(s.Certs.AcmetoolDir, s.MailDomain, rec); err != nil {
				return err
			}
		}
	}
	if user.uid >= 0 {
		if err := in.chownTree(s.StateDir, user); err != nil {
			return err
		}
	}
	if mode == "full" {
		fm, err := fullModeFor(s, binary, configFile)
		if err != nil {
			return err
		}
		if err := in.applyFull(rec, fm, changed); err != nil {
			return err
		}
	}
	if err := in.takeOver(rec); err != nil {
		return err
	}
	// Started in reverse: the path units first, the reapply one last, once
	// the edge runs.
	var names []string
	if reapply {
		names = append(names, systemd.ReapplyPath)
	}
	names = append(names, systemd.Service)
	if exportCert != "" {
		names = append(names, systemd.ReloadPath)
	}
	if err := in.startEdge(names, unitsChanged || reapplyChanged, restart || unitsChanged, rec); err != nil {
		return err
	}
	return in.summary(s, mode, configFile)
}

// writeUnits writes unit files and tells whether any changed.
func (in *installer) writeUnits(units []systemd.Unit) (bool, error) {
	changed := false
	for _, u := range units {
		c, err := in.writeFile(filepath.Join(unitDir, u.Name), u.Data, 0o644)
		if err != nil {
			return changed, err
		}
		changed = changed || c
	}
	return changed, nil
}

// reapplyUnits writes chatmail-edge-reapply.path and its service when
// there is something to watch, else takes away those of an earlier
// install; it tells whether anything changed and whether the units are
// there.
func (in *installer) reapplyUnits(p systemd.Params) (changed, present bool, err error) {
	if len(p.Watch) == 0 {
		if err := in.stopAndDisable(systemd.ReapplyPath); err != nil {
			return false, false, err
		}
		for _, u := range []string{systemd.ReapplyPath, systemd.ReapplyService} {
			removed, err := in.removeFile(filepath.Join(unitDir, u))
			if err != nil {
				return changed, false, err
			}
			changed = changed || removed
		}
		return changed, false, nil
	}
	units, err := systemd.ReapplyUnits(p)
	if err != nil {
		return false, false, err
	}
	changed, err = in.writeUnits(units)
	return changed, true, err
}

// folders makes the service user, the configuration file's folder and the
// state folder, and returns the user.
func (in *installer) folders(configFile, stateDir string) (owner, error) {
	user, err := in.serviceUser()
	if err != nil {
		return owner{}, err
	}
	if err := in.mkdir(filepath.Dir(configFile), 0o755, owner{0, 0}); err != nil {
		return owner{}, err
	}
	return user, in.mkdir(stateDir, 0o700, user)
}

// writeConfig writes a configuration file install made (data; nil keeps
// the one there) and records its SHA-256 in sum, for uninstall. It tells
// whether the edge must restart for it.
func (in *installer) writeConfig(path string, data []byte, sum *string) (bool, error) {
	if data == nil {
		fmt.Fprintf(in.out, "  ok     keep %s as it is\n", path)
		return false, nil
	}
	if _, err := in.writeFile(path, data, 0o644); err != nil {
		return false, err
	}
	digest := sha256.Sum256(data)
	*sum = hex.EncodeToString(digest[:])
	return true, nil
}

// installBinary puts the binary where the units run it and returns that
// path: the packaged one when install runs from it (dpkg owns and upgrades
// it: install neither copies nor removes it, and removes its own copy of
// an earlier install, which would come first in PATH), else a copy of the
// running binary at installedBinary.
func (in *installer) installBinary() (string, bool, error) {
	self, err := os.Executable()
	if err != nil {
		return "", false, fmt.Errorf("find the running binary: %w", err)
	}
	if in.runsPackaged(self) {
		fmt.Fprintf(in.out, "  ok     run the packaged %s\n", packagedBinary)
		removed, err := in.removeFile(installedBinary)
		return packagedBinary, removed, err
	}
	data, err := os.ReadFile(self)
	if err != nil {
		return "", false, fmt.Errorf("read the running binary: %w", err)
	}
	changed, err := in.writeFile(installedBinary, data, 0o755)
	return installedBinary, changed, err
}

// runsPackaged tells whether the running binary self is the root's
// packagedBinary (the same file, whatever path it was started by).
func (in *installer) runsPackaged(self string) bool {
	running, err := os.Stat(self)
	if err != nil {
		return false
	}
	packaged, err := os.Stat(in.path(packagedBinary))
	return err == nil && os.SameFile(running, packaged)
}

// importAcmetool takes over acmetool's ACME account key and certificate
// into the edge's storage, without asking the CA (acme.ImportAcmetool).
func (in *installer) importAcmetool(s *config.Settings) error {
	if s.Certs.AcmetoolDir == "" {
		return nil
	}
	cfg := s.ACME()
	what := "take over acmetool's ACME account and certificate from " + cfg.AcmetoolDir
	if !in.hasAcmetoolState(cfg.AcmetoolDir, s.MailDomain) {
		fmt.Fprintf(in.out, "  ok     no acmetool state in %s: the edge gets a new account and certificate\n", cfg.AcmetoolDir)
		return nil
	}
	cfg.AcmetoolDir, cfg.StorageDir = in.path(cfg.AcmetoolDir), in.path(cfg.StorageDir)
	cfg.ExportCert, cfg.ExportKey, cfg.Reload = "", "", nil
	if cfg.CARootFile != "" {
		cfg.CARootFile = in.path(cfg.CARootFile)
	}
	if in.dryRun {
		_, err := os.Stat(cfg.StorageDir)
		return in.step(what, err != nil, nil)
	}
	imp, err := acme.ImportAcmetool(cfg, in.log)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if imp == (acme.Imported{}) {
		fmt.Fprintf(in.out, "  ok     %s (nothing new)\n", what)
		return nil
	}
	for _, f := range []string{imp.AccountKey, imp.Certificate} {
		if f != "" {
			fmt.Fprintf(in.out, "  done   took over %s\n", f)
			in.changes++
		}
	}
	return nil
}

// hasAcmetoolState tells whether acmetool's folder holds something to take
// over: an account or the mail domain's live certificate. The folder alone
// is not enough: install itself makes live/<d>/ for the export, and a
// second run must not find "acmetool state" there that the first did not.
func (in *installer) hasAcmetoolState(dir, domain string) bool {
	for _, p := range []string{filepath.Join(dir, "accounts"), filepath.Join(dir, "live", domain, "fullchain")} {
		if _, err := os.Stat(in.path(p)); err == nil {
			return true
		}
	}
	return false
}

// giveExportDir lets the service user write the certificate it exports
// for Postfix and Dovecot: the folder (acmetool's, through the live/<d>
// link) becomes the user's; uninstall gives it back.
func (in *installer) giveExportDir(exportCert string, user owner, rec *installRecord) error {
	if exportCert == "" {
		return nil
	}
	dir := filepath.Dir(exportCert)
	if err := in.mkdir(dir, 0o755, owner{-1, -1}); err != nil {
		return err
	}
	resolved, err := filepath.EvalSymlinks(in.path(dir))
	if in.dryRun && err != nil {
		return nil
	}
	if err != nil {
		return err
	}
	st, err := os.Stat(resolved)
	if err != nil {
		return err
	}
	rel, _ := filepath.Rel(in.root, resolved)
	rel = "/" + rel
	return in.step(fmt.Sprintf("give %s to %s (it exports the certificate there)", rel, systemd.User), user.uid < 0 || !ownedBy(st, user), func() error {
		if rec.ExportDir == "" {
			old := owner{-1, -1}
			if sys, ok := statOwner(st); ok {
				old = sys
			}
			rec.ExportDir, rec.ExportOwner = rel, &old
			if err := in.saveRecord(rec); err != nil {
				return err
			}
		}
		return os.Chown(resolved, user.uid, user.gid)
	})
}

// startEdge enables the units and (live) starts them; systemctl start
// returns once the edge sent READY=1. If it fails, what install stopped
// runs again, so the relay is never left without its front end.
func (in *installer) startEdge(units []string, reloadUnits, restart bool, rec *installRecord) error {
	if err := in.daemonReload(reloadUnits); err != nil {
		return err
	}
	for _, u := range units {
		if err := in.enable(u); err != nil {
			return err
		}
	}
	if !in.live {
		in.skip("start " + systemd.Service + " and wait for it to report ready")
		return nil
	}
	if in.reapplying {
		// The edge runs or was stopped on purpose (for cmdeploy's port
		// check): reapply changes neither. The path units run already.
		return nil
	}
	for _, u := range slices.Backward(units) { // the path unit first
		running := in.active(u)
		what := "start " + u
		if running {
			what = "restart " + u
		}
		if u == systemd.Service {
			what += " (waits for READY=1)"
		}
		err := in.step(what, !running || (restart && u == systemd.Service), func() error {
			_, err := runTool(startTimeout, "systemctl", "restart", u)
			return err
		})
		if err != nil {
			fmt.Fprintf(in.out, "  undo   the edge did not start (see journalctl -u %s): chatmail's front end runs again\n", u)
			_, _ = runTool(commandTimeout, "systemctl", "stop", systemd.Service)
			// Nothing may re-apply what is taken back now.
			undo := errors.Join(in.stopAndDisable(systemd.ReapplyPath), in.giveBack(rec))
			if rec.Mode == "full" {
				undo = errors.Join(undo, in.revertFull(rec))
			}
			return errors.Join(err, undo)
		}
	}
	return nil
}

// summary probes the running edge and prints the DNS records (live).
func (in *installer) summary(s *config.Settings, mode, configFile string) error {
	if in.reapplying {
		// The one line of the journal that says what happened.
		if in.changes == 0 {
			fmt.Fprintf(in.out, "\nNothing to re-apply: chatmail-edge's changes (%s mode) are in place.\n", mode)
		} else {
			fmt.Fprintf(in.out, "\nRe-applied chatmail-edge's changes (%s mode) that another program (cmdeploy run?) undid: %s.\n", mode, changesText(in.changes))
		}
		return nil
	}
	if in.changes == 0 {
		fmt.Fprintf(in.out, "\nNothing to change: chatmail-edge is installed (%s mode).\n", mode)
	} else if in.dryRun {
		fmt.Fprintf(in.out, "\n%d step%s to take.\n", in.changes, plural(in.changes))
	} else {
		fmt.Fprintf(in.out, "\nInstalled (%s mode): %s. Undo with `chatmail-edge uninstall`.\n", mode, changesText(in.changes))
	}
	if !in.live || in.dryRun {
		return nil
	}
	fmt.Fprintf(in.out, "\nprobe %s through the edge on 127.0.0.1:\n", s.MailDomain)
	ok, err := in.probe(s, mode)
	if err != nil {
		return err
	}
	fmt.Fprintf(in.out, "\nDNS records:\n")
	zone, err := dnszone.Build(s, dnszone.Options{Log: in.log})
	switch {
	case errors.Is(err, dnszone.ErrNoName):
		fmt.Fprintf(in.out, "; %v.\n", err)
	case err != nil:
		return fmt.Errorf("print the DNS records: %w", err)
	default:
		zone.Print(in.out)
	}
	if !ok {
		return errors.New("the edge runs, but the probe failed (above); `chatmail-edge uninstall` undoes the install")
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func changesText(n int) string { return fmt.Sprintf("%d change%s", n, plural(n)) }

// probe runs `probe` against the local edge, on the ports it holds.
func (in *installer) probe(s *config.Settings, mode string) (bool, error) {
	o := probe.Options{Domain: s.MailDomain, Connect: "127.0.0.1", ECH: "auto", Timeout: 10 * time.Second,
		HTTPSPort: s.HTTPSPort(), IMAPSPort: 993, SMTPSPort: 465}
	if s.CertMode() == "self" {
		pem, err := os.ReadFile(s.Certs.SelfCert)
		if err != nil {
			return false, fmt.Errorf("read the self-signed certificate: %w", err)
		}
		o.RootCAs = x509.NewCertPool()
		o.RootCAs.AppendCertsFromPEM(pem)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := probe.Run(ctx, o)
	if mode != "full" && mode != "node" { // 993 and 465 are Dovecot's and Postfix's, without ECH
		https := ":" + strconv.Itoa(o.HTTPSPort)
		r.Checks = slices.DeleteFunc(r.Checks, func(c probe.Check) bool { return !strings.HasSuffix(c.Address, https) })
		r.OK = !slices.ContainsFunc(r.Checks, func(c probe.Check) bool { return !c.OK })
	}
	r.WriteTable(in.out)
	return r.OK, nil
}

// uninstall stops and removes the edge, gives back what install took
// over, and leaves the certificates and keys in the state folder.
func (in *installer) uninstall(configFile string) error {
	in.header("uninstall")
	if in.live && os.Geteuid() != 0 {
		return errors.New("uninstall changes system services and files: run it as root")
	}
	rec, err := in.loadRecord()
	if err != nil {
		return err
	}
	// The reapply path first: it would re-apply what uninstall takes back.
	for _, u := range []string{systemd.ReapplyPath, systemd.ReloadPath, systemd.Service} {
		if err := in.stopAndDisable(u); err != nil {
			return err
		}
	}
	if rec.Mode == "full" {
		if err := in.revertFull(rec); err != nil {
			return err
		}
	}
	removedUnits := false
	for _, u := range []string{systemd.Service, systemd.ReloadPath, systemd.ReloadService, systemd.ReapplyPath, systemd.ReapplyService} {
		removed, err := in.removeFile(filepath.Join(unitDir, u))
		if err != nil {
			return err
		}
		removedUnits = removedUnits || removed
	}
	if err := in.daemonReload(removedUnits); err != nil {
		return err
	}
	for _, f := range []string{installedBinary, sysusersFile} {
		if _, err := in.removeFile(f); err != nil {
			return err
		}
	}
	if err := in.removeIfUnchanged(configFile, rec.Config); err != nil {
		return err
	}
	if rec.Mode == "node" {
		if err := in.removeIfUnchanged(nodeChatmailINI, rec.ChatmailINI); err != nil {
			return err
		}
	}
	if rec.ExportDir != "" && rec.ExportOwner != nil {
		o := *rec.ExportOwner
		err := in.step(fmt.Sprintf("give %s back to %d:%d", rec.ExportDir, o.uid, o.gid), true, func() error {
			return os.Chown(in.path(rec.ExportDir), o.uid, o.gid)
		})
		if err != nil {
			return err
		}
		rec.ExportDir, rec.ExportOwner = "", nil
	}
	if err := in.giveBack(rec); err != nil {
		return err
	}
	if _, err := in.removeFile(installRecordFile); err != nil {
		return err
	}
	if !in.dryRun {
		_ = os.Remove(in.path(filepath.Dir(configFile))) // only when empty
	}
	fmt.Fprintf(in.out, "\nKept: the state folder (ECH keys, ACME account and certificates) and the user %s.\n", systemd.User)
	return nil
}

// removeIfUnchanged removes a configuration file install wrote, whose
// SHA-256 it recorded as sum, unless the operator changed it since.
func (in *installer) removeIfUnchanged(configFile, sum string) error {
	data, err := os.ReadFile(in.path(configFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	got := sha256.Sum256(data)
	if sum == "" || hex.EncodeToString(got[:]) != sum {
		fmt.Fprintf(in.out, "  ok     keep %s (not written by install, or changed since)\n", configFile)
		return nil
	}
	_, err = in.removeFile(configFile)
	return err
}
