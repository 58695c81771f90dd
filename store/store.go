// Package store is the shared store of several edge nodes: a
// certmagic.Storage on etcd, so that the nodes in front of one relay share
// the ACME account, the certificates and certmagic's locks (one node
// orders or renews a name, every node serves the result), and the ECH key
// set (ech.Storage: one node rotates, every node serves and publishes the
// same keys).
//
// Why etcd, and why the edge implements certmagic.Storage itself: Debian
// ships the server (etcd-server, 3.4 in Debian 12), so an operator can run
// it from the distribution and CI can start a real one; and none of the
// certmagic storage modules for any store (Redis, PostgreSQL, S3, etcd)
// could be fetched for this build, so the edge builds on etcd's official
// client (go.etcd.io/etcd/client/v3, the one Kubernetes uses) and its
// concurrency package: leases and mutexes for certmagic's locks.
//
// Layout under the configured prefix: kv/<key> holds each value, preceded
// by one line with its modification time (etcd keeps none that Stat could
// give); locks/<name>/<lease> are the lock keys of concurrency.Mutex.
// Every call has a deadline: the caller's, and at most Config.Timeout.
// Values are bounded (MaxValue). Locks hang on a lease of their own that
// the client keeps alive while it holds the lock: a node that crashed or
// lost the store lets its locks go after Config.LockTTL.
//
// Cached adds a copy in a folder of the node, answering what the store
// does not while it is down, so that a node restarted meanwhile serves
// what it had.
//
// The store holds private keys (certificates' and ECH's): it must be
// reachable only by the nodes, with TLS client certificates or etcd's
// users (Config), never open on a network.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// MaxValue bounds one value: what the edge and certmagic keep (chains,
// keys, JSON) is a few KiB, and etcd refuses requests over 1.5 MiB by
// default.
const MaxValue = 1 << 20

// maxListKeys bounds the keys one List reads: a relay's store holds a few
// dozen.
const maxListKeys = 100_000

// listPage is how many keys one range request of List reads.
const listPage = 1000

// ErrTooLarge is wrapped by the errors of values over MaxValue.
var ErrTooLarge = errors.New("value too large")

// valueHeader starts the line before each value: "chatmail-edge 1
// <modified, RFC 3339>\n".
const valueHeader = "chatmail-edge 1 "

// Store is a certmagic.Storage (with TryLock) on etcd.
type Store struct {
	cfg    Config
	client *clientv3.Client
	log    *zap.Logger
	prefix string // cfg.Prefix, ending in "/"
	health *health

	run    context.Context // ends at Close: lock sessions' keep-alives, the probe, watches
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	held map[string]*concurrency.Session // locks held, by name

	closeOnce sync.Once
	closeErr  error
}

var (
	_ certmagic.Storage   = (*Store)(nil)
	_ certmagic.TryLocker = (*Store)(nil)
)

func (s *Store) String() string {
	return "etcd " + strings.Join(s.cfg.Endpoints, ",") + " " + s.prefix
}

// cleanKey is key as certmagic's FileStorage would name the file: slashes
// folded, no leading or trailing one, "" for the root.
func cleanKey(key string) string {
	return strings.TrimPrefix(path.Clean("/"+key), "/")
}

// etcdKey is where key's value is.
func (s *Store) etcdKey(key string) string { return s.prefix + "kv/" + cleanKey(key) }

// etcdDir is the prefix of the keys below key ("a/b" is a folder of
// "a/b/c").
func (s *Store) etcdDir(key string) string {
	if k := cleanKey(key); k != "" {
		return s.prefix + "kv/" + k + "/"
	}
	return s.prefix + "kv/"
}

// call runs one request under the caller's deadline and at most
// Config.Timeout, and records how the store answered. A caller that gave up
// says nothing about the store.
func (s *Store) call(ctx context.Context, what string, f func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	err := f(cctx)
	if ctx.Err() == nil {
		s.health.record(err)
	}
	if err != nil {
		return &requestError{fmt.Errorf("%s in the shared store (%s): %w", what, strings.Join(s.cfg.Endpoints, ","), err)}
	}
	return nil
}

// requestError is a request the store did not answer (or refused): the
// node's copy (Cached) answers instead.
type requestError struct{ err error }

func (e *requestError) Error() string { return e.err.Error() }
func (e *requestError) Unwrap() error { return e.err }

// unanswered tells an error of a request the store did not answer.
func unanswered(err error) bool {
	var re *requestError
	return errors.As(err, &re)
}

// Store puts value at key.
func (s *Store) Store(ctx context.Context, key string, value []byte) error {
	if cleanKey(key) == "" {
		return fmt.Errorf("store %q: not a key", key)
	}
	if len(value) > MaxValue {
		return fmt.Errorf("store %s: %d bytes: %w (at most %d)", key, len(value), ErrTooLarge, MaxValue)
	}
	v := make([]byte, 0, len(valueHeader)+40+len(value))
	v = append(v, valueHeader...)
	v = time.Now().UTC().AppendFormat(v, time.RFC3339Nano)
	v = append(v, '\n')
	v = append(v, value...)
	return s.call(ctx, "store "+key, func(ctx context.Context) error {
		_, err := s.client.Put(ctx, s.etcdKey(key), string(v))
		return err
	})
}

