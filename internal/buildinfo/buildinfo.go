// Package buildinfo says which build of chatmail-edge runs: the version and
// commit that the release build (go run ./release) stamps in with the
// linker's -X, else what the Go toolchain recorded (the module version of
// `go install pkg@version`, or the VCS revision of a `go build` in a
// checkout).
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Set by the linker only (-X chatmail-edge/internal/buildinfo.stampedVersion=...,
// see release/): -X needs package-level strings; nothing writes them at run
// time.
var (
	stampedVersion string // git describe: a tag, else the commit; "-dirty" for a changed tree
	stampedCommit  string // the full commit hash
)

// Info is a build's identity.
type Info struct {
	Version  string // "v1.2.0", "v1.2.0-3-g0123456789ab", "0123456789ab-dirty", "devel-0123456789ab", "devel"
	Commit   string // the full commit hash, "" when unknown
	Go       string // the toolchain, "go1.26.8"
	Platform string // "linux/amd64"
}

// Read returns the running binary's Info.
func Read() Info {
	info := Info{Version: stampedVersion, Commit: stampedCommit, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if info.Version != "" {
		return info
	}
	info.Version = "devel"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	switch {
	case bi.Main.Version != "" && bi.Main.Version != "(devel)":
		info.Version = bi.Main.Version
	case len(info.Commit) >= 12:
		info.Version = "devel-" + info.Commit[:12]
		if dirty {
			info.Version += "-dirty"
		}
	}
	return info
}

// String is the line that `chatmail-edge version` prints:
// "chatmail-edge v1.2.0 (commit 0123…, go1.26.8 linux/amd64)".
func (i Info) String() string {
	var b strings.Builder
	b.WriteString("chatmail-edge " + i.Version + " (")
	if i.Commit != "" {
		b.WriteString("commit " + i.Commit + ", ")
	}
	b.WriteString(i.Go + " " + i.Platform + ")")
	return b.String()
}
