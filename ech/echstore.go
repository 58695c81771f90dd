package ech

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"chatmail-edge/internal/atomicfile"
	"chatmail-edge/internal/filelimit"
)

// DefaultRetireGrace is how long a superseded key keeps decrypting. Clients
// cache a config as long as the place they got it from allows (DNS TTL,
// autoconfig, IMAP METADATA), often longer. While the old key exists, such a
// client's ECH is simply accepted. Once it is gone the hello is rejected, and
// the client must check the public_name certificate and redial with
// retry_configs (RFC 9849 §6.1.6): a round trip more, and a failure for clients
// that do not retry (Go's client leaves the redial to its caller). Caddy keeps
// old keys 90 days; 30 days covers DNS and autoconfig caching with margin.
const DefaultRetireGrace = 30 * 24 * time.Hour

const (
	echKeyFileTimeLayout = "20060102T150405Z"
	echKeyFileSuffix     = ".pem"
	echLockFileName      = ".lock"
	echLockTimeout       = 10 * time.Second
	maxECHKeyFileSize    = filelimit.Small // a key file is about 600 bytes
	echSecretPermBits    = 0o077           // group and other permission bits
)

// Load reads every key file (*.pem) in dir. A missing dir or one without
// key files gives an empty set. Any key file that is unreadable, malformed,
// not X25519/0xfe0d, or whose private key does not match its config is an
// error naming the file: a key must never be dropped silently, since clients
// hold its config. So is a config_id used twice, and a dir or key file that
// group or others may access (they hold secrets).
func Load(dir string) (*KeySet, error) {
	info, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return NewKeySet(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("load ECH keys: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("load ECH keys: %s is not a directory", dir)
	}
	if perm := info.Mode().Perm(); perm&echSecretPermBits != 0 {
		return nil, fmt.Errorf("load ECH keys: directory %s has mode %04o, open to group or others; chmod 700 it", dir, perm)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load ECH keys: %w", err)
	}
	var keys []*Key
	byID := make(map[uint8]*Key)
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, echKeyFileSuffix) {
			continue
		}
		k, err := readECHKeyFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // retired by another process since ReadDir
		}
		if err != nil {
			return nil, err
		}
		if other := byID[k.ConfigID()]; other != nil {
			return nil, fmt.Errorf("load ECH keys: %s and %s both use config_id 0x%02x", other.File, k.File, k.ConfigID())
		}
		byID[k.ConfigID()] = k
		keys = append(keys, k)
	}
	return NewKeySet(keys...), nil
}