// Load is the value at key; an error wrapping fs.ErrNotExist if there is
// none.
func (s *Store) Load(ctx context.Context, key string) ([]byte, error) {
	var resp *clientv3.GetResponse
	err := s.call(ctx, "load "+key, func(ctx context.Context) (err error) {
		resp, err = s.client.Get(ctx, s.etcdKey(key))
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("load %s: %w", key, fs.ErrNotExist)
	}
	_, value, err := parseValue(resp.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", key, err)
	}
	return value, nil
}

// parseValue splits a stored value into its modification time and the
// value.
func parseValue(stored []byte) (time.Time, []byte, error) {
	if len(stored) > MaxValue+len(valueHeader)+64 {
		return time.Time{}, nil, fmt.Errorf("%d bytes stored: %w (at most %d)", len(stored), ErrTooLarge, MaxValue)
	}
	rest, ok := bytes.CutPrefix(stored, []byte(valueHeader))
	line, value, nl := bytes.Cut(rest, []byte("\n"))
	if !ok || !nl {
		return time.Time{}, nil, errors.New("not a value the edge stored (no header line)")
	}
	modified, err := time.Parse(time.RFC3339Nano, string(line))
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("header line: %w", err)
	}
	return modified, value, nil
}

// Delete deletes key and everything below it (certmagic: a folder goes
// with its keys). A missing key is no error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if cleanKey(key) == "" {
		return fmt.Errorf("delete %q: refusing to delete everything in the store", key)
	}
	return s.call(ctx, "delete "+key, func(ctx context.Context) error {
		_, err := s.client.Txn(ctx).Then(
			clientv3.OpDelete(s.etcdKey(key)),
			clientv3.OpDelete(s.etcdDir(key), clientv3.WithPrefix()),
		).Commit()
		return err
	})
}

// Exists tells whether key is a value or a folder of values; false also
// when the store cannot say.
func (s *Store) Exists(ctx context.Context, key string) bool {
	isValue, isDir, err := s.kind(ctx, key)
	return err == nil && (isValue || isDir)
}

// kind says whether key holds a value and whether keys lie below it, in
// one request.
func (s *Store) kind(ctx context.Context, key string) (isValue, isDir bool, err error) {
	var resp *clientv3.TxnResponse
	err = s.call(ctx, "look up "+key, func(ctx context.Context) (err error) {
		resp, err = s.client.Txn(ctx).Then(
			clientv3.OpGet(s.etcdKey(key), clientv3.WithCountOnly()),
			clientv3.OpGet(s.etcdDir(key), clientv3.WithPrefix(), clientv3.WithCountOnly()),
		).Commit()
		return err
	})
	if err != nil {
		return false, false, err
	}
	isValue = cleanKey(key) != "" && resp.Responses[0].GetResponseRange().Count > 0
	isDir = resp.Responses[1].GetResponseRange().Count > 0
	return isValue, isDir, nil
}

// Stat describes key: a value with its modification time and size, or a
// folder (IsTerminal false). An error wrapping fs.ErrNotExist if neither.
func (s *Store) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	var resp *clientv3.TxnResponse
	err := s.call(ctx, "stat "+key, func(ctx context.Context) (err error) {
		resp, err = s.client.Txn(ctx).Then(
			clientv3.OpGet(s.etcdKey(key)),
			clientv3.OpGet(s.etcdDir(key), clientv3.WithPrefix(), clientv3.WithCountOnly()),
		).Commit()
		return err
	})
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 && cleanKey(key) != "" {
		modified, value, err := parseValue(kvs[0].Value)
		if err != nil {
			return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", key, err)
		}
		return certmagic.KeyInfo{Key: key, Modified: modified, Size: int64(len(value)), IsTerminal: true}, nil
	}
	if resp.Responses[1].GetResponseRange().Count > 0 || cleanKey(key) == "" {
		return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
	}
	return certmagic.KeyInfo{}, fmt.Errorf("stat %s: %w", key, fs.ErrNotExist)
}

