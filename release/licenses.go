package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// projectCopyright is the holder line of LICENSE.
const projectCopyright = "Copyright (c) 2026 the chatmail-edge authors"

// reviewedLicenses are the licenses of the modules linked into the binary,
// as read in each one's license file at the version in go.mod. All allow
// shipping them in a binary under MIT, with their notices: copyrightFile
// puts every license and notice file in full into the package. A module
// that is not here stops the release: read its license, then add it.
// (Test-only modules, not linked: github.com/letsencrypt/pebble/v2 and
// github.com/letsencrypt/challtestsrv MPL-2.0, github.com/go-jose/go-jose/v4
// Apache-2.0.)
var reviewedLicenses = map[string]string{
	"github.com/beorn7/perks":                   "MIT",
	"github.com/caddyserver/certmagic":          "Apache-2.0",
	"github.com/caddyserver/zerossl":            "MIT",
	"github.com/cespare/xxhash/v2":              "MIT",
	"github.com/cloudflare/tableflip":           "BSD-3-Clause",
	"github.com/coreos/go-semver":               "Apache-2.0",
	"github.com/coreos/go-systemd/v22":          "Apache-2.0",
	"github.com/emersion/go-imap/v2":            "MIT",
	"github.com/emersion/go-message":            "MIT",
	"github.com/emersion/go-sasl":               "MIT",
	"github.com/emersion/go-smtp":               "MIT",
	"github.com/gogo/protobuf":                  "BSD-3-Clause",
	"github.com/golang/protobuf":                "BSD-3-Clause",
	"github.com/grpc-ecosystem/grpc-gateway/v2": "BSD-3-Clause",
	"github.com/klauspost/cpuid/v2":             "MIT",
	"github.com/libdns/libdns":                  "MIT",
	"github.com/mholt/acmez/v3":                 "Apache-2.0",
	"github.com/miekg/dns":                      "BSD-3-Clause",
	"github.com/munnerz/goautoneg":              "BSD-3-Clause",
	"github.com/pires/go-proxyproto":            "Apache-2.0",
	"github.com/prometheus/client_golang":       "Apache-2.0",
	"github.com/prometheus/client_model":        "Apache-2.0",
	"github.com/prometheus/common":              "Apache-2.0",
	"github.com/prometheus/procfs":              "Apache-2.0",
	"github.com/zeebo/blake3":                   "CC0-1.0",
	"go.etcd.io/etcd/api/v3":                    "Apache-2.0",
	"go.etcd.io/etcd/client/pkg/v3":             "Apache-2.0",
	"go.etcd.io/etcd/client/v3":                 "Apache-2.0",
	"go.uber.org/multierr":                      "MIT",
	"go.uber.org/zap":                           "MIT",
	"go.uber.org/zap/exp":                       "MIT",
	"golang.org/x/crypto":                       "BSD-3-Clause",
	"golang.org/x/net":                          "BSD-3-Clause",
	"golang.org/x/sys":                          "BSD-3-Clause",
	"golang.org/x/text":                         "BSD-3-Clause",
	"google.golang.org/genproto/googleapis/api": "Apache-2.0",
	"google.golang.org/genproto/googleapis/rpc": "Apache-2.0",
	"google.golang.org/grpc":                    "Apache-2.0",
	"google.golang.org/protobuf":                "BSD-3-Clause",
}

// licenseMarkers are phrases a license file of that kind has: a module
// whose license changed kind at a new version fails the check.
var licenseMarkers = map[string][]string{
	"MIT":          {"Permission is hereby granted, free of charge"},
	"BSD-3-Clause": {"Redistribution and use in source and binary forms", "Neither the name"},
	"Apache-2.0":   {"Apache License", "Version 2.0"},
	"CC0-1.0":      {"CC0 1.0 Universal"},
}

// noticeFile matches the files of a module's root folder that go into the
// copyright file: licenses, NOTICE (Apache-2.0 §4d), patent grants, and
// the licenses of code a module took from elsewhere.
var noticeFile = regexp.MustCompile(`(?i)^(licen[cs]e|copying|notice|patents|third-party)(\.(txt|md))?$`)

// linkedModule is a module linked into the binary, with its license files.
type linkedModule struct {
	Path, Version, License string
	Files                  []string // absolute paths, licenses first
}

