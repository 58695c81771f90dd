package install

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/mail"
	"chatmail-edge/metadata"
	"chatmail-edge/systemd"
)

// Full mode: Dovecot and Postfix leave 993 and 465 to the edge and take
// its connections on loopback with PROXY v2 (docs/PROXY.md).
const (
	dovecotConf    = "/etc/dovecot/dovecot.conf"
	dovecotDropIn  = "/etc/dovecot/conf.d/90-chatmail-edge.conf"
	dovecotInclude = "!include_try conf.d/90-chatmail-edge.conf"
	postfixDir     = "/etc/postfix"
	smtpsService   = "smtps/inet"
	edgeService    = mail.PostfixProxyServiceName + "/inet"
	// proxyListenTimeout bounds the wait for the daemons' new loopback
	// listeners after their reload.
	proxyListenTimeout = 30 * time.Second
)

// postconf runs postconf(1) on the root's Postfix configuration.
func (in *installer) postconf(args ...string) (string, error) {
	return runTool(commandTimeout, "postconf", append([]string{"-c", in.path(postfixDir)}, args...)...)
}

// edgeServiceLine is mail.PostfixProxyService, with the limits of the
// relay's max_smtp_connections, as one `postconf -M` value: the master.cf
// fields and the -o options, without the comments.
func edgeServiceLine(maxSMTPConnections int) string {
	var fields []string
	for line := range strings.Lines(mail.PostfixProxyService(maxSMTPConnections)) {
		if !strings.HasPrefix(line, "#") {
			fields = append(fields, strings.Fields(line)...)
		}
	}
	return strings.Join(fields, " ")
}

func sameFields(a, b string) bool {
	return strings.Join(strings.Fields(a), " ") == strings.Join(strings.Fields(b), " ")
}

// snapshot is the content of files before full mode changed them (nil for
// a file that did not exist).
type snapshot map[string][]byte

func (in *installer) takeSnapshot(paths ...string) (snapshot, error) {
	s := snapshot{}
	for _, p := range paths {
		data, err := os.ReadFile(in.path(p))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		s[p] = data
	}
	return s, nil
}

