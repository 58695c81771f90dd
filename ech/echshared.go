package ech

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"time"
)

// Storage is a store several nodes share, as the key set's place instead
// of a folder: the methods of certmagic.Storage the key set needs (the
// edge's store package implements them on etcd). Load and List report a
// missing key with an error wrapping fs.ErrNotExist; Lock waits until the
// lock is had or ctx ends.
type Storage interface {
	Load(ctx context.Context, key string) ([]byte, error)
	Store(ctx context.Context, key string, value []byte) error
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, prefix string, recursive bool) ([]string, error)
	Lock(ctx context.Context, name string) error
	Unlock(ctx context.Context, name string) error
}

// Where the key set lives in a Storage: one value per key, in the key
// file's form, named as the file (SharedKeysPrefix/<created>-<id>.pem).
const (
	SharedKeysPrefix = "ech/keys"
	sharedLockName   = "ech_keys"
)

// InStorage is the key set in a shared store: every node loads the same
// keys, and a change made on one node (under the store's lock) is what
// every node loads next.
func InStorage(s Storage) Place { return shared{s} }

// shared is a Place in a Storage.
type shared struct{ s Storage }

func (p shared) String() string { return fmt.Sprintf("the shared store (%v)", p.s) }

func (p shared) load(ctx context.Context) (*KeySet, error) {
	names, err := p.s.List(ctx, SharedKeysPrefix, false)
	if errors.Is(err, fs.ErrNotExist) {
		return NewKeySet(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("load ECH keys: %w", err)
	}
	var keys []*Key
	for _, name := range names {
		if !strings.HasSuffix(name, echKeyFileSuffix) || strings.HasPrefix(path.Base(name), ".") {
			continue
		}
		data, err := p.s.Load(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			continue // retired by another node since List
		}
		if err != nil {
			return nil, fmt.Errorf("load ECH key %s: %w", name, err)
		}
		if len(data) > maxECHKeyFileSize {
			return nil, fmt.Errorf("load ECH key %s: %d bytes, more than a key's %d", name, len(data), maxECHKeyFileSize)
		}
		k, err := decodeECHKey(data, time.Time{})
		if err != nil {
			return nil, fmt.Errorf("load ECH key %s: %w", name, err)
		}
		k.File = name
		keys = append(keys, k)
	}
	return checkedKeySet(keys)
}

func (p shared) locked(ctx context.Context, fn func(locked *KeySet) error) error {
	if err := p.s.Lock(ctx, sharedLockName); err != nil {
		return err
	}
	defer p.s.Unlock(context.WithoutCancel(ctx), sharedLockName)
	locked, err := p.load(ctx)
	if err != nil {
		return err
	}
	return fn(locked)
}

// add stores k under a name no other key has: the name holds its creation
// time and config_id, both unique in the set loaded under the lock.
func (p shared) add(ctx context.Context, k *Key) error {
	data, err := encodeECHKeyFile(k)
	if err != nil {
		return err
	}
	name := path.Join(SharedKeysPrefix, echKeyFileName(k))
	if err := p.s.Store(ctx, name, data); err != nil {
		return fmt.Errorf("store ECH key: %w", err)
	}
	k.File = name
	return nil
}

func (p shared) remove(ctx context.Context, k *Key) error { return p.s.Delete(ctx, k.File) }

func (p shared) removed(context.Context) error { return nil }
