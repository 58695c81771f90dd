// Package version says which build of chatmail-edge runs.
package version

import "runtime/debug"

// stamp is set by the release build (-ldflags "-X
// chatmail-edge/internal/version.stamp=..."): the tag, or the commit with a
// dirty mark. Go never changes it while running.
var stamp string

// String is the release build's stamp, else the module version when built
// with go install, else the VCS revision the binary was built from.
func String() string {
	if stamp != "" {
		return stamp
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}
