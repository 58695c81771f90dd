package buildinfo

import (
	"runtime"
	"testing"
)

func TestString(t *testing.T) {
	for _, c := range []struct {
		info Info
		want string
	}{
		{Info{"v1.2.0", "0123456789abcdef0123456789abcdef01234567", "go1.26.8", "linux/arm64"},
			"chatmail-edge v1.2.0 (commit 0123456789abcdef0123456789abcdef01234567, go1.26.8 linux/arm64)"},
		{Info{"devel", "", "go1.26.8", "linux/amd64"}, "chatmail-edge devel (go1.26.8 linux/amd64)"},
	} {
		if got := c.info.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.info, got, c.want)
		}
	}
}

// TestReadUnstamped: a test binary is not stamped; Read still names the
// toolchain and platform, and a version.
func TestReadUnstamped(t *testing.T) {
	info := Read()
	if info.Version == "" || info.Go != runtime.Version() || info.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("Read() = %+v", info)
	}
}
