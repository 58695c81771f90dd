package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDebianVersion(t *testing.T) {
	commitTime := time.Date(2026, 12, 4, 19, 13, 51, 0, time.UTC)
	for _, c := range []struct{ describe, want string }{
		{"v1.2.0", "1.2.0"},
		{"v1.2.0-dirty", "1.2.0+dirty"},
		{"v1.2.0-rc1", "1.2.0~rc1"},
		{"v1.2.0-3-g0123456789ab", "1.2.0+3.g0123456789ab"},
		{"v1.2.0-3-g0123456789ab-dirty", "1.2.0+3.g0123456789ab.dirty"},
		{"v1.2.0-rc1-3-g0123456789ab", "1.2.0~rc1+3.g0123456789ab"},
		{"0123456789ab", "0~git20261204191351.0123456789ab"},
		{"0123456789ab-dirty", "0~git20261204191351.0123456789ab+dirty"},
	} {
		got, err := debianVersion(c.describe, commitTime)
		if err != nil || got != c.want {
			t.Errorf("debianVersion(%q) = %q, %v; want %q", c.describe, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "release-1", "v1.2.0_beta", "vx"} {
		if got, err := debianVersion(bad, commitTime); err == nil {
			t.Errorf("debianVersion(%q) = %q, want an error", bad, got)
		}
	}
	// Versions sort as their commits: dpkg says so.
	order := []string{"0~git20261204191351.0123456789ab", "1.2.0~rc1", "1.2.0", "1.2.0+3.g0123456789ab", "1.10.0"}
	for i := 1; i < len(order); i++ {
		if out, err := exec.Command("dpkg", "--compare-versions", order[i-1], "lt", order[i]).CombinedOutput(); err != nil {
			t.Errorf("dpkg: %s is not before %s: %v %s", order[i-1], order[i], err, out)
		}
	}
}

// TestReadStamp follows a repository from its first commit to a tag, a
// change and a commit after the tag.
func TestReadStamp(t *testing.T) {
	dir := t.TempDir()
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
			"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@invalid",
			"GIT_COMMITTER_DATE=2026-12-04T19:13:51Z", "GIT_AUTHOR_DATE=2026-12-04T19:13:51Z")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	ctx := context.Background()
	stampOf := func() stamp {
		t.Helper()
		st, err := readStamp(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "f"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git("init", "-q")
	write("1")
	git("add", "f")
	git("commit", "-q", "-m", "one")
	head := git("rev-parse", "HEAD")
	want := stamp{Describe: head[:12], Commit: head, Time: time.Date(2026, 12, 4, 19, 13, 51, 0, time.UTC), DebVersion: "0~git20261204191351." + head[:12]}
	if st := stampOf(); st != want {
		t.Errorf("untagged: %+v, want %+v", st, want)
	}
	git("tag", "not-a-version") // only v-and-a-digit tags are versions
	git("tag", "v0.1.0")
	if st := stampOf(); st.Describe != "v0.1.0" || st.DebVersion != "0.1.0" || st.Commit != head {
		t.Errorf("tagged: %+v", st)
	}
	write("2")
	if st := stampOf(); st.Describe != "v0.1.0-dirty" || st.DebVersion != "0.1.0+dirty" {
		t.Errorf("changed: %+v", st)
	}
	git("commit", "-q", "-am", "two")
	head = git("rev-parse", "HEAD")
	if st := stampOf(); st.Describe != "v0.1.0-1-g"+head[:12] || st.DebVersion != "0.1.0+1.g"+head[:12] || st.Commit != head {
		t.Errorf("after the tag: %+v (HEAD %s)", st, head)
	}
}

// moduleRoot is the checkout this test runs in.
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := tool(context.Background(), "", nil, "go", "list", "-m", "-f", "{{.Dir}}")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestStampedVersion builds chatmail-edge with the release's stamp (the
// -X flags the release passes; the other release flags only slow a test)
// and reads it back through each spelling of the version command. The
// built binary's own module list (go version -m) is then what the
// copyright file must cover.
func TestStampedVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds chatmail-edge")
	}
	root := moduleRoot(t)
	bin := filepath.Join(t.TempDir(), "chatmail-edge")
	st := stamp{Describe: "v9.8.7-rc1-2-g0123456789ab-dirty", Commit: "0123456789abcdef0123456789abcdef01234567"}
	ctx := context.Background()
	if _, err := tool(ctx, root, nil, "go", "build", "-ldflags", stampFlags(st), "-o", bin, "."); err != nil {
		t.Fatal(err)
	}
	goVersion, err := tool(ctx, root, nil, "go", "env", "GOVERSION")
	if err != nil {
		t.Fatal(err)
	}
	want := "chatmail-edge " + st.Describe + " (commit " + st.Commit + ", " + goVersion + " " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	for _, arg := range []string{"version", "-version", "--version"} {
		if got, err := tool(ctx, "", nil, bin, arg); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", arg, got, err, want)
		}
	}

	modules, err := tool(ctx, "", nil, "go", "version", "-m", bin)
	if err != nil {
		t.Fatal(err)
	}
	copyright, err := copyrightFile(ctx, root, runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	deps := 0
	for _, line := range strings.Split(modules, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "dep" {
			deps++
			if want := "\n  " + f[1] + " " + f[2] + ": " + reviewedLicenses[f[1]] + "\n"; !strings.Contains(string(copyright), want) {
				t.Errorf("the copyright file lacks %q", strings.TrimSpace(want))
			}
		}
	}
	if deps == 0 {
		t.Fatalf("go version -m lists no modules:\n%s", modules)
	}
}

func TestLicenseCheck(t *testing.T) {
	dir := t.TempDir()
	apache := filepath.Join(dir, "LICENSE")
	if err := os.WriteFile(apache, []byte("\n   Apache License\n   Version 2.0, January 2004\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkLicense(linkedModule{Path: "example.org/m", License: "Apache-2.0", Files: []string{apache}}); err != nil {
		t.Errorf("Apache-2.0: %v", err)
	}
	if err := checkLicense(linkedModule{Path: "example.org/m", License: "MIT", Files: []string{apache}}); err == nil || !strings.Contains(err.Error(), "does not read as MIT") {
		t.Errorf("an Apache license taken for MIT: %v", err)
	}
	for _, name := range []string{"NOTICE", "PATENTS", "README.md"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files, err := noticeFiles(dir)
	if want := []string{apache, filepath.Join(dir, "NOTICE"), filepath.Join(dir, "PATENTS")}; err != nil || !slices.Equal(files, want) {
		t.Errorf("noticeFiles: %v, %v; want %v", files, err, want)
	}
	if files, err := noticeFiles(t.TempDir()); err == nil {
		t.Errorf("a module without a license: %v", files)
	}
}

// TestApacheLicense: a module's Apache License 2.0 becomes a reference to
// Debian's copy with the module's own copyright lines, unless its terms
// differ.
func TestApacheLicense(t *testing.T) {
	common, err := os.ReadFile(commonApache)
	if err != nil {
		t.Fatalf("Debian's copy of the Apache License (package base-files): %v", err)
	}
	const template = "Copyright [yyyy] [name of copyright owner]"
	if !strings.Contains(string(common), template) {
		t.Fatalf("%s lacks %q", commonApache, template)
	}
	module := strings.Replace(string(common), template, "Copyright 2016 Paulo Pires", 1)
	want := "The Apache License, Version 2.0: on Debian systems in full in\n" + commonApache + ".\nCopyright 2016 Paulo Pires\n"
	if got := apacheLicense(module, string(common)); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	changed := strings.Replace(module, "a perpetual,", "a revocable,", 1)
	if got := apacheLicense(changed, string(common)); got != changed {
		t.Errorf("changed terms: not given in full")
	}
	if got := apacheLicense(module, ""); got != module {
		t.Errorf("without Debian's copy: not given in full")
	}
}

// TestPackage builds a package around a stand-in binary and reads it back
// with dpkg-deb: its fields, its exact file list with owners and modes,
// and what its maintainer scripts do.
func TestPackage(t *testing.T) {
	for _, bin := range []string{"dpkg-deb", "md5sum"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: the release builds Debian packages (Debian's dpkg, coreutils)", bin)
		}
	}
	ctx := context.Background()
	root := moduleRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "chatmail-edge")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho a stand-in\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := pkg{
		Root: root, Binary: bin, Arch: "arm64", Maintainer: defaultMaintainer,
		Stamp:      stamp{Describe: "v1.2.0", Commit: "0123456789abcdef0123456789abcdef01234567", Time: time.Unix(1796411247, 0).UTC(), DebVersion: "1.2.0"},
		Copyright:  []byte("the copyright file\n"),
		INIExample: []byte("[edge]\n"),
	}
	deb := filepath.Join(dir, debFileName("1.2.0", "arm64"))
	if err := buildDeb(ctx, p, deb); err != nil {
		t.Fatal(err)
	}
	if filepath.Base(deb) != "chatmail-edge_1.2.0_arm64.deb" {
		t.Errorf("file name %s", deb)
	}

	fields, err := tool(ctx, "", nil, "dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Depends", "Pre-Depends")
	if want := "Package: chatmail-edge\nVersion: 1.2.0\nArchitecture: arm64"; err != nil || fields != want {
		t.Errorf("fields: %q, %v; want %q (and no dependencies: the binary is static)", fields, err, want)
	}

	listing, err := tool(ctx, "", []string{"TZ=UTC"}, "dpkg-deb", "--contents", deb)
	if err != nil {
		t.Fatal(err)
	}
	doc := "./usr/share/doc/chatmail-edge/"
	want := map[string]string{
		"./": "drwxr-xr-x", "./usr/": "drwxr-xr-x", "./usr/bin/": "drwxr-xr-x", "./usr/share/": "drwxr-xr-x",
		"./usr/share/doc/": "drwxr-xr-x", doc: "drwxr-xr-x", doc + "docs/": "drwxr-xr-x", doc + "systemd/": "drwxr-xr-x",
		"./usr/bin/chatmail-edge": "-rwxr-xr-x",
		"./usr/share/lintian/":    "drwxr-xr-x", "./usr/share/lintian/overrides/": "drwxr-xr-x",
		"./usr/share/lintian/overrides/chatmail-edge": "-rw-r--r--",
	}
	for _, f := range []string{"README.md", "README.Debian", "changelog.gz", "copyright", "chatmail-edge.ini.example",
		"systemd/chatmail-edge.service", "systemd/chatmail-edge-mail-reload.path", "systemd/chatmail-edge-mail-reload.service",
		"systemd/chatmail-edge-metadata.service", "systemd/chatmail-edge.sysusers",
		"systemd/chatmail-edge-reapply.path", "systemd/chatmail-edge-reapply.service"} {
		want[doc+f] = "-rw-r--r--"
	}
	docs, err := os.ReadDir(filepath.Join(root, "docs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		want[doc+"docs/"+d.Name()] = "-rw-r--r--"
	}
	got := map[string]string{}
	for _, line := range strings.Split(listing, "\n") {
		// drwxr-xr-x root/root 0 2026-12-04 19:13 ./usr/
		f := strings.Fields(line)
		if len(f) != 6 {
			t.Fatalf("dpkg-deb --contents line %q", line)
		}
		got[f[5]] = f[0]
		if f[1] != "root/root" {
			t.Errorf("%s belongs to %s", f[5], f[1])
		}
		if f[3]+" "+f[4] != "2026-12-04 19:07" {
			t.Errorf("%s has the time %s %s, want the commit's", f[5], f[3], f[4])
		}
	}
	for path, mode := range want {
		if got[path] != mode {
			t.Errorf("%s: %q, want %q", path, got[path], mode)
		}
	}
	for path := range got {
		if want[path] == "" {
			t.Errorf("unexpected %s in the package", path)
		}
	}

	// The data is what went in; md5sums checks it.
	tree := filepath.Join(dir, "tree")
	if _, err := tool(ctx, "", nil, "dpkg-deb", "--raw-extract", deb, tree); err != nil {
		t.Fatal(err)
	}
	if out, err := tool(ctx, tree, nil, "md5sum", "--check", "--quiet", "DEBIAN/md5sums"); err != nil {
		t.Errorf("md5sums: %v %s", err, out)
	}
	unit, err := os.ReadFile(filepath.Join(tree, doc, "systemd/chatmail-edge.service"))
	if err != nil || !strings.Contains(string(unit), "\nExecStart="+packagedBinary+" serve --config "+unitConfig+"\n") {
		t.Errorf("the documented unit does not run the packaged binary: %v\n%s", err, unit)
	}
	if conffiles, err := os.ReadFile(filepath.Join(tree, "DEBIAN/conffiles")); err == nil {
		t.Errorf("the package has conffiles: %s", conffiles)
	}
	control, err := os.ReadFile(filepath.Join(tree, "DEBIAN/control"))
	if err != nil || !strings.Contains(string(control), "\nMaintainer: "+defaultMaintainer+"\n") {
		t.Errorf("control: %v\n%s", err, control)
	}
	changelog, err := tool(ctx, "", nil, "zcat", filepath.Join(tree, doc, "changelog.gz"))
	if err != nil || !strings.HasPrefix(changelog, "chatmail-edge (1.2.0) unstable; urgency=medium\n") || !strings.Contains(changelog, p.Stamp.Commit) {
		t.Errorf("changelog: %v\n%s", err, changelog)
	}

	t.Run("maintainer scripts", func(t *testing.T) { maintainerScripts(t, filepath.Join(tree, "DEBIAN")) })
}

// maintainerScripts runs the package's prerm and postinst against a folder
// as dpkg's root (DPKG_ROOT), which keeps them away from this system.
func maintainerScripts(t *testing.T, control string) {
	dpkgRoot := t.TempDir()
	script := func(name string, args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(control, name), args...)
		cmd.Env = append(os.Environ(), "DPKG_ROOT="+dpkgRoot)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, args := range [][]string{{"remove"}, {"upgrade", "1.1.0"}} {
		if out, err := script("prerm", args...); err != nil || out != "" {
			t.Errorf("prerm %v with the edge not installed: %v %q", args, err, out)
		}
	}
	unit := filepath.Join(dpkgRoot, "etc/systemd/system/chatmail-edge.service")
	if err := os.MkdirAll(filepath.Dir(unit), 0o755); err != nil {
		t.Fatal(err)
	}
	// As install writes it from a binary copied by hand: the package's
	// binary is not what the relay runs, and may go.
	if err := os.WriteFile(unit, []byte("[Service]\nExecStart=/usr/local/bin/chatmail-edge serve --config /etc/chatmail-edge/chatmail-edge.ini\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := script("prerm", "remove"); err != nil {
		t.Errorf("prerm remove with the edge running a copy of its own: %v %q", err, out)
	}
	// As install writes it from the package's binary: removal is refused.
	if err := os.WriteFile(unit, []byte("[Service]\nExecStart=/usr/bin/chatmail-edge serve --config /etc/chatmail-edge/chatmail-edge.ini\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := script("prerm", "remove"); err == nil || !strings.Contains(out, "/etc/systemd/system/chatmail-edge.service runs /usr/bin/chatmail-edge: first run chatmail-edge uninstall") {
		t.Errorf("prerm remove with the edge installed from the package: %v %q, want a refusal", err, out)
	}
	if out, err := script("prerm", "upgrade", "1.1.0"); err != nil || out != "" {
		t.Errorf("prerm upgrade: %v %q", err, out)
	}
	// postinst: a first install does nothing; an upgrade on another root
	// does not touch this system's services.
	for _, args := range [][]string{{"configure", ""}, {"configure", "1.1.0"}, {"abort-remove"}} {
		if out, err := script("postinst", args...); err != nil || out != "" {
			t.Errorf("postinst %v: %v %q", args, err, out)
		}
	}
}
