package metadata

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"chatmail-edge/internal/atomicfile"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// maxECHFileBytes bounds the published file. An ECHConfigList of the
// current key is about 70 bytes plus its public_name; 16 KiB holds any
// list the edge could write.
const maxECHFileBytes = 16 << 10

// PublishECHConfigList writes list to path the way the proxy reads it:
// standard base64 (RFC 4648 §4) on one line, replaced atomically so that a
// reader sees the old line or the new one, world-readable (it is public,
// and the proxy runs as chatmail's vmail user). It writes nothing when the
// file already holds list.
func PublishECHConfigList(path string, list []byte) (changed bool, err error) {
	line := []byte(base64.StdEncoding.EncodeToString(list) + "\n")
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, line) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("publish the ECH config list: %w", err)
	}
	if err := atomicfile.Write(path, line, 0o644); err != nil {
		return false, fmt.Errorf("publish the ECH config list: %w", err)
	}
	return true, nil
}

// ECHFile answers ECHEntry from the published file. It looks at the file
// on every lookup and reads it again only when it was replaced or changed,
// so a rotation shows with the next lookup after the edge rewrote it. It is
// safe for concurrent use.
type ECHFile struct {
	path string
	log  *zap.Logger

	mu    sync.Mutex
	info  fs.FileInfo // of the version value was read from; nil: none yet
	value string      // "" when the file is missing or unusable
	state string      // what was logged last, to log each change once
}

// NewECHFile reads the file at path, the edge's [ech] metadata_file; log
// says when it goes missing, breaks or changes.
func NewECHFile(path string, log *zap.Logger) *ECHFile {
	return &ECHFile{path: path, log: log}
}

// ServerEntry looks up a server entry (lowercase, as IMAP servers compare
// them): ECHEntry, or nothing. The demo's IMAP server answers from it.
func (f *ECHFile) ServerEntry(entry string) (string, bool) {
	if entry != ECHEntry {
		return "", false
	}
	return f.Value()
}

// Value returns the base64 ECHConfigList, or false when there is none to
// give: a missing or broken file makes the entry absent (NIL), never an
// error, so that one bad file cannot break the other METADATA entries.
func (f *ECHFile) Value() (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		f.info, f.value = nil, ""
		f.note("missing", zap.InfoLevel, "no ECH config list published yet: the METADATA entry is absent")
		return "", false
	case err != nil:
		f.info, f.value = nil, ""
		f.note("error: "+err.Error(), zap.WarnLevel, "cannot read the ECH config list: the METADATA entry is absent", zap.Error(err))
		return "", false
	case f.info != nil && sameVersion(f.info, fi):
		return f.value, f.value != ""
	}
	value, info, err := readECHFile(f.path)
	f.info, f.value = info, value
	if err != nil {
		f.note("error: "+err.Error(), zap.WarnLevel, "unusable ECH config list: the METADATA entry is absent", zap.Error(err))
		return "", false
	}
	f.note("ok: "+value, zap.InfoLevel, "serving the ECH config list", zap.Int("base64_bytes", len(value)))
	return value, true
}

// note logs msg when the file's state differs from the one logged last.
func (f *ECHFile) note(state string, level zapcore.Level, msg string, fields ...zap.Field) {
	if state == f.state {
		return
	}
	f.state = state
	f.log.Log(level, msg, append(fields, zap.String("file", f.path))...)
}

// sameVersion: the same file (the edge replaces it by renaming, which
// makes a new inode), unchanged since.
func sameVersion(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// readECHFile reads and checks the file: one line of standard base64 that
// decodes to an ECHConfigList (RFC 9849 §4: a 2-byte length, then that
// many bytes of ECHConfigs). info is the version read, also on errors, so
// that a broken file is not read again until it changes.
func readECHFile(path string) (value string, info fs.FileInfo, err error) {
	// O_NONBLOCK: a FIFO put in its place cannot make the open wait.
	file, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", nil, err
	}
	defer file.Close()
	if info, err = file.Stat(); err != nil {
		return "", nil, err
	}
	if !info.Mode().IsRegular() {
		return "", info, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(file, maxECHFileBytes+1))
	if err != nil {
		return "", info, err
	}
	if len(data) > maxECHFileBytes {
		return "", info, fmt.Errorf("%s is larger than %d bytes", path, maxECHFileBytes)
	}
	line, ok := bytes.CutSuffix(data, []byte("\n"))
	if !ok || len(line) == 0 || bytes.ContainsAny(line, "\r\n") {
		return "", info, fmt.Errorf("%s does not hold one line", path)
	}
	list, err := base64.StdEncoding.Strict().DecodeString(string(line))
	if err != nil {
		return "", info, fmt.Errorf("%s is not base64: %w", path, err)
	}
	if len(list) < 2 || int(binary.BigEndian.Uint16(list)) != len(list)-2 || len(list) == 2 {
		return "", info, fmt.Errorf("%s does not hold an ECHConfigList (RFC 9849 §4)", path)
	}
	return string(line), info, nil
}
