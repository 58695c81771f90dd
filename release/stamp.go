package main

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// stamp is what the release knows of the commit it builds.
type stamp struct {
	Describe   string    // git describe: "v1.2.0", "v1.2.0-3-g0123456789ab", "0123456789ab", each maybe with "-dirty"
	Commit     string    // the full hash of HEAD
	Time       time.Time // HEAD's commit time: the packages' file times and changelog date
	DebVersion string    // the Debian version made of Describe (debianVersion)
}

// readStamp asks git about HEAD of the checkout in root.
func readStamp(ctx context.Context, root string) (stamp, error) {
	var st stamp
	var err error
	// Only v-and-a-digit tags are versions; -dirty when a tracked file
	// differs from HEAD (untracked files, such as dist/, do not count).
	if st.Describe, err = tool(ctx, root, nil, "git", "describe", "--tags", "--match", "v[0-9]*", "--always", "--abbrev=12", "--dirty"); err != nil {
		return st, fmt.Errorf("the version comes from git: %w", err)
	}
	if st.Commit, err = tool(ctx, root, nil, "git", "rev-parse", "HEAD"); err != nil {
		return st, err
	}
	seconds, err := tool(ctx, root, nil, "git", "log", "-1", "--format=%ct")
	if err != nil {
		return st, err
	}
	unix, err := strconv.ParseInt(seconds, 10, 64)
	if err != nil {
		return st, fmt.Errorf("commit time %q: %w", seconds, err)
	}
	st.Time = time.Unix(unix, 0).UTC()
	st.DebVersion, err = debianVersion(st.Describe, st.Time)
	return st, err
}

var (
	describeTag    = regexp.MustCompile(`^v([0-9].*?)(?:-([0-9]+)-g([0-9a-f]{7,40}))?(-dirty)?$`)
	describeCommit = regexp.MustCompile(`^([0-9a-f]{7,40})(-dirty)?$`)
	// Debian policy 5.6.12: an upstream version without a revision starts
	// with a digit and has only alphanumerics and . + ~ (no hyphen: that
	// would start a revision).
	debianUpstream = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)
)

// debianVersion turns git describe's output into a Debian version that
// sorts as the commits do: "v1.2.0" gives 1.2.0, "v1.2.0-rc1" 1.2.0~rc1
// (before 1.2.0), "v1.2.0-3-gHASH" 1.2.0+3.gHASH (after it), a commit
// without a tag 0~gitDATE.HASH (before any tag, by commit time); a dirty
// tree adds +dirty.
func debianVersion(describe string, commitTime time.Time) (string, error) {
	var v string
	dirty := false
	if m := describeTag.FindStringSubmatch(describe); m != nil {
		v = strings.ReplaceAll(m[1], "-", "~")
		if m[2] != "" {
			v += "+" + m[2] + ".g" + m[3]
		}
		dirty = m[4] != ""
	} else if m := describeCommit.FindStringSubmatch(describe); m != nil {
		v = "0~git" + commitTime.UTC().Format("20060102150405") + "." + m[1]
		dirty = m[2] != ""
	} else {
		return "", fmt.Errorf("git describe gave %q, which is neither a v tag nor a commit", describe)
	}
	if dirty {
		if strings.Contains(v, "+") {
			v += ".dirty"
		} else {
			v += "+dirty"
		}
	}
	if !debianUpstream.MatchString(v) {
		return "", fmt.Errorf("git describe %q makes %q, which is not a Debian version (Debian policy 5.6.12)", describe, v)
	}
	return v, nil
}
