package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"chatmail-edge/metadata"
	"chatmail-edge/systemd"
)

//go:embed debian
var debianFiles embed.FS

// defaultMaintainer is the packages' Maintainer field (Debian policy 5.6.2
// wants a name and an address); -maintainer sets another.
const defaultMaintainer = "chatmail-edge maintainers <chatmail-edge@invalid>"

// debianArch is Debian's name of each GOARCH the release builds.
var debianArch = map[string]string{"amd64": "amd64", "arm64": "arm64"}

// Where the package puts things. The binary goes to /usr/bin: Debian policy
// 9.1.2 keeps packages out of /usr/local, which is the administrator's
// (and where `chatmail-edge install` puts a copy of a binary run from
// elsewhere); install run from /usr/bin/chatmail-edge uses it in place.
const (
	packagedBinary = systemd.PackagedBinary
	docDir         = "/usr/share/doc/chatmail-edge"
	// As install writes the units, for the defaults of chatmail-edge.ini
	// (package main's defaultConfigFile, and [acme] export_cert).
	unitConfig         = "/etc/chatmail-edge/chatmail-edge.ini"
	unitExportCert     = "/var/lib/acme/live/<mail_domain>/fullchain"
	unitAcmetoolTarget = "/var/lib/acme/desired/<mail_domain>"
)

// lintianOverrides are lintian's findings that are so by design.
const lintianOverrides = `# A Go program built with CGO_ENABLED=0: static, so that it runs on any Linux.
chatmail-edge: statically-linked-binary [usr/bin/chatmail-edge]
`

func debFileName(version, arch string) string {
	return debPrefix + version + "_" + debianArch[arch] + ".deb"
}

// pkg is what goes into one package.
type pkg struct {
	Root       string // the checkout: README.md and docs/
	Binary     string // the built binary
	Arch       string // GOARCH
	Stamp      stamp
	Maintainer string
	Copyright  []byte // copyrightFile
	INIExample []byte // chatmail-edge config describe
}

// pkgFile is one file of the package's data, at an absolute path.
type pkgFile struct {
	Path string
	Mode fs.FileMode
	Data []byte
}

