// Command release builds chatmail-edge's release artifacts from the
// checkout it runs in, into dist/:
//
//	go run ./release
//
// For each architecture (linux/amd64 and linux/arm64) a static binary,
// chatmail-edge-linux-ARCH (CGO_ENABLED=0, -trimpath, -ldflags '-s -w'),
// and a Debian package of it, chatmail-edge_VERSION_ARCH.deb (dpkg-deb),
// plus SHA256SUMS. The version is stamped in from git (internal/buildinfo):
// `git describe` (a v* tag if HEAD has one, else the tag and the commits
// since, else the commit) with -dirty for a changed tree, and the commit.
//
// The package holds /usr/bin/chatmail-edge and the documentation, and
// starts nothing (debian/README.Debian).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// commandTimeout bounds one external command (a cold go build on two cores
// takes a few minutes).
const commandTimeout = 15 * time.Minute

// The names of the artifacts in the output folder.
const (
	binaryPrefix = "chatmail-edge-linux-"
	debPrefix    = "chatmail-edge_"
	sumsFile     = "SHA256SUMS"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("release", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "dist", "the `folder` the artifacts go to; earlier ones there are removed")
	archList := fs.String("arch", "amd64,arm64", "the Linux architectures, comma-separated")
	maintainer := fs.String("maintainer", defaultMaintainer, "the packages' Maintainer field")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	arches := strings.Split(*archList, ",")
	for _, a := range arches {
		if _, ok := debianArch[a]; !ok {
			return fmt.Errorf("-arch: %q is not one of amd64, arm64", a)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*commandTimeout)
	defer cancel()
	root, err := tool(ctx, "", nil, "go", "list", "-m", "-f", "{{.Dir}}")
	if err != nil {
		return err
	}
	st, err := readStamp(ctx, root)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "chatmail-edge %s, package version %s\n", st.Describe, st.DebVersion)
	if err := clean(*out); err != nil {
		return err
	}
	var artifacts []string
	var iniExample []byte
	for _, arch := range arches {
		bin := filepath.Join(*out, binaryPrefix+arch)
		if err := buildBinary(ctx, root, arch, st, bin); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "built", bin)
		artifacts = append(artifacts, bin)
	}
	if iniExample, err = describeConfig(ctx, root, *out, arches); err != nil {
		return err
	}
	for _, arch := range arches {
		copyright, err := copyrightFile(ctx, root, arch)
		if err != nil {
			return err
		}
		deb := filepath.Join(*out, debFileName(st.DebVersion, arch))
		err = buildDeb(ctx, pkg{
			Root: root, Binary: filepath.Join(*out, binaryPrefix+arch), Arch: arch, Stamp: st,
			Maintainer: *maintainer, Copyright: copyright, INIExample: iniExample,
		}, deb)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, "built", deb)
		artifacts = append(artifacts, deb)
	}
	return writeSums(*out, artifacts)
}

// clean makes the output folder and removes earlier artifacts from it, so
// that `apt install ./dist/chatmail-edge_*_amd64.deb` finds one package.
func clean(out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, binaryPrefix) || (strings.HasPrefix(n, debPrefix) && strings.HasSuffix(n, ".deb")) || n == sumsFile {
			if err := os.Remove(filepath.Join(out, n)); err != nil {
				return fmt.Errorf("remove an earlier artifact: %w", err)
			}
		}
	}
	return nil
}

// ldflags are the linker flags of the release: no symbol table and DWARF
// (-s -w), and the stamp.
func ldflags(st stamp) string {
	return "-s -w " + stampFlags(st)
}

// stampFlags set internal/buildinfo's version and commit.
func stampFlags(st stamp) string {
	const pkg = "chatmail-edge/internal/buildinfo"
	return "-X " + pkg + ".stampedVersion=" + st.Describe + " -X " + pkg + ".stampedCommit=" + st.Commit
}

// buildBinary builds the static binary for linux/arch: without cgo no
// libc and no ELF interpreter, so it runs on any Linux of that
// architecture.
func buildBinary(ctx context.Context, root, arch string, st stamp, out string) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	env := []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + arch}
	_, err = tool(ctx, root, env, "go", "build", "-trimpath", "-ldflags", ldflags(st), "-o", abs, ".")
	return err
}

// describeConfig is `chatmail-edge config describe` of a built binary that
// runs here, else of a build for this machine.
func describeConfig(ctx context.Context, root, out string, arches []string) ([]byte, error) {
	if runtime.GOOS == "linux" && slices.Contains(arches, runtime.GOARCH) {
		bin, err := filepath.Abs(filepath.Join(out, binaryPrefix+runtime.GOARCH))
		if err != nil {
			return nil, err
		}
		text, err := tool(ctx, root, nil, bin, "config", "describe")
		return []byte(text + "\n"), err
	}
	text, err := tool(ctx, root, nil, "go", "run", ".", "config", "describe")
	return []byte(text + "\n"), err
}

// writeSums writes SHA256SUMS, as sha256sum -c reads it.
func writeSums(out string, artifacts []string) error {
	var b strings.Builder
	for _, p := range artifacts {
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(sum[:]), filepath.Base(p))
	}
	return os.WriteFile(filepath.Join(out, sumsFile), []byte(b.String()), 0o644)
}

// tool runs a program in dir (with env added to this one's) and returns
// its standard output without the trailing newline; an error carries the
// command line and what it printed.
func tool(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSuffix(stdout.String(), "\n"), nil
}
