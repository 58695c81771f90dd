package install

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"chatmail-edge/config"
	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/mail"
	"chatmail-edge/systemd"
)

// How the edge takes over from chatmail's front end so that `cmdeploy run`
// neither fails nor undoes it (docs/CMDEPLOY.md). cmdeploy enables, starts
// and restarts nginx and acmetool's units, rewrites dovecot.conf and
// master.cf from its templates, puts acmetool's target back and runs
// `acmetool reconcile`:
//
//   - nginx.service and acmetool's units get a drop-in that makes them
//     no-ops: they start, restart and reload fine and take no port (a
//     masked unit would make cmdeploy fail);
//   - acmetool's target for the mail domain is taken out of its desired/
//     folder, so that its reconcile asks no CA (acmetool sees the edge's
//     renewed certificate, whose key it does not have, as none at all);
//   - chatmail-edge-reapply.path watches the files cmdeploy rewrites over
//     these changes and runs `install --reapply`.

// replacedUnits are chatmail's units that the edge stands in for: nginx (80
// and 443), acmetool's redirector (127.0.0.1:402) and its renewal, which
// acmetool-reconcile.timer starts. fcgiwrap stays as cmdeploy runs it:
// nothing connects to its socket once nginx does not run (the edge runs
// newemail.py as CGI itself).
var replacedUnits = []string{"nginx.service", "acmetool-redirector.service", "acmetool-reconcile.service"}

// dropInPath is where unit's drop-in goes.
func dropInPath(unit string) string { return filepath.Join(unitDir, unit+".d", systemd.DropIn) }

// takeOver turns chatmail's nginx and acmetool units into no-ops, stopping
// the ones that run first (with their own stop commands), after unmasking
// what an install before the drop-ins masked.
func (in *installer) takeOver(rec *installRecord) error {
	if err := in.unmaskLegacy(rec); err != nil {
		return err
	}
	written := false
	for _, u := range replacedUnits {
		if in.unitState(u) == "" {
			continue // not installed
		}
		data, _ := systemd.TakeoverDropIn(u)
		p := dropInPath(u)
		old, err := os.ReadFile(in.path(p))
		needed := err != nil || !bytes.Equal(old, data)
		active := needed && in.live && in.active(u)
		err = in.step(fmt.Sprintf("replace %s by a no-op that cmdeploy can still start (%s)", u, p), needed, func() error {
			if !slices.ContainsFunc(rec.Replaced, func(s stoppedUnit) bool { return s.Unit == u }) {
				ran := active || slices.Contains(rec.Stopped, stoppedUnit{Unit: u, Active: true})
				rec.Replaced = append(rec.Replaced, stoppedUnit{Unit: u, Active: ran})
				if err := in.saveRecord(rec); err != nil {
					return err
				}
			}
			if active {
				if _, err := in.systemctl("stop", u); err != nil {
					return err
				}
			}
			if err := os.MkdirAll(filepath.Dir(in.path(p)), 0o755); err != nil {
				return err
			}
			return atomicfile.Write(in.path(p), data, 0o644)
		})
		if err != nil {
			return err
		}
		written = written || needed
	}
	if len(rec.Stopped) > 0 && !in.dryRun {
		rec.Stopped = nil
		if err := in.saveRecord(rec); err != nil {
			return err
		}
	}
	return in.daemonReload(written)
}

// unmaskLegacy unmasks the units an install before the drop-ins masked,
// and starts those that ran then and have no drop-in now (fcgiwrap).
func (in *installer) unmaskLegacy(rec *installRecord) error {
	return in.unmaskAndStart(rec.Stopped, func(unit string) bool { return !slices.Contains(replacedUnits, unit) })
}

// unmaskAndStart unmasks units and (live) starts those that were active,
// where start says so.
func (in *installer) unmaskAndStart(units []stoppedUnit, start func(unit string) bool) error {
	var errs []error
	unmasked := false
	for _, u := range units {
		masked := in.unitState(u.Unit) == "masked"
		errs = append(errs, in.step("unmask "+u.Unit, masked, func() error {
			_, err := in.systemctl("unmask", u.Unit)
			return err
		}))
		unmasked = unmasked || masked
	}
	errs = append(errs, in.daemonReload(unmasked))
	if in.live {
		for _, u := range units {
			errs = append(errs, in.step("start "+u.Unit, u.Active && start(u.Unit) && !in.active(u.Unit), func() error {
				_, err := in.systemctl("start", u.Unit)
				return err
			}))
		}
	}
	return errors.Join(errs...)
}