// files are the package's files: the binary, and in docDir README.md,
// docs/, the configuration file documented, the units as install writes
// them (as documentation: install writes them to /etc/systemd/system with
// the relay's paths and enables them; a copy under /usr/lib/systemd/system
// would outlive uninstall and could be enabled without the user, the
// configuration and the takeover that install does), README.Debian, the
// changelog and the copyright file; and lintian's overrides. Nothing under
// /etc: no conffiles.
func (p pkg) files() ([]pkgFile, error) {
	bin, err := os.ReadFile(p.Binary)
	if err != nil {
		return nil, err
	}
	readme, err := os.ReadFile(filepath.Join(p.Root, "README.md"))
	if err != nil {
		return nil, err
	}
	readmeDebian, err := debianFiles.ReadFile("debian/README.Debian")
	if err != nil {
		return nil, err
	}
	changelog, err := p.changelog()
	if err != nil {
		return nil, err
	}
	files := []pkgFile{
		{packagedBinary, 0o755, bin},
		{docDir + "/README.md", 0o644, readme},
		{docDir + "/README.Debian", 0o644, readmeDebian},
		{docDir + "/changelog.gz", 0o644, changelog},
		{docDir + "/copyright", 0o644, p.Copyright},
		{docDir + "/chatmail-edge.ini.example", 0o644, p.INIExample},
		{"/usr/share/lintian/overrides/chatmail-edge", 0o644, []byte(lintianOverrides)},
	}
	docs, err := os.ReadDir(filepath.Join(p.Root, "docs"))
	if err != nil {
		return nil, err
	}
	for _, d := range docs {
		if !d.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(p.Root, "docs", d.Name()))
		if err != nil {
			return nil, err
		}
		files = append(files, pkgFile{docDir + "/docs/" + d.Name(), 0o644, data})
	}
	units, err := systemd.Units(systemd.Params{Binary: packagedBinary, Config: unitConfig, ExportCert: unitExportCert})
	if err != nil {
		return nil, err
	}
	proxy, err := systemd.MetadataProxyUnit(systemd.Params{Binary: packagedBinary, ECHFile: metadata.DefaultECHFile})
	if err != nil {
		return nil, err
	}
	// The reapply units as install writes them in the default mode: they
	// watch acmetool's target (full mode adds dovecot.conf and master.cf).
	reapply, err := systemd.ReapplyUnits(systemd.Params{Binary: packagedBinary, Config: unitConfig, Watch: []string{unitAcmetoolTarget}})
	if err != nil {
		return nil, err
	}
	units = append(units, reapply...)
	for _, u := range append(units, proxy, systemd.Unit{Name: systemd.Sysusers, Data: systemd.SysusersConf()}) {
		files = append(files, pkgFile{docDir + "/systemd/" + u.Name, 0o644, u.Data})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// changelog is a Debian changelog entry for the build (Debian policy 4.4),
// gzipped without a name or time, so that the same commit gives the same
// bytes.
func (p pkg) changelog() ([]byte, error) {
	text := fmt.Sprintf("chatmail-edge (%s) unstable; urgency=medium\n\n  * Built from commit %s\n    (git describe: %s).\n\n -- %s  %s\n",
		p.Stamp.DebVersion, p.Stamp.Commit, p.Stamp.Describe, p.Maintainer, p.Stamp.Time.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write([]byte(text)); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// control is the package's DEBIAN/control (Debian policy 5.3).
func (p pkg) control(files []pkgFile) string {
	// Installed-Size: KiB, each file rounded up, as dpkg-gencontrol counts.
	kib := 0
	for _, f := range files {
		kib += (len(f.Data) + 1023) / 1024
	}
	return "Package: chatmail-edge\n" +
		"Version: " + p.Stamp.DebVersion + "\n" +
		"Architecture: " + debianArch[p.Arch] + "\n" +
		"Maintainer: " + p.Maintainer + "\n" +
		"Installed-Size: " + strconv.Itoa(kib) + "\n" +
		"Section: mail\n" +
		"Priority: optional\n" +
		// install runs systemctl and systemd-sysusers; the binary needs nothing.
		"Recommends: systemd\n" +
		"Description: TLS and Encrypted Client Hello front end of a chatmail relay\n" +
		" chatmail-edge replaces nginx and acmetool on a chatmail relay: ACME\n" +
		" certificates, TLS 1.3 with Encrypted Client Hello on 443 (and 993 and\n" +
		" 465), IMAP and SMTP routed to Dovecot and Postfix by the inner ALPN,\n" +
		" and the relay's web site, MTA-STS policy and status page.\n" +
		" .\n" +
		" The package starts nothing: \"chatmail-edge install\" takes over from\n" +
		" nginx and acmetool (README.Debian).\n"
}

// buildDeb writes p as the Debian package deb, with dpkg-deb.
func buildDeb(ctx context.Context, p pkg, deb string) error {
	files, err := p.files()
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp("", "chatmail-edge-deb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil { // the package's "./": MkdirTemp made it 0700
		return err
	}
	var md5sums strings.Builder
	for _, f := range files {
		sum := md5.Sum(f.Data)
		fmt.Fprintf(&md5sums, "%s  %s\n", hex.EncodeToString(sum[:]), strings.TrimPrefix(f.Path, "/"))
	}
	for _, name := range []string{"postinst", "prerm"} {
		data, err := debianFiles.ReadFile("debian/" + name)
		if err != nil {
			return err
		}
		files = append(files, pkgFile{"/DEBIAN/" + name, 0o755, data})
	}
	files = append(files,
		pkgFile{"/DEBIAN/control", 0o644, []byte(p.control(files))},
		pkgFile{"/DEBIAN/md5sums", 0o644, []byte(md5sums.String())})
	for _, f := range files {
		if err := writeStaged(stage, f); err != nil {
			return err
		}
	}
	if err := stampTimes(stage, p.Stamp); err != nil {
		return err
	}
	abs, err := filepath.Abs(deb)
	if err != nil {
		return err
	}
	// --root-owner-group: every file root's, whoever builds; the file
	// times and dpkg-deb's own are the commit's (SOURCE_DATE_EPOCH).
	env := []string{"SOURCE_DATE_EPOCH=" + strconv.FormatInt(p.Stamp.Time.Unix(), 10)}
	_, err = tool(ctx, "", env, "dpkg-deb", "--root-owner-group", "--build", stage, abs)
	return err
}

// writeStaged writes f below stage with its mode, and its folders 0755.
func writeStaged(stage string, f pkgFile) error {
	full := filepath.Join(stage, filepath.FromSlash(f.Path))
	for dir := path.Dir(f.Path); dir != "/"; dir = path.Dir(dir) {
		d := filepath.Join(stage, filepath.FromSlash(dir))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o755); err != nil { // whatever the umask
			return err
		}
	}
	if err := os.WriteFile(full, f.Data, f.Mode); err != nil {
		return err
	}
	return os.Chmod(full, f.Mode)
}

// stampTimes gives everything below stage the commit's time, folders
// after their files.
func stampTimes(stage string, st stamp) error {
	var paths []string
	err := filepath.WalkDir(stage, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	})
	if err != nil {
		return err
	}
	for i := len(paths) - 1; i >= 0; i-- {
		if err := os.Chtimes(paths[i], st.Time, st.Time); err != nil {
			return err
		}
	}
	return nil
}
