package metadata

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// configList is a well-formed ECHConfigList of n bytes of ECHConfigs
// (the file check looks at the framing only; what is inside is the edge's).
func configList(n int, fill byte) []byte {
	list := []byte{byte(n >> 8), byte(n)}
	for range n {
		list = append(list, fill)
	}
	return list
}

func newTestECHFile(t *testing.T) (*ECHFile, string, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	path := filepath.Join(t.TempDir(), "run", "ech-config-list")
	return NewECHFile(path, zap.New(core)), path, logs
}

func TestECHFileFollowsPublication(t *testing.T) {
	f, path, logs := newTestECHFile(t)
	if v, ok := f.Value(); ok || v != "" {
		t.Fatalf("before publication: %q, %v; want absent", v, ok)
	}

	first := configList(70, 1)
	changed, err := PublishECHConfigList(path, first)
	if err != nil || !changed {
		t.Fatalf("publish: %v, %v", changed, err)
	}
	data, _ := os.ReadFile(path)
	if string(data) != base64.StdEncoding.EncodeToString(first)+"\n" {
		t.Fatalf("file holds %q", data)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Fatalf("file mode %v, want 0644 (the proxy runs as vmail)", fi.Mode().Perm())
	}
	if changed, err := PublishECHConfigList(path, first); err != nil || changed {
		t.Fatalf("publishing the same list again: changed %v, %v", changed, err)
	}
	for range 2 {
		if v, ok := f.Value(); !ok || v != base64.StdEncoding.EncodeToString(first) {
			t.Fatalf("after publication: %q, %v", v, ok)
		}
	}
	if n := logs.FilterMessage("serving the ECH config list").Len(); n != 1 {
		t.Fatalf("logged %d times that the list is served, want once for one version", n)
	}

	// A rotation: the edge renames a new file over the old one.
	second := configList(70, 2)
	if _, err := PublishECHConfigList(path, second); err != nil {
		t.Fatal(err)
	}
	if v, ok := f.Value(); !ok || v != base64.StdEncoding.EncodeToString(second) {
		t.Fatalf("after rotation: %q, %v", v, ok)
	}

	os.Remove(path)
	if _, ok := f.Value(); ok {
		t.Fatal("a removed file still answers")
	}
}

func TestECHFileRejectsBadContent(t *testing.T) {
	good := base64.StdEncoding.EncodeToString(configList(5, 9))
	for name, content := range map[string]string{
		"empty":               "",
		"no newline":          good,
		"two lines":           good + "\n" + good + "\n",
		"line break inside":   good[:4] + "\r\n" + good[4:] + "\n",
		"not base64":          "not base64!\n",
		"unpadded base64":     strings.TrimRight(base64.StdEncoding.EncodeToString(configList(3, 9)), "=") + "\n",
		"wrong length prefix": base64.StdEncoding.EncodeToString([]byte{0, 9, 1, 2}) + "\n",
		"empty list":          base64.StdEncoding.EncodeToString([]byte{0, 0}) + "\n",
		"too large":           base64.StdEncoding.EncodeToString(configList(maxECHFileBytes, 1)) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			f, path, logs := newTestECHFile(t)
			os.MkdirAll(filepath.Dir(path), 0o755)
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if v, ok := f.Value(); ok || v != "" {
					t.Fatalf("lookup = %q, %v; want absent", v, ok)
				}
			}
			if n := logs.FilterMessage("unusable ECH config list: the METADATA entry is absent").Len(); n != 1 {
				t.Fatalf("logged %d warnings, want one per version of the file: %v", n, logs.All())
			}
			// Fixed by the next publication.
			if _, err := PublishECHConfigList(path, configList(5, 9)); err != nil {
				t.Fatal(err)
			}
			if v, ok := f.Value(); !ok || v != good {
				t.Fatalf("after a good publication: %q, %v", v, ok)
			}
		})
	}
}

func TestECHFileNotARegularFile(t *testing.T) {
	f, path, _ := newTestECHFile(t)
	os.MkdirAll(filepath.Dir(path), 0o755)
	// A FIFO would make a plain open wait for a writer forever.
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Value(); ok {
		t.Fatal("a FIFO answered")
	}
	os.Remove(path)
	os.Mkdir(path, 0o755)
	if _, ok := f.Value(); ok {
		t.Fatal("a folder answered")
	}
}