// giveBack removes the drop-ins and (live) restarts the units that ran at
// install or run now (cmdeploy started the no-op since), which are then
// the real ones again; puts acmetool's targets back; and unmasks what an
// older install masked. The edge must have let go of its ports.
func (in *installer) giveBack(rec *installRecord) error {
	var errs []error
	removed := false
	for _, r := range slices.Backward(rec.Replaced) {
		done, err := in.removeFile(dropInPath(r.Unit))
		errs = append(errs, err)
		if done && !in.dryRun {
			_ = os.Remove(filepath.Dir(in.path(dropInPath(r.Unit)))) // only when empty
		}
		removed = removed || done
	}
	errs = append(errs, in.daemonReload(removed))
	if in.live {
		for _, r := range rec.Replaced {
			errs = append(errs, in.step("restart "+r.Unit, r.Active || in.active(r.Unit), func() error {
				_, err := in.systemctl("restart", r.Unit)
				return err
			}))
		}
	}
	errs = append(errs, in.restoreAcmetoolTargets(rec), in.unmaskAndStart(rec.Stopped, func(string) bool { return true }))
	if err := errors.Join(errs...); err != nil || len(rec.Replaced)+len(rec.Stopped)+len(rec.AcmetoolDesired) == 0 {
		return err
	}
	rec.Replaced, rec.Stopped, rec.AcmetoolDesired = nil, nil, nil
	return in.saveRecord(rec)
}

// hideAcmetoolTargets takes acmetool's targets for the mail domain (cmdeploy
// writes desired/<d> and removes desired/<d>-*) out of its desired/ folder
// into the record. acmetool then has nothing to renew: cmdeploy's
// `acmetool reconcile` succeeds without asking a CA, whether or not the edge
// (which would answer the challenge) runs, and acmetool never links another
// certificate in the export folder's place.
func (in *installer) hideAcmetoolTargets(acmetoolDir, domain string, rec *installRecord) error {
	desired := filepath.Join(acmetoolDir, "desired")
	entries, err := os.ReadDir(in.path(desired))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		if (name != domain && !strings.HasPrefix(name, domain+"-")) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(desired, name)
		data, err := os.ReadFile(in.path(p))
		if err != nil {
			return err
		}
		err = in.step("take acmetool's target "+p+" into "+installRecordFile+" (acmetool has nothing to renew)", true, func() error {
			if rec.AcmetoolDesired == nil {
				rec.AcmetoolDesired = map[string]string{}
			}
			rec.AcmetoolDesired[p] = string(data)
			if err := in.saveRecord(rec); err != nil {
				return err
			}
			return os.Remove(in.path(p))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// restoreAcmetoolTargets puts the targets hideAcmetoolTargets took back,
// unless one is there again (cmdeploy wrote it, and nothing took it since).
func (in *installer) restoreAcmetoolTargets(rec *installRecord) error {
	var errs []error
	for _, p := range slices.Sorted(maps.Keys(rec.AcmetoolDesired)) {
		if _, err := os.Stat(in.path(p)); err == nil {
			fmt.Fprintf(in.out, "  ok     keep acmetool's target %s as it is\n", p)
			continue
		}
		_, err := in.writeFile(p, []byte(rec.AcmetoolDesired[p]), 0o644)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// reapplyWatch are the files that chatmail-edge-reapply.path watches:
// those `cmdeploy run` rewrites over what install changed in them.
func reapplyWatch(s *config.Settings, mode string) []string {
	var watch []string
	if mode == "full" {
		watch = append(watch, dovecotConf, postfixDir+"/master.cf")
	}
	if s.CertMode() == "acme" && s.Certs.AcmetoolDir != "" {
		watch = append(watch, filepath.Join(s.Certs.AcmetoolDir, "desired", s.MailDomain))
	}
	return watch
}

// installLock is held by install, uninstall and reapply on a live system:
// a reapply that install's own edits set off waits until install is done.
const installLock = "/run/lock/chatmail-edge-install.lock"

// lock takes installLock (live only), waiting for another holder, and
// returns its release.
func (in *installer) lock() (func(), error) {
	if !in.live || in.dryRun {
		return func() {}, nil
	}
	if err := os.MkdirAll(filepath.Dir(installLock), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(installLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); errors.Is(err, syscall.EWOULDBLOCK) {
		fmt.Fprintf(in.out, "  wait   another install, uninstall or reapply runs (%s)\n", installLock)
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", installLock, err)
	}
	return func() { f.Close() }, nil
}

// mailDaemons are reloaded after full mode's changes, each with the
// loopback listener that shows it took them.
var mailDaemons = []struct{ unit, listener string }{
	{"dovecot.service", mail.ProxyIMAPAddress},
	{"postfix.service", mail.ProxySMTPAddress},
}