func (in *installer) restore(s snapshot) error {
	var errs []error
	for p, data := range s {
		if data == nil {
			if err := os.Remove(in.path(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		errs = append(errs, atomicfile.Write(in.path(p), data, 0o644))
	}
	return errors.Join(errs...)
}

// fullMode is what full mode puts into Dovecot, Postfix and systemd, from
// the settings: the Dovecot drop-in, the Postfix PROXY service (a
// `postconf -M` value) and, unless [ech] metadata_file is empty, the IMAP
// METADATA proxy's unit, at whose socket the drop-in points Dovecot's
// mail_attribute_dict (docs/METADATA.md).
type fullMode struct {
	dovecotDropIn  []byte
	postfixService string
	metadataUnit   *systemd.Unit
}

// metadataUnitPath is where the METADATA proxy's unit goes.
var metadataUnitPath = filepath.Join(unitDir, systemd.MetadataProxy)

// metadataAttributeDict is the value of Dovecot's mail_attribute_dict that
// sends METADATA to the proxy.
var metadataAttributeDict = strings.TrimPrefix(metadata.DovecotAttributeDict(metadata.DefaultSocket), "mail_attribute_dict = ")

func fullModeFor(s *config.Settings, binary, configFile string) (fullMode, error) {
	fm := fullMode{dovecotDropIn: []byte(mail.DovecotProxyDropIn), postfixService: edgeServiceLine(s.MaxSMTPConnections)}
	if s.ECHMetadataFile == "" {
		return fm, nil
	}
	unit, err := systemd.MetadataProxyUnit(systemd.Params{Binary: binary, Config: configFile, ECHFile: s.ECHMetadataFile})
	if err != nil {
		return fm, err
	}
	fm.metadataUnit = &unit
	fm.dovecotDropIn = append(fm.dovecotDropIn, "\n# IMAP METADATA through chatmail-edge-metadata.service (docs/METADATA.md):\n"+
		"# the ECH config list, and chatmail's own entries from chatmail-metadata.\n"+
		metadata.DovecotAttributeDict(metadata.DefaultSocket)+"\n"...)
	return fm, nil
}

// applyFull writes the drop-ins and the METADATA proxy's unit, checks them
// with doveconf and postconf, starts the proxy, reloads the daemons and
// waits for their loopback listeners. If anything fails, the files are put
// back as they were, the daemons reloaded, and a proxy unit this run added
// is taken away again.
func (in *installer) applyFull(rec *installRecord, fm fullMode, binaryChanged bool) error {
	for _, p := range []string{dovecotConf, postfixDir + "/master.cf"} {
		if _, err := os.Stat(in.path(p)); err != nil {
			return fmt.Errorf("full mode changes Dovecot and Postfix: %w", err)
		}
	}
	before, err := in.takeSnapshot(dovecotConf, dovecotDropIn, postfixDir+"/master.cf", metadataUnitPath)
	if err != nil {
		return err
	}
	savedRec := *rec
	changed, unitChanged, err := in.writeFullMode(rec, fm)
	changed = changed || unitChanged
	if err == nil && !in.dryRun {
		err = in.checkMailConfig(fm)
		if err == nil && fm.metadataUnit != nil {
			// Before Dovecot's reload: its mail_attribute_dict points here.
			err = in.startMetadataProxy(unitChanged || binaryChanged)
		}
		if err == nil && changed && in.live {
			err = in.reloadMail()
		}
		if err == nil && fm.metadataUnit == nil {
			err = in.removeMetadataProxy() // Dovecot no longer uses it
		}
	}
	if err != nil && changed && !in.dryRun {
		fmt.Fprintf(in.out, "  undo   Dovecot's and Postfix's files are put back as they were\n")
		*rec = savedRec
		rerr := errors.Join(in.restore(before), in.saveRecord(rec))
		if in.live {
			// Dovecot leaves the proxy's socket before the proxy goes.
			rerr = errors.Join(rerr, in.reloadMailOnly())
		}
		if before[metadataUnitPath] == nil {
			rerr = errors.Join(rerr, in.removeMetadataProxy())
		}
		return errors.Join(fmt.Errorf("full mode was taken back: %w", err), rerr)
	}
	return err
}

// writeFullMode makes the changes and tells whether there were any, in
// Dovecot's and Postfix's files and in the METADATA proxy's unit.
func (in *installer) writeFullMode(rec *installRecord, fm fullMode) (changed, unitChanged bool, err error) {
	changed, err = in.writeFile(dovecotDropIn, fm.dovecotDropIn, 0o644)
	if err != nil {
		return changed, false, err
	}
	conf, err := os.ReadFile(in.path(dovecotConf))
	if err != nil {
		return changed, false, err
	}
	// chatmail's dovecot.conf includes nothing by itself.
	hasInclude := hasLine(conf, dovecotInclude)
	changed = changed || !hasInclude
	err = in.step("include the drop-in at the end of "+dovecotConf, !hasInclude, func() error {
		rec.DovecotInclude = true
		if err := in.saveRecord(rec); err != nil {
			return err
		}
		if len(conf) > 0 && !strings.HasSuffix(string(conf), "\n") {
			conf = append(conf, '\n')
		}
		return atomicfile.Write(in.path(dovecotConf), append(conf, dovecotInclude+"\n"...), fileMode(in.path(dovecotConf)))
	})
	if err != nil {
		return changed, false, err
	}

	smtps, err := in.postconf("-M", smtpsService)
	if err != nil {
		return changed, false, err
	}
	smtps = strings.TrimSpace(smtps)
	changed = changed || smtps != ""
	err = in.step("turn off Postfix's smtps service (postconf -M# "+smtpsService+")", smtps != "", func() error {
		rec.SMTPSEntry = smtps
		if err := in.saveRecord(rec); err != nil {
			return err
		}
		_, err := in.postconf("-M#", smtpsService)
		return err
	})
	if err != nil {
		return changed, false, err
	}
	current, err := in.postconf("-M", edgeService)
	if err != nil {
		return changed, false, err
	}
	needed := !sameFields(current, fm.postfixService)
	changed = changed || needed
	err = in.step("add Postfix's PROXY v2 service "+edgeService+" (postconf -M)", needed, func() error {
		_, err := in.postconf("-M", edgeService+"="+fm.postfixService)
		return err
	})
	if err != nil || fm.metadataUnit == nil {
		return changed, false, err
	}
	unitChanged, err = in.writeFile(metadataUnitPath, fm.metadataUnit.Data, 0o644)
	return changed, unitChanged, err
}

// startMetadataProxy enables the METADATA proxy's unit and (live) starts
// it, or restarts it when its unit or binary changed; systemctl returns
// once it reported ready (its socket listens).
func (in *installer) startMetadataProxy(restart bool) error {
	if err := in.daemonReload(restart); err != nil {
		return err
	}
	if err := in.enable(systemd.MetadataProxy); err != nil || !in.live {
		return err
	}
	running := in.active(systemd.MetadataProxy)
	what := "start " + systemd.MetadataProxy
	if running {
		what = "restart " + systemd.MetadataProxy
	}
	return in.step(what+" (waits for its socket)", !running || restart, func() error {
		_, err := runTool(startTimeout, "systemctl", "restart", systemd.MetadataProxy)
		return err
	})
}

// removeMetadataProxy stops, disables and removes the METADATA proxy's
// unit, if there is one. Dovecot must not point at its socket any more.
func (in *installer) removeMetadataProxy() error {
	if err := in.stopAndDisable(systemd.MetadataProxy); err != nil {
		return err
	}
	removed, err := in.removeFile(metadataUnitPath)
	if err != nil {
		return err
	}
	return in.daemonReload(removed)
}

// revertFull takes full mode's changes back (uninstall).
func (in *installer) revertFull(rec *installRecord) error {
	changed, err := in.removeFile(dovecotDropIn)
	if err != nil {
		return err
	}
	conf, err := os.ReadFile(in.path(dovecotConf))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	hasInclude := rec.DovecotInclude && hasLine(conf, dovecotInclude)
	changed = changed || hasInclude
	err = in.step("remove the drop-in's include line from "+dovecotConf, hasInclude, func() error {
		var kept strings.Builder
		for line := range strings.Lines(string(conf)) {
			if strings.TrimSpace(line) != dovecotInclude {
				kept.WriteString(line)
			}
		}
		return atomicfile.Write(in.path(dovecotConf), []byte(kept.String()), fileMode(in.path(dovecotConf)))
	})
	if err != nil {
		return err
	}
	if _, err := os.Stat(in.path(postfixDir + "/main.cf")); err == nil {
		current, err := in.postconf("-M", edgeService)
		if err != nil {
			return err
		}
		hasEdge := strings.TrimSpace(current) != ""
		changed = changed || hasEdge
		err = in.step("remove Postfix's PROXY v2 service "+edgeService+" (postconf -MX)", hasEdge, func() error {
			_, err := in.postconf("-MX", edgeService)
			return err
		})
		if err != nil {
			return err
		}
		smtps, err := in.postconf("-M", smtpsService)
		if err != nil {
			return err
		}
		missing := rec.SMTPSEntry != "" && strings.TrimSpace(smtps) == ""
		changed = changed || missing
		err = in.step("restore Postfix's smtps service (postconf -M)", missing, func() error {
			_, err := in.postconf("-M", smtpsService+"="+rec.SMTPSEntry)
			return err
		})
		if err != nil {
			return err
		}
	}
	if changed && in.live && !in.dryRun {
		// Dovecot first leaves the METADATA proxy, which then goes.
		if err := in.reloadMailOnly(); err != nil {
			return err
		}
	}
	return in.removeMetadataProxy()
}

// checkMailConfig has Dovecot and Postfix parse their configuration with
// the drop-ins, and checks that the new listeners (and the METADATA
// proxy's dict) are in it.
func (in *installer) checkMailConfig(fm fullMode) error {
	out, err := runTool(commandTimeout, "doveconf", "-c", in.path(dovecotConf), "-n")
	if err != nil {
		return err
	}
	if !strings.Contains(out, "inet_listener imap_edge") {
		return fmt.Errorf("doveconf -n does not show the imap_edge listener of %s", dovecotDropIn)
	}
	if fm.metadataUnit != nil {
		out, err := runTool(commandTimeout, "doveconf", "-c", in.path(dovecotConf), "-h", "mail_attribute_dict")
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(out); got != metadataAttributeDict {
			return fmt.Errorf("doveconf -h mail_attribute_dict shows %q, not the %q of %s (is something included after it?)", got, metadataAttributeDict, dovecotDropIn)
		}
	}
	// postconf warns (on stderr, with exit status 0) about a $parameter
	// that main.cf does not define: the PROXY service's restrictions
	// would silently be empty.
	pc := exec.Command("postconf", "-c", in.path(postfixDir), "-n")
	pcOut, err := pc.CombinedOutput()
	if err != nil {
		return fmt.Errorf("postconf -n: %w: %s", err, bytes.TrimSpace(pcOut))
	}
	for line := range strings.Lines(string(pcOut)) {
		if strings.Contains(line, "warning:") && strings.Contains(line, "undefined parameter") {
			return fmt.Errorf("postconf -n: %s (full mode needs chatmail's main.cf)", strings.TrimSpace(line))
		}
	}
	out, err = in.postconf("-M", edgeService)
	if err != nil {
		return err
	}
	if !sameFields(out, fm.postfixService) {
		return fmt.Errorf("postconf -M %s shows %q", edgeService, strings.TrimSpace(out))
	}
	fmt.Fprintf(in.out, "  ok     doveconf -n and postconf -n accept the drop-ins\n")
	return nil
}

// reloadMail reloads Dovecot and Postfix and waits until their loopback
// PROXY listeners accept. One that does not run is left alone: it reads the
// new configuration when it starts (cmdeploy stops Dovecot while it
// upgrades it, and reapply may run meanwhile).
func (in *installer) reloadMail() error {
	deadline := time.Now().Add(proxyListenTimeout)
	for _, d := range mailDaemons {
		if !in.active(d.unit) {
			fmt.Fprintf(in.out, "  skip   reload %s: it does not run, and reads the new configuration when it starts\n", d.unit)
			continue
		}
		if _, err := runTool(commandTimeout, "systemctl", "reload", d.unit); err != nil {
			return err
		}
		for {
			c, err := net.DialTimeout("tcp", d.listener, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("nothing listens on %s %s after the reload of %s: %w", d.listener, proxyListenTimeout, d.unit, err)
			}
			time.Sleep(200 * time.Millisecond) // the daemons give no signal when a listener is up
		}
		fmt.Fprintf(in.out, "  ok     %s listens on %s\n", d.unit, d.listener)
	}
	return nil
}

// reloadMailOnly reloads Dovecot and Postfix where they run, after their
// files were put back.
func (in *installer) reloadMailOnly() error {
	_, err := runTool(commandTimeout, "systemctl", "try-reload-or-restart", mailDaemons[0].unit, mailDaemons[1].unit)
	return err
}

func hasLine(data []byte, line string) bool {
	for l := range strings.Lines(string(data)) {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// fileMode is a file's permissions, 0644 when it cannot be read.
func fileMode(path string) fs.FileMode {
	if st, err := os.Stat(path); err == nil {
		return st.Mode().Perm()
	}
	return 0o644
}
