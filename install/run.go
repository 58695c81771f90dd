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
}

// ErrBadRoot marks a --root that cannot be used, ErrBadMode a mode that
// is neither default nor full.
var (
	ErrBadRoot = errors.New("bad root folder")
	ErrBadMode = errors.New("want --mode default or full")
)

// Install installs the edge on a chatmail relay (mode "default" or
// "full"), taking over from nginx and acmetool; a second run changes only
// what is not yet so.
func Install(o Options, mode string) error {
	if mode != "default" && mode != "full" {
		return fmt.Errorf("%w, got %q", ErrBadMode, mode)
	}
	in, err := newInstaller(o.Root, o.DryRun, o.Out, o.Log)
	if err != nil {
		return err
	}
	return in.install(mode, o.Config)
}

// Uninstall gives the relay back to nginx and acmetool.
func Uninstall(o Options) error {
	in, err := newInstaller(o.Root, o.DryRun, o.Out, o.Log)
	if err != nil {
		return err
	}
	return in.uninstall(o.Config)
}

func (in *installer) install(mode, configFile string) error {
	in.header("install, " + mode + " mode,")
	rec, err := in.loadRecord()
	if err != nil {
		return err
	}
	if rec.Mode != "" && rec.Mode != mode {
		return fmt.Errorf("chatmail-edge is installed in %s mode: run `chatmail-edge uninstall` first to change to %s mode", rec.Mode, mode)
	}
	s, configData, err := in.preflight(mode, configFile)
	if err != nil {
		return err
	}
	rec.Mode = mode
	fmt.Fprintf(in.out, "  ok     chatmail relay %s, certificates: %s\n", s.MailDomain, s.CertMode())

	user, err := in.serviceUser()
	if err != nil {
		return err
	}
	if err := in.mkdir(filepath.Dir(configFile), 0o755, owner{0, 0}); err != nil {
		return err
	}
	if err := in.mkdir(s.StateDir, 0o700, user); err != nil {
		return err
	}
	restart := false
	if configData != nil {
		if _, err := in.writeFile(configFile, configData, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(configData)
		rec.Config, restart = hex.EncodeToString(sum[:]), true
	} else {
		fmt.Fprintf(in.out, "  ok     keep %s as it is\n", configFile)
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
	unitsChanged := false
	for _, u := range units {
		changed, err := in.writeFile(filepath.Join(unitDir, u.Name), u.Data, 0o644)
		if err != nil {
			return err
		}
		unitsChanged = unitsChanged || changed
	}
	if s.CertMode() == "acme" {
		if err := in.importAcmetool(s); err != nil {
			return err
		}
		if err := in.giveExportDir(exportCert, user, rec); err != nil {
			return err
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
	names := []string{systemd.Service}
	if exportCert != "" {
		names = append(names, systemd.ReloadPath)
	}
	if err := in.startEdge(names, unitsChanged, restart || unitsChanged, rec); err != nil {
		return err
	}
	return in.summary(s, mode, configFile)
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

// takeOver stops and masks chatmail's nginx, acmetool and fcgiwrap units,
// recording which ran.
func (in *installer) takeOver(rec *installRecord) error {
	for _, u := range takenOver {
		state := in.unitState(u)
		if state == "" {
			continue // not installed
		}
		masked := state == "masked" || state == "masked-runtime"
		active := in.live && in.active(u)
		err := in.step("stop and mask "+u, !masked || active, func() error {
			if !slices.ContainsFunc(rec.Stopped, func(s stoppedUnit) bool { return s.Unit == u }) {
				rec.Stopped = append(rec.Stopped, stoppedUnit{Unit: u, Active: active})
				if err := in.saveRecord(rec); err != nil {
					return err
				}
			}
			if active {
				if _, err := in.systemctl("stop", u); err != nil {
					return err
				}
			}
			_, err := in.systemctl("mask", u)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// giveBack unmasks what takeOver masked and starts what ran.
func (in *installer) giveBack(rec *installRecord) error {
	var errs []error
	for _, u := range slices.Backward(rec.Stopped) {
		state := in.unitState(u.Unit)
		err := in.step("unmask "+u.Unit, state == "masked", func() error {
			_, err := in.systemctl("unmask", u.Unit)
			return err
		})
		errs = append(errs, err)
		if !in.live {
			continue
		}
		if state == "masked" && !in.dryRun {
			_, err := runTool(commandTimeout, "systemctl", "daemon-reload")
			errs = append(errs, err)
		}
		errs = append(errs, in.step("start "+u.Unit, u.Active && !in.active(u.Unit), func() error {
			_, err := in.systemctl("start", u.Unit)
			return err
		}))
	}
	if err := errors.Join(errs...); err != nil || len(rec.Stopped) == 0 {
		return err
	}
	rec.Stopped = nil
	return in.saveRecord(rec)
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
			undo := in.giveBack(rec)
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
	if in.changes == 0 {
		fmt.Fprintf(in.out, "\nNothing to change: chatmail-edge is installed (%s mode).\n", mode)
	} else if in.dryRun {
		fmt.Fprintf(in.out, "\n%d steps to take.\n", in.changes)
	} else {
		fmt.Fprintf(in.out, "\nInstalled (%s mode): %d changes. Undo with `chatmail-edge uninstall`.\n", mode, in.changes)
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
	if mode != "full" { // 993 and 465 are Dovecot's and Postfix's, without ECH
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
	for _, u := range []string{systemd.ReloadPath, systemd.Service} {
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
	for _, u := range []string{systemd.Service, systemd.ReloadPath, systemd.ReloadService} {
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
	if err := in.removeConfig(configFile, rec); err != nil {
		return err
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

// removeConfig removes the configuration file install wrote, unless the
// operator changed it since.
func (in *installer) removeConfig(configFile string, rec *installRecord) error {
	data, err := os.ReadFile(in.path(configFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if rec.Config == "" || hex.EncodeToString(sum[:]) != rec.Config {
		fmt.Fprintf(in.out, "  ok     keep %s (not written by install, or changed since)\n", configFile)
		return nil
	}
	_, err = in.removeFile(configFile)
	return err
}