// Ensure loads the keys in dir and, only if there are none, generates
// and stores a first one (created reports that). It never replaces or deletes
// a key: a key file that does not load is an error, since a silently new key
// would break every client that cached the old config.
func Ensure(dir, publicName string, maxNameLen uint8, now time.Time) (set *KeySet, created bool, err error) {
	set, err = Load(dir)
	if err != nil {
		return nil, false, fmt.Errorf("ensure ECH keys in %s: %w", dir, err)
	}
	if len(set.Keys) > 0 {
		return set, false, nil
	}
	if err := checkPublicName(publicName); err != nil { // before making the dir
		return nil, false, fmt.Errorf("ensure ECH keys in %s: %w", dir, err)
	}
	err = withLockedECHDir(dir, func(locked *KeySet) error {
		set = locked
		if len(locked.Keys) > 0 {
			return nil // another process made the first key meanwhile
		}
		k, err := addECHKey(dir, locked, publicName, maxNameLen, now)
		if err != nil {
			return err
		}
		set, created = NewKeySet(k), true
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("ensure ECH keys in %s: %w", dir, err)
	}
	return set, created, nil
}

// Rotate adds a new current key with a config_id unique among the live
// keys. Older keys stay, decrypt-only, until Retire removes them.
func Rotate(dir, publicName string, maxNameLen uint8, now time.Time) (*Key, *KeySet, error) {
	if err := checkPublicName(publicName); err != nil { // before making the dir
		return nil, nil, fmt.Errorf("rotate ECH key in %s: %w", dir, err)
	}
	var k *Key
	var set *KeySet
	err := withLockedECHDir(dir, func(locked *KeySet) error {
		// The new key must sort first, or it would never be published.
		if cur := locked.Current(); cur != nil && !now.Truncate(time.Millisecond).After(cur.Created) {
			return fmt.Errorf("now (%s) is not after the current key's creation (%s)", now.UTC().Format(time.RFC3339), cur.Created.Format(time.RFC3339))
		}
		var err error
		k, err = addECHKey(dir, locked, publicName, maxNameLen, now)
		if err != nil {
			return err
		}
		set = NewKeySet(append(locked.Keys, k)...)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("rotate ECH key in %s: %w", dir, err)
	}
	return k, set, nil
}

// Retire removes the keys superseded more than grace ago: those whose
// next newer key was created before now-grace. The current key is never
// removed. On error, set still holds every key left on disk.
func Retire(dir string, grace time.Duration, now time.Time) (removed []*Key, set *KeySet, err error) {
	if grace < 0 {
		return nil, nil, fmt.Errorf("retire ECH keys in %s: negative grace %s", dir, grace)
	}
	set, err = Load(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("retire ECH keys in %s: %w", dir, err)
	}
	if len(set.Keys) < 2 {
		return nil, set, nil // nothing but the current key, if any
	}
	cutoff := now.Add(-grace)
	err = withLockedECHDir(dir, func(locked *KeySet) error {
		var keep []*Key
		var errs []error
		for i, k := range locked.Keys {
			if i == 0 || !locked.Keys[i-1].Created.Before(cutoff) {
				keep = append(keep, k)
				continue
			}
			if err := os.Remove(k.File); err != nil {
				keep = append(keep, k)
				errs = append(errs, err)
				continue
			}
			removed = append(removed, k)
		}
		set = NewKeySet(keep...)
		if len(removed) > 0 {
			errs = append(errs, syncDir(dir))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return removed, set, fmt.Errorf("retire ECH keys in %s: %w", dir, err)
	}
	return removed, set, nil
}

// withLockedECHDir creates dir if needed, holds its lock across processes,
// and calls fn with the keys loaded under the lock.
func withLockedECHDir(dir string, fn func(locked *KeySet) error) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	unlock, err := lockECHDir(dir, echLockTimeout)
	if err != nil {
		return err
	}
	defer unlock()
	locked, err := Load(dir)
	if err != nil {
		return err
	}
	return fn(locked)
}

// addECHKey generates a key with a config_id unused in set and stores it.
func addECHKey(dir string, set *KeySet, publicName string, maxNameLen uint8, now time.Time) (*Key, error) {
	id, err := randomConfigID(set.configIDs())
	if err != nil {
		return nil, err
	}
	k, err := GenerateKey(publicName, maxNameLen, id, now, nil)
	if err != nil {
		return nil, err
	}
	if err := writeECHKeyFile(dir, k); err != nil {
		return nil, err
	}
	return k, nil
}

// echKeyFileName is "<created>-<config_id>.pem", so a listing sorts by age.
func echKeyFileName(k *Key) string {
	return fmt.Sprintf("%s-%02x%s", k.Created.UTC().Format(echKeyFileTimeLayout), k.ConfigID(), echKeyFileSuffix)
}

// encodeECHKeyFile is the RFC 9934 PEM preceded by lines for the operator
// (RFC 7468 §2 lets text precede the first block); "created:" is read back.
func encodeECHKeyFile(k *Key) ([]byte, error) {
	blocks, err := encodeECHKeyPEM(k)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# chatmail-edge ECH key (RFC 9934). Keep this file secret.\n")
	fmt.Fprintf(&b, "# config_id: 0x%02x\n", k.ConfigID())
	fmt.Fprintf(&b, "# public_name: %s\n", k.PublicName())
	fmt.Fprintf(&b, "# created: %s\n", k.Created.UTC().Format(createdLayout))
	b.Write(blocks)
	return b.Bytes(), nil
}

// writeECHKeyFile stores k in dir atomically: a temp file, fsynced, then
// linked into place and the dir fsynced. link(2) rather than rename(2) so an
// existing key file is never replaced.
func writeECHKeyFile(dir string, k *Key) error {
	data, err := encodeECHKeyFile(k)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, echKeyFileName(k))
	if err := atomicfile.WriteNew(path, data, 0o600); err != nil {
		return fmt.Errorf("store ECH key: %w", err)
	}
	k.File = path
	return nil
}

// readECHKeyFile loads one key file. Errors name the file; one that vanished
// is reported as fs.ErrNotExist.
func readECHKeyFile(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load ECH key %s: %w", path, err)
	}
	defer f.Close()
	k, err := decodeECHKeyFile(f)
	if err != nil {
		return nil, fmt.Errorf("load ECH key %s: %w", path, err)
	}
	k.File = path
	return k, nil
}

func decodeECHKeyFile(f *os.File) (*Key, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !info.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if perm := info.Mode().Perm(); perm&echSecretPermBits != 0 {
		return nil, fmt.Errorf("mode %04o is open to group or others; chmod 600 it", perm)
	}
	data, err := filelimit.ReadAll(f, maxECHKeyFileSize)
	if err != nil {
		return nil, err
	}
	config, priv, err := decodeECHKeyPEM(data)
	if err != nil {
		return nil, err
	}
	created, err := parseCreatedLine(data)
	if err != nil {
		return nil, err
	}
	if created.IsZero() {
		created = info.ModTime().UTC().Truncate(time.Millisecond)
	}
	return &Key{Config: config, PrivateKey: priv, Created: created}, nil
}

// parseCreatedLine finds "created: <RFC 3339>" in the text before the first
// PEM block; the zero time if there is none.
func parseCreatedLine(data []byte) (time.Time, error) {
	header, _, _ := bytes.Cut(data, []byte("-----BEGIN"))
	for line := range strings.Lines(string(header)) {
		field := strings.TrimSpace(strings.TrimLeft(line, "# \t"))
		value, ok := strings.CutPrefix(field, "created:")
		if !ok {
			continue
		}
		t, err := time.Parse(time.RFC3339, strings.TrimSpace(value))
		if err != nil {
			return time.Time{}, fmt.Errorf("created line: %w", err)
		}
		return t.UTC(), nil
	}
	return time.Time{}, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// createdLayout is RFC 3339 with milliseconds, so that a key rotated soon
// after the previous one still sorts after it once read back.
const createdLayout = "2006-01-02T15:04:05.000Z07:00"

// Dir is the folder of the ECH keys in an edge's state folder.
func Dir(stateDir string) string { return filepath.Join(stateDir, "ech") }

// RotateLike adds a new key like the current one: with its public_name
// (unless publicName is given) and its padding length. It is `ech rotate`.
func RotateLike(dir, publicName string, now time.Time) (*Key, *KeySet, error) {
	set, err := Load(dir)
	if err != nil {
		return nil, nil, err
	}
	cur := set.Current()
	if cur == nil {
		return nil, nil, fmt.Errorf("no ECH keys in %s to rotate (the edge creates the first when it starts)", dir)
	}
	parsed := cur.Parsed()
	if publicName == "" {
		publicName = parsed.PublicName
	}
	return Rotate(dir, publicName, parsed.MaxNameLen, now)
}
