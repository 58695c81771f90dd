package ech

import (
	"bytes"
	"context"
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
func Load(dir string) (*KeySet, error) { return LoadFrom(context.Background(), InFolder(dir)) }

// Ensure loads the keys in dir and, only if there are none, generates
// and stores a first one (created reports that). It never replaces or deletes
// a key: a key file that does not load is an error, since a silently new key
// would break every client that cached the old config.
func Ensure(dir, publicName string, maxNameLen uint8, now time.Time) (set *KeySet, created bool, err error) {
	return EnsureIn(context.Background(), InFolder(dir), publicName, maxNameLen, now)
}

// Rotate adds a new current key with a config_id unique among the live
// keys. Older keys stay, decrypt-only, until Retire removes them.
func Rotate(dir, publicName string, maxNameLen uint8, now time.Time) (*Key, *KeySet, error) {
	return RotateIn(context.Background(), InFolder(dir), publicName, maxNameLen, now)
}

// Retire removes the keys superseded more than grace ago: those whose
// next newer key was created before now-grace. The current key is never
// removed. On error, set still holds every key left on disk.
func Retire(dir string, grace time.Duration, now time.Time) (removed []*Key, set *KeySet, err error) {
	return RetireIn(context.Background(), InFolder(dir), grace, now)
}

// LoadFrom reads the key set at p, as Load reads a folder.
func LoadFrom(ctx context.Context, p Place) (*KeySet, error) { return p.load(ctx) }

// EnsureIn is Ensure for the key set at p: on a shared store, the first
// node to start makes the first key and every other one loads it.
func EnsureIn(ctx context.Context, p Place, publicName string, maxNameLen uint8, now time.Time) (set *KeySet, created bool, err error) {
	set, err = p.load(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("ensure ECH keys in %s: %w", p, err)
	}
	if len(set.Keys) > 0 {
		return set, false, nil
	}
	if err := checkPublicName(publicName); err != nil { // before making the dir
		return nil, false, fmt.Errorf("ensure ECH keys in %s: %w", p, err)
	}
	err = p.locked(ctx, func(locked *KeySet) error {
		set = locked
		if len(locked.Keys) > 0 {
			return nil // another process made the first key meanwhile
		}
		k, err := addECHKey(ctx, p, locked, publicName, maxNameLen, now)
		if err != nil {
			return err
		}
		set, created = NewKeySet(k), true
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("ensure ECH keys in %s: %w", p, err)
	}
	return set, created, nil
}

// RotateIn is Rotate for the key set at p.
func RotateIn(ctx context.Context, p Place, publicName string, maxNameLen uint8, now time.Time) (*Key, *KeySet, error) {
	if err := checkPublicName(publicName); err != nil { // before making the dir
		return nil, nil, fmt.Errorf("rotate ECH key in %s: %w", p, err)
	}
	var k *Key
	var set *KeySet
	err := p.locked(ctx, func(locked *KeySet) error {
		// The new key must sort first, or it would never be published.
		if cur := locked.Current(); cur != nil && !now.Truncate(time.Millisecond).After(cur.Created) {
			return fmt.Errorf("now (%s) is not after the current key's creation (%s)", now.UTC().Format(time.RFC3339), cur.Created.Format(time.RFC3339))
		}
		var err error
		k, err = addECHKey(ctx, p, locked, publicName, maxNameLen, now)
		if err != nil {
			return err
		}
		set = NewKeySet(append(locked.Keys, k)...)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("rotate ECH key in %s: %w", p, err)
	}
	return k, set, nil
}

// RetireIn is Retire for the key set at p.
func RetireIn(ctx context.Context, p Place, grace time.Duration, now time.Time) (removed []*Key, set *KeySet, err error) {
	if grace < 0 {
		return nil, nil, fmt.Errorf("retire ECH keys in %s: negative grace %s", p, grace)
	}
	set, err = p.load(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("retire ECH keys in %s: %w", p, err)
	}
	if len(set.Keys) < 2 {
		return nil, set, nil // nothing but the current key, if any
	}
	cutoff := now.Add(-grace)
	err = p.locked(ctx, func(locked *KeySet) error {
		var keep []*Key
		var errs []error
		for i, k := range locked.Keys {
			if i == 0 || !locked.Keys[i-1].Created.Before(cutoff) {
				keep = append(keep, k)
				continue
			}
			if err := p.remove(ctx, k); err != nil {
				keep = append(keep, k)
				errs = append(errs, err)
				continue
			}
			removed = append(removed, k)
		}
		set = NewKeySet(keep...)
		if len(removed) > 0 {
			errs = append(errs, p.removed(ctx))
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return removed, set, fmt.Errorf("retire ECH keys in %s: %w", p, err)
	}
	return removed, set, nil
}

// Place is where a key set lives: a folder of this machine (InFolder), the
// default for one node, or a store that several nodes share (InStorage).
// Changes are made under the place's lock, across processes and nodes.
type Place interface {
	String() string // for errors: the folder, or the store
	load(ctx context.Context) (*KeySet, error)
	// locked holds the place's lock and calls fn with the keys loaded
	// under it.
	locked(ctx context.Context, fn func(locked *KeySet) error) error
	// add stores a new key, never over another; remove removes one;
	// removed makes the removals durable.
	add(ctx context.Context, k *Key) error
	remove(ctx context.Context, k *Key) error
	removed(ctx context.Context) error
}

// InFolder is the key set in dir, one RFC 9934 PEM file per key.
func InFolder(dir string) Place { return folder(dir) }

// folder is a Place: key files in a folder, under a flock(2).
type folder string

func (f folder) String() string { return string(f) }

func (f folder) load(context.Context) (*KeySet, error) {
	dir := string(f)
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
		keys = append(keys, k)
	}
	return checkedKeySet(keys)
}

// checkedKeySet is the set of keys, whose config_ids must differ.
func checkedKeySet(keys []*Key) (*KeySet, error) {
	byID := make(map[uint8]*Key, len(keys))
	for _, k := range keys {
		if other := byID[k.ConfigID()]; other != nil {
			return nil, fmt.Errorf("load ECH keys: %s and %s both use config_id 0x%02x", other.File, k.File, k.ConfigID())
		}
		byID[k.ConfigID()] = k
	}
	return NewKeySet(keys...), nil
}

// locked creates the folder if needed and holds its lock across processes.
func (f folder) locked(ctx context.Context, fn func(locked *KeySet) error) error {
	dir := string(f)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	unlock, err := lockECHDir(dir, echLockTimeout)
	if err != nil {
		return err
	}
	defer unlock()
	locked, err := f.load(ctx)
	if err != nil {
		return err
	}
	return fn(locked)
}

func (f folder) add(_ context.Context, k *Key) error { return writeECHKeyFile(string(f), k) }

func (f folder) remove(_ context.Context, k *Key) error { return os.Remove(k.File) }

func (f folder) removed(context.Context) error { return syncDir(string(f)) }

// addECHKey generates a key with a config_id unused in set and stores it.
func addECHKey(ctx context.Context, p Place, set *KeySet, publicName string, maxNameLen uint8, now time.Time) (*Key, error) {
	id, err := randomConfigID(set.configIDs())
	if err != nil {
		return nil, err
	}
	k, err := GenerateKey(publicName, maxNameLen, id, now, nil)
	if err != nil {
		return nil, err
	}
	if err := p.add(ctx, k); err != nil {
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
	return decodeECHKey(data, info.ModTime())
}

// decodeECHKey reads a key in its file's form; a key without a created
// line was created at modified (older files of the folder had none).
func decodeECHKey(data []byte, modified time.Time) (*Key, error) {
	config, priv, err := decodeECHKeyPEM(data)
	if err != nil {
		return nil, err
	}
	created, err := parseCreatedLine(data)
	if err != nil {
		return nil, err
	}
	if created.IsZero() {
		if modified.IsZero() {
			return nil, errors.New("no created line")
		}
		created = modified.UTC().Truncate(time.Millisecond)
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
	return RotateLikeIn(context.Background(), InFolder(dir), publicName, now)
}

// RotateLikeIn is RotateLike for the key set at p.
func RotateLikeIn(ctx context.Context, p Place, publicName string, now time.Time) (*Key, *KeySet, error) {
	set, err := p.load(ctx)
	if err != nil {
		return nil, nil, err
	}
	cur := set.Current()
	if cur == nil {
		return nil, nil, fmt.Errorf("no ECH keys in %s to rotate (the edge creates the first when it starts)", p)
	}
	parsed := cur.Parsed()
	if publicName == "" {
		publicName = parsed.PublicName
	}
	return RotateIn(ctx, p, publicName, parsed.MaxNameLen, now)
}
