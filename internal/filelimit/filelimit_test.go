package filelimit

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	os.WriteFile(path, []byte("12345"), 0o600)
	if got, err := ReadFile(path, 5); err != nil || string(got) != "12345" {
		t.Fatalf("at the limit: %q, %v", got, err)
	}
	_, err := ReadFile(path, 4)
	if !errors.Is(err, ErrTooLarge) || err.Error() != "read "+path+": file too large: more than 4 bytes" {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := ReadFile(filepath.Join(dir, "missing"), 4); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// TestReadAllOfADevice: a file whose size is not known in advance is cut
// at the limit, not read to its end.
func TestReadAllOfADevice(t *testing.T) {
	_, err := ReadFile("/dev/zero", 1000)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "/dev/zero") {
		t.Fatalf("/dev/zero: %v", err)
	}
}
