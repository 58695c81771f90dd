package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"chatmail-edge/internal/filelimit"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Cached is the store with a copy of what this node read and wrote in a
// folder of its own (certmagic's FileStorage layout, keys 0600, folders
// 0700). Every request goes to the store first; only one the store does
// not answer is answered from the copy. So a node that restarts while the
// store is down serves the certificates and ECH keys it had; changes
// (Store, Delete) and locks need the store. The copy follows the store:
// what the store holds is copied as it is read, what it no longer holds
// is removed from the copy as soon as a read or a listing says so.
type Cached struct {
	remote *Store
	copy   *certmagic.FileStorage
}

var (
	_ certmagic.Storage   = (*Cached)(nil)
	_ certmagic.TryLocker = (*Cached)(nil)
)

// NewCached keeps a copy of what s answers in dir.
func NewCached(s *Store, dir string) (*Cached, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("copy of the shared store: %w", err)
	}
	return &Cached{remote: s, copy: &certmagic.FileStorage{Path: dir}}, nil
}

// HasCopy tells whether the copy holds anything: a node can serve from it
// while the store does not answer.
func (c *Cached) HasCopy() bool {
	entries, err := os.ReadDir(c.copy.Path)
	return err == nil && len(entries) > 0
}

// Store stores value in the store, then in the copy.
func (c *Cached) Store(ctx context.Context, key string, value []byte) error {
	if err := c.remote.Store(ctx, key, value); err != nil {
		return err
	}
	return c.keep(ctx, key, value)
}

// down tells that the store is known not to answer (Health): reads then
// go to the copy at once, rather than each wait Timeout for nothing. The
// probe finds the store back within ProbeInterval.
func (c *Cached) down() bool { return !c.remote.Health().Up }

// noCopy is the error of a read the store does not answer and the copy
// cannot: never fs.ErrNotExist, which would say the store has nothing.
func (c *Cached) noCopy(what string) error {
	h := c.remote.Health()
	return &requestError{fmt.Errorf("%s: the shared store (%s) does not answer since %s (%s), and this node has no copy",
		what, strings.Join(h.Endpoints, ","), h.Since.UTC().Format(time.RFC3339), h.LastError)}
}

// Load loads key from the store, or from the copy while the store does not
// answer.
func (c *Cached) Load(ctx context.Context, key string) ([]byte, error) {
	if c.down() {
		if v, err := c.loadCopy(key); err == nil {
			return v, nil
		}
		return nil, c.noCopy("load " + key)
	}
	v, err := c.remote.Load(ctx, key)
	switch {
	case err == nil:
		if old, lerr := c.loadCopy(key); lerr != nil || string(old) != string(v) {
			if kerr := c.keep(ctx, key, v); kerr != nil {
				c.remote.log.Warn("cannot keep a copy of the shared store", zap.Error(kerr))
			}
		}
		return v, nil
	case errors.Is(err, fs.ErrNotExist):
		c.copy.Delete(ctx, cleanKey(key))
		return nil, err
	case unanswered(err):
		if v, lerr := c.loadCopy(key); lerr == nil {
			return v, nil
		}
	}
	return nil, err
}

// Delete deletes key in the store, then in the copy.
func (c *Cached) Delete(ctx context.Context, key string) error {
	if err := c.remote.Delete(ctx, key); err != nil {
		return err
	}
	return c.copy.Delete(ctx, cleanKey(key))
}

// Exists asks the store, or the copy while the store does not answer.
func (c *Cached) Exists(ctx context.Context, key string) bool {
	if c.down() {
		return c.copy.Exists(ctx, cleanKey(key))
	}
	isValue, isDir, err := c.remote.kind(ctx, key)
	if unanswered(err) {
		return c.copy.Exists(ctx, cleanKey(key))
	}
	return err == nil && (isValue || isDir)
}

// List lists from the store, and removes from the copy what the store no
// longer lists; while the store does not answer, from the copy.
func (c *Cached) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	var keys []string
	err := c.noCopy("list " + prefix)
	if !c.down() {
		keys, err = c.remote.List(ctx, prefix, recursive)
	}
	if unanswered(err) {
		if keys, cerr := c.copy.List(ctx, cleanKey(prefix), recursive); cerr == nil {
			return keys, nil
		}
		return nil, err
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	listed := make(map[string]bool, len(keys))
	for _, k := range keys {
		listed[cleanKey(k)] = true
	}
	if copied, cerr := c.copy.List(ctx, cleanKey(prefix), recursive); cerr == nil {
		for _, k := range copied {
			if !listed[cleanKey(k)] {
				c.copy.Delete(ctx, k)
			}
		}
	}
	return keys, err
}

// Stat asks the store, or the copy while the store does not answer.
func (c *Cached) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	var info certmagic.KeyInfo
	err := c.noCopy("stat " + key)
	if !c.down() {
		info, err = c.remote.Stat(ctx, key)
	}
	if unanswered(err) {
		if info, lerr := c.copy.Stat(ctx, cleanKey(key)); lerr == nil {
			return info, nil
		}
	}
	return info, err
}

// keep writes value into the copy.
func (c *Cached) keep(ctx context.Context, key string, value []byte) error {
	if err := c.copy.Store(ctx, cleanKey(key), value); err != nil {
		return fmt.Errorf("copy of %s: %w", key, err)
	}
	return nil
}

// loadCopy reads key's copy, at most a value's bound.
func (c *Cached) loadCopy(key string) ([]byte, error) {
	return filelimit.ReadFile(filepath.Join(c.copy.Path, filepath.FromSlash(cleanKey(key))), MaxValue)
}

// String names the store.
func (c *Cached) String() string { return c.remote.String() }

// Lock, TryLock and Unlock are the store's: a lock needs it.
func (c *Cached) Lock(ctx context.Context, name string) error { return c.remote.Lock(ctx, name) }

func (c *Cached) TryLock(ctx context.Context, name string) (bool, error) {
	return c.remote.TryLock(ctx, name)
}

func (c *Cached) Unlock(ctx context.Context, name string) error { return c.remote.Unlock(ctx, name) }

// Health, Watch and Close are the store's.
func (c *Cached) Health() Health { return c.remote.Health() }

func (c *Cached) Watch(ctx context.Context, key string) <-chan struct{} {
	return c.remote.Watch(ctx, key)
}

func (c *Cached) Close() error { return c.remote.Close() }