// List lists what lies below prefix as certmagic's FileStorage does (a walk
// of the folder): recursive, every folder and value below it, each folder
// before what it holds; otherwise the values and folders directly in it.
// Each is named prefix/relative path. A prefix that is neither a value nor
// a folder is an error wrapping fs.ErrNotExist; a value lists nothing.
func (s *Store) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	base := s.etcdDir(prefix)
	var rel []string
	start, end := base, clientv3.GetPrefixRangeEnd(base)
	for {
		var resp *clientv3.GetResponse
		err := s.call(ctx, "list "+prefix, func(ctx context.Context) (err error) {
			resp, err = s.client.Get(ctx, start, clientv3.WithRange(end), clientv3.WithKeysOnly(),
				clientv3.WithLimit(listPage), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, kv := range resp.Kvs {
			rel = append(rel, strings.TrimPrefix(string(kv.Key), base))
		}
		if len(rel) > maxListKeys {
			return nil, fmt.Errorf("list %s: more than %d keys", prefix, maxListKeys)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	if len(rel) == 0 {
		isValue, _, err := s.kind(ctx, prefix)
		if err != nil {
			return nil, err
		}
		if !isValue && cleanKey(prefix) != "" {
			return nil, fmt.Errorf("list %s: %w", prefix, fs.ErrNotExist)
		}
		return nil, nil
	}
	seen := map[string]bool{}
	var out []string
	add := func(r string) {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	for _, r := range rel {
		parts := strings.Split(r, "/")
		if !recursive {
			add(parts[0])
			continue
		}
		for i := range parts {
			add(strings.Join(parts[:i+1], "/"))
		}
	}
	// A walk's order: by path element, so that a folder comes right before
	// what it holds ("a/b", "a/b/c", "a/b-x").
	slices.SortFunc(out, func(a, b string) int {
		return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
	})
	for i, r := range out {
		out[i] = path.Join(prefix, r)
	}
	return out, nil
}

// Lock takes the lock name, waiting until it is free (another node's lock
// is free once that node unlocks it or its lease expires, Config.LockTTL
// after it last reached the store) or ctx ends.
func (s *Store) Lock(ctx context.Context, name string) error {
	sess, err := s.session(ctx)
	if err != nil {
		return fmt.Errorf("lock %s: %w", name, err)
	}
	// Waiting for another holder is bounded by ctx alone, as certmagic's
	// Locker wants; the requests within are the client's.
	if err := concurrency.NewMutex(sess, s.lockKey(name)).Lock(ctx); err != nil {
		s.drop(sess)
		if ctx.Err() == nil {
			s.health.record(err)
		}
		return fmt.Errorf("lock %s in the shared store: %w", name, err)
	}
	s.keep(name, sess)
	return nil
}

// TryLock takes the lock name if it is free now.
func (s *Store) TryLock(ctx context.Context, name string) (bool, error) {
	sess, err := s.session(ctx)
	if err != nil {
		return false, fmt.Errorf("try lock %s: %w", name, err)
	}
	err = s.call(ctx, "try lock "+name, func(ctx context.Context) error {
		return concurrency.NewMutex(sess, s.lockKey(name)).TryLock(ctx)
	})
	if errors.Is(err, concurrency.ErrLocked) {
		s.drop(sess)
		return false, nil
	}
	if err != nil {
		s.drop(sess)
		return false, err
	}
	s.keep(name, sess)
	return true, nil
}

// Unlock releases the lock name: its lease is revoked, which deletes the
// lock key. If the store cannot be reached the lease is no longer kept
// alive and the lock goes when it expires.
func (s *Store) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	sess := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if sess == nil {
		return fmt.Errorf("unlock %s: not locked by this node", name)
	}
	sess.Orphan()
	return s.call(ctx, "unlock "+name, func(ctx context.Context) error {
		_, err := s.client.Revoke(ctx, sess.Lease())
		return err
	})
}

func (s *Store) lockKey(name string) string { return s.prefix + "locks/" + name }

// session is a new lease for one lock, kept alive until Unlock or Close.
func (s *Store) session(ctx context.Context) (*concurrency.Session, error) {
	ttl := int64(s.cfg.LockTTL / time.Second)
	var lease *clientv3.LeaseGrantResponse
	err := s.call(ctx, "grant a lease", func(ctx context.Context) (err error) {
		lease, err = s.client.Grant(ctx, ttl)
		return err
	})
	if err != nil {
		return nil, err
	}
	sess, err := concurrency.NewSession(s.client, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(ttl)), concurrency.WithContext(s.run))
	if err != nil {
		return nil, fmt.Errorf("keep the lease alive: %w", err)
	}
	return sess, nil
}

// keep records the lock name as held with sess. A lock this node held
// before under the name was lost with its lease (another could take it
// only then): its session goes.
func (s *Store) keep(name string, sess *concurrency.Session) {
	s.mu.Lock()
	old := s.held[name]
	s.held[name] = sess
	s.mu.Unlock()
	if old != nil {
		s.drop(old)
	}
}

// drop ends a session that holds nothing (any more): its lease is revoked
// within Timeout, else it expires.
func (s *Store) drop(sess *concurrency.Session) {
	sess.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	s.client.Revoke(ctx, sess.Lease())
}

// Close releases the locks still held, stops the probe and the watches,
// and closes the connection. Calls after the first do nothing.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		held := s.held
		s.held = map[string]*concurrency.Session{}
		s.mu.Unlock()
		for _, sess := range held {
			s.drop(sess)
		}
		s.cancel()
		// Closing the client ends the watches: etcd's watch channel does not
		// close on its context while the store cannot be reached.
		s.closeErr = s.client.Close()
		s.wg.Wait()
	})
	return s.closeErr
}