// linkedModules are the modules linked into the binary for linux/arch
// (what `go list -deps` of the main package names), the Go distribution
// first.
func linkedModules(ctx context.Context, root, arch string) ([]linkedModule, error) {
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + arch}
	goroot, err := tool(ctx, root, env, "go", "env", "GOROOT")
	if err != nil {
		return nil, err
	}
	goVersion, err := tool(ctx, root, env, "go", "env", "GOVERSION")
	if err != nil {
		return nil, err
	}
	mods := []linkedModule{{Path: "Go (standard library and runtime)", Version: goVersion, License: "BSD-3-Clause"}}
	if mods[0].Files, err = noticeFiles(goroot); err != nil {
		return nil, err
	}
	list, err := tool(ctx, root, env, "go", "list", "-deps", "-f",
		`{{with .Module}}{{if .Replace}}{{.Replace.Path}} {{.Replace.Version}} {{.Replace.Dir}}{{else}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}`, ".")
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var deps []linkedModule
	for _, line := range strings.Split(list, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] == "chatmail-edge" || seen[fields[0]] {
			continue
		}
		seen[fields[0]] = true
		if len(fields) != 3 {
			return nil, fmt.Errorf("go list: module line %q has no version or folder (not in the module cache?)", line)
		}
		m := linkedModule{Path: fields[0], Version: fields[1], License: reviewedLicenses[fields[0]]}
		if m.License == "" {
			return nil, fmt.Errorf("module %s is linked into the binary but its license is not reviewed: read it and add it to reviewedLicenses (release/licenses.go)", m.Path)
		}
		if m.Files, err = noticeFiles(fields[2]); err != nil {
			return nil, fmt.Errorf("module %s: %w", m.Path, err)
		}
		if err := checkLicense(m); err != nil {
			return nil, err
		}
		deps = append(deps, m)
	}
	sort.Slice(deps, func(i, j int) bool { return deps[i].Path < deps[j].Path })
	return append(mods, deps...), nil
}

// noticeFiles are the license and notice files in dir, licenses first.
func noticeFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		if e.Type().IsRegular() && noticeFile.MatchString(e.Name()) {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	sort.SliceStable(files, func(i, j int) bool { return isLicense(files[i]) && !isLicense(files[j]) })
	if len(files) == 0 || !isLicense(files[0]) {
		return nil, fmt.Errorf("no license file in %s", dir)
	}
	return files, nil
}

func isLicense(path string) bool {
	n := strings.ToLower(filepath.Base(path))
	return strings.HasPrefix(n, "licen") || strings.HasPrefix(n, "copying")
}

// checkLicense tells whether m's license file reads as the reviewed kind.
func checkLicense(m linkedModule) error {
	data, err := os.ReadFile(m.Files[0])
	if err != nil {
		return err
	}
	text := strings.Join(strings.Fields(string(data)), " ")
	for _, marker := range licenseMarkers[m.License] {
		if !strings.Contains(text, marker) {
			return fmt.Errorf("module %s %s: %s does not read as %s (no %q): review its license again", m.Path, m.Version, filepath.Base(m.Files[0]), m.License, marker)
		}
	}
	return nil
}

// copyrightFile is the package's /usr/share/doc/chatmail-edge/copyright:
// chatmail-edge's MIT license, then, as the binary is statically linked,
// the license and notice files of everything linked into it, in full.
func copyrightFile(ctx context.Context, root, arch string) ([]byte, error) {
	license, err := os.ReadFile(filepath.Join(root, "LICENSE"))
	if err != nil {
		return nil, err
	}
	if !strings.Contains(string(license), projectCopyright) {
		return nil, fmt.Errorf("LICENSE lacks %q", projectCopyright)
	}
	mods, err := linkedModules(ctx, root, arch)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString("chatmail-edge: the TLS and ECH front end of a chatmail relay.\n\nLicense: MIT\n\n")
	b.Write(license)
	b.WriteString("\n/usr/bin/chatmail-edge is statically linked: it contains the following,\n" +
		"under their own licenses, whose files follow in full.\n\n")
	for _, m := range mods {
		fmt.Fprintf(&b, "  %s %s: %s\n", m.Path, m.Version, m.License)
	}
	common, _ := os.ReadFile(commonApache) // none off Debian: the texts go in in full
	rule := strings.Repeat("=", 72) + "\n"
	for _, m := range mods {
		for _, f := range m.Files {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, err
			}
			text := strings.TrimRight(string(data), "\n") + "\n"
			if m.License == "Apache-2.0" && isLicense(f) {
				text = apacheLicense(text, string(common))
			}
			fmt.Fprintf(&b, "\n%s%s %s: %s\n%s\n", rule, m.Path, m.Version, filepath.Base(f), rule)
			b.WriteString(text)
		}
	}
	return []byte(b.String()), nil
}

// commonApache is Debian's copy of the Apache License 2.0 (base-files).
const commonApache = "/usr/share/common-licenses/Apache-2.0"

// apacheLicense is what the copyright file says of an Apache-2.0 license
// file: when its terms are those of Debian's copy, a reference to it (as
// Debian policy 12.5 asks) and the file's own copyright lines; else the
// file in full.
func apacheLicense(text, common string) string {
	terms := apacheTerms(text)
	if terms == "" || terms != apacheTerms(common) {
		return text
	}
	var b strings.Builder
	b.WriteString("The Apache License, Version 2.0: on Debian systems in full in\n" + commonApache + ".\n")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		// The appendix's template ("Copyright [yyyy] [name of copyright
		// owner]") is no one's.
		if strings.HasPrefix(line, "Copyright ") && !strings.ContainsAny(line, "[{") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// apacheTerms are the terms of an Apache License 2.0 text, up to "END OF
// TERMS AND CONDITIONS", with white space made single spaces; "" if the
// text has no such end.
func apacheTerms(text string) string {
	const end = "END OF TERMS AND CONDITIONS"
	i := strings.Index(text, end)
	if i < 0 {
		return ""
	}
	return strings.Join(strings.Fields(text[:i+len(end)]), " ")
}
