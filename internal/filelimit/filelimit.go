// Package filelimit reads files with an upper bound on their size. A file
// the edge reads may be far larger than it should be (an operator's slip,
// a log written to the wrong path, a link to /dev/zero): reading it whole
// must never take the process's memory, and the error must say which file
// and which limit.
package filelimit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Limits by kind of file, each far above what a real one holds.
const (
	// Config is for configuration files: chatmail.ini and the edge's own
	// are a few KiB.
	Config = 1 << 20
	// PEM is for certificate chains and CA files: a chain is a few KiB.
	PEM = 1 << 20
	// Small is for keys and other files of a few lines: a private key, the
	// session ticket keys, an ECH key, a URL, an account's JSON.
	Small = 64 << 10
)

// ErrTooLarge is wrapped by the errors of files over their limit.
var ErrTooLarge = errors.New("file too large")

// ReadFile reads the file at path, which must hold at most limit bytes.
// Errors are *fs.PathError, naming the file; one over the limit wraps
// ErrTooLarge and says the limit.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadAll(f, limit)
}

// ReadAll reads the rest of f, which must hold at most limit bytes. A
// regular file over the limit is refused before anything is read; any
// other (a pipe, a device) is read up to one byte past the limit.
func ReadAll(f *os.File, limit int64) ([]byte, error) {
	if info, err := f.Stat(); err == nil && info.Mode().IsRegular() && info.Size() > limit {
		return nil, tooLarge(f.Name(), limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err // os.File's errors are *fs.PathError already
	}
	if int64(len(data)) > limit {
		return nil, tooLarge(f.Name(), limit)
	}
	return data, nil
}

func tooLarge(path string, limit int64) error {
	return &fs.PathError{Op: "read", Path: path, Err: fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)}
}
