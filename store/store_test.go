package store

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/acmetest"
	"chatmail-edge/internal/etcdtest"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap/zaptest"
)

// open connects a Store to etcd with the test's settings.
func open(t *testing.T, e *etcdtest.Etcd, cfg Config) *Store {
	t.Helper()
	cfg.Endpoints = []string{e.Endpoint}
	if cfg.Prefix == "" {
		cfg.Prefix = "/test/"
	}
	s, err := Open(context.Background(), cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStoreLoadStatDelete(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, e, Config{})
	ctx := context.Background()

	if _, err := s.Load(ctx, "certificates/x/x.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("load of a missing key: %v, want fs.ErrNotExist", err)
	}
	before := time.Now()
	if err := s.Store(ctx, "certificates/x/x.crt", []byte("chain\n")); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	if v, err := s.Load(ctx, "/certificates//x/x.crt"); err != nil || string(v) != "chain\n" {
		t.Fatalf("load: %q, %v", v, err)
	}
	for key, want := range map[string]bool{"certificates/x/x.crt": true, "certificates/x": true, "certificates": true, "certificates/x/x": false, "certificates/y": false} {
		if got := s.Exists(ctx, key); got != want {
			t.Errorf("Exists(%q) = %v, want %v", key, got, want)
		}
	}
	info, err := s.Stat(ctx, "certificates/x/x.crt")
	if err != nil || !info.IsTerminal || info.Size != 6 || info.Modified.Before(before.Truncate(time.Microsecond)) || info.Modified.After(after) {
		t.Fatalf("stat of a value: %+v, %v (stored between %v and %v)", info, err, before, after)
	}
	if info, err := s.Stat(ctx, "certificates/x"); err != nil || info.IsTerminal {
		t.Fatalf("stat of a folder: %+v, %v", info, err)
	}
	if _, err := s.Stat(ctx, "certificates/y"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat of a missing key: %v", err)
	}

	// Overwrite, then delete a folder with what it holds.
	s.Store(ctx, "certificates/x/x.crt", []byte("renewed"))
	s.Store(ctx, "certificates/x/x.key", []byte("key"))
	s.Store(ctx, "certificates/xy", []byte("beside, not below"))
	if v, _ := s.Load(ctx, "certificates/x/x.crt"); string(v) != "renewed" {
		t.Fatalf("after overwrite: %q", v)
	}
	if err := s.Delete(ctx, "certificates/x"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "certificates/x") || s.Exists(ctx, "certificates/x/x.key") || !s.Exists(ctx, "certificates/xy") {
		t.Fatal("delete of a folder: wrong keys left")
	}
	if err := s.Delete(ctx, "certificates/x"); err != nil {
		t.Fatalf("delete of a missing key: %v", err)
	}
	if err := s.Delete(ctx, "/"); err == nil {
		t.Fatal("delete of the root was accepted")
	}
}

func TestStoreRefusesValuesOverTheBound(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, e, Config{})
	ctx := context.Background()
	big := bytes.Repeat([]byte("x"), MaxValue)
	if err := s.Store(ctx, "big", big); err != nil {
		t.Fatalf("a value of MaxValue bytes: %v", err)
	}
	if v, err := s.Load(ctx, "big"); err != nil || !bytes.Equal(v, big) {
		t.Fatalf("load of MaxValue bytes: %d bytes, %v", len(v), err)
	}
	err := s.Store(ctx, "bigger", append(big, 'x'))
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "bigger") {
		t.Fatalf("a value over MaxValue: %v", err)
	}
	if s.Exists(ctx, "bigger") {
		t.Fatal("the refused value was stored")
	}
	// Something else wrote into our prefix: not read as a value.
	c, err := e.Client(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Put(ctx, "/test/kv/foreign", "no header")
	if _, err := s.Load(ctx, "foreign"); err == nil || !strings.Contains(err.Error(), "header") {
		t.Fatalf("a value without the header: %v", err)
	}
}

// List answers as certmagic's FileStorage does for the same keys in a
// folder.
func TestStoreListsLikeFileStorage(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, e, Config{})
	fsStore := &certmagic.FileStorage{Path: t.TempDir()}
	ctx := context.Background()
	keys := []string{
		"certificates/ca/a.test/a.test.crt", "certificates/ca/a.test/a.test.key", "certificates/ca/a.test/a.test.json",
		"certificates/ca/a.test-x/a.test-x.crt", "certificates/ca/b.test/b.test.crt",
		"acme/ca/users/default/default.key", "ech/keys/1.pem", "ech/keys/2.pem", "top",
	}
	for _, k := range keys {
		for _, st := range []certmagic.Storage{s, fsStore} {
			if err := st.Store(ctx, k, []byte(k)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, prefix := range []string{"", "certificates", "certificates/ca", "certificates/ca/a.test", "ech/keys", "acme/", "top", "missing", "certificates/c"} {
		for _, recursive := range []bool{false, true} {
			want, wantErr := fsStore.List(ctx, prefix, recursive)
			got, err := s.List(ctx, prefix, recursive)
			if errors.Is(wantErr, fs.ErrNotExist) != errors.Is(err, fs.ErrNotExist) || (wantErr == nil) != (err == nil) {
				t.Errorf("List(%q, %v): error %v, FileStorage's %v", prefix, recursive, err, wantErr)
				continue
			}
			if !slices.Equal(got, want) {
				t.Errorf("List(%q, %v) = %q\nFileStorage's   %q", prefix, recursive, got, want)
			}
		}
	}
}

// More keys than one range request reads: List pages through them.
func TestStoreListPages(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, e, Config{})
	ctx := context.Background()
	var want []string
	for i := range listPage + 10 {
		k := fmt.Sprintf("many/%05d", i)
		want = append(want, k)
		if err := s.Store(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.List(ctx, "many", false)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("List: %d keys (%v), want %d", len(got), err, len(want))
	}
}

// A lock is exclusive across nodes (two clients) and within one.
func TestStoreLocksAreExclusive(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	a, b := open(t, e, Config{}), open(t, e, Config{})
	ctx := context.Background()
	if err := a.Lock(ctx, "issue_cert_a.test"); err != nil {
		t.Fatal(err)
	}
	for node, st := range map[string]*Store{"the other node": b, "the same node": a} {
		if ok, err := st.TryLock(ctx, "issue_cert_a.test"); ok || err != nil {
			t.Fatalf("%s: TryLock of a held lock: %v, %v", node, ok, err)
		}
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := st.Lock(short, "issue_cert_a.test")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: Lock of a held lock: %v, want it to wait until its context ends", node, err)
		}
	}
	if ok, err := b.TryLock(ctx, "issue_cert_b.test"); !ok || err != nil {
		t.Fatalf("another name: %v, %v", ok, err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "issue_cert_a.test") }()
	if err := a.Unlock(ctx, "issue_cert_a.test"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("Lock after the unlock: %v", err)
	}
	if ok, _ := a.TryLock(ctx, "issue_cert_a.test"); ok {
		t.Fatal("the lock is held twice")
	}
	if err := a.Unlock(ctx, "never_locked"); err == nil {
		t.Fatal("unlock of a lock not held: no error")
	}
}

// crashEnv runs the test binary as a node that takes a lock and is then
// killed.
const crashEnv = "STORE_TEST_LOCK_AND_HANG"

func TestMain(m *testing.M) {
	if spec := os.Getenv(crashEnv); spec != "" {
		lockAndHang(spec)
		return
	}
	os.Exit(m.Run())
}

// lockAndHang takes the lock in spec ("endpoint lockname"), says "locked"
// and waits to be killed.
func lockAndHang(spec string) {
	endpoint, name, _ := strings.Cut(spec, " ")
	s, err := Open(context.Background(), Config{Endpoints: []string{endpoint}, Prefix: "/test/", LockTTL: 2 * time.Second}, zaptest.NewLogger(&testing.T{}))
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	if err := s.Lock(context.Background(), name); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("locked")
	select {}
}

// The lock of a node that crashed (a process killed while it holds the
// lock) is free once its lease expires.
func TestStoreLockOfAKilledNodeExpires(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, e, Config{})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+e.Endpoint+" renew_a.test")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("the other node: %q", line)
	}
	ctx := context.Background()
	if ok, err := s.TryLock(ctx, "renew_a.test"); ok || err != nil {
		t.Fatalf("TryLock while the other node holds the lock: %v, %v", ok, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.Lock(wait, "renew_a.test"); err != nil {
		t.Fatalf("the killed node's lock did not expire: %v", err)
	}
}

// Health follows the store: unreachable once it is stopped, with the error
// and since when; reachable again once it is back.
func TestStoreHealth(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, e, Config{ProbeInterval: 50 * time.Millisecond, Timeout: time.Second})
	if h := s.Health(); !h.Up || h.LastSuccess.IsZero() {
		t.Fatalf("after Open: %+v", h)
	}
	stopped := time.Now()
	e.Stop()
	waitFor(t, "the store to count as unreachable", func() bool { return !s.Health().Up })
	h := s.Health()
	if h.LastError == "" || h.Since.Before(stopped) || !slices.Equal(h.Endpoints, []string{e.Endpoint}) {
		t.Fatalf("while stopped: %+v", h)
	}
	if err := s.Store(context.Background(), "k", []byte("v")); err == nil || !strings.Contains(err.Error(), e.Endpoint) {
		t.Fatalf("a request while stopped: %v, want an error naming the endpoint", err)
	}
	e.Start()
	waitFor(t, "the store to count as reachable", func() bool { return s.Health().Up })
	if err := s.Store(context.Background(), "k", []byte("v")); err != nil {
		t.Fatalf("after the return: %v", err)
	}
}

func TestOpenNamesAnUnreachableStore(t *testing.T) {
	endpoint := "unix://" + filepath.Join(t.TempDir(), "nothing:1")
	_, err := Open(context.Background(), Config{Endpoints: []string{endpoint}, Timeout: 500 * time.Millisecond}, zaptest.NewLogger(t))
	if err == nil || !strings.Contains(err.Error(), endpoint) || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("Open of nothing: %v", err)
	}
}

// Secret files that group or others may read are refused, before any
// connection.
func TestOpenRefusesOpenSecrets(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("pw\n"), 0o644)
	for _, cfg := range []Config{
		{PasswordFile: secret, Username: "edge"},
		{CertFile: secret, KeyFile: secret},
	} {
		cfg.Endpoints = []string{"unix://" + filepath.Join(dir, "nothing:1")}
		_, err := Open(context.Background(), cfg, zaptest.NewLogger(t))
		if err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}

// Watch tells of each change, also of one after the store was stopped and
// started again.
func TestStoreWatch(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, e, Config{ProbeInterval: 50 * time.Millisecond, Timeout: time.Second})
	ctx := context.Background()
	changed := s.Watch(t.Context(), "ech/keys")
	receive(t, changed, "the watch set up")
	s.Store(ctx, "ech/keys/1.pem", []byte("1"))
	receive(t, changed, "the first key")
	s.Store(ctx, "elsewhere", []byte("x"))
	s.Store(ctx, "ech/keys/2.pem", []byte("2"))
	receive(t, changed, "the second key")
	e.Stop()
	waitFor(t, "the store to count as unreachable", func() bool { return !s.Health().Up })
	e.Start()
	waitFor(t, "the store to count as reachable", func() bool { return s.Health().Up })
	// Drain what the return told, then a change after it.
	select {
	case <-changed:
	default:
	}
	s.Store(ctx, "ech/keys/3.pem", []byte("3"))
	receive(t, changed, "a key stored after the return")
}

func receive(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("no word of %s", what)
	}
}

// waitFor polls cond, for states that announce themselves by no event.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	acmetest.WaitFor(t, 30*time.Second, what, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	})
}

// Cached answers from its copy what the store does not answer: values it
// read or wrote, lists and stats; changes and locks need the store. The
// copy follows the store: what another node deleted leaves it.
func TestCachedAnswersFromItsCopy(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	s := open(t, e, Config{ProbeInterval: 50 * time.Millisecond, Timeout: 500 * time.Millisecond})
	other := open(t, e, Config{})
	dir := t.TempDir()
	c, err := NewCached(s, dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if c.HasCopy() {
		t.Fatal("a new copy holds something")
	}
	c.Store(ctx, "certificates/a/a.crt", []byte("written here"))
	other.Store(ctx, "certificates/a/a.key", []byte("written elsewhere"))
	other.Store(ctx, "ech/keys/1.pem", []byte("key 1"))
	other.Store(ctx, "ech/keys/2.pem", []byte("key 2"))
	for _, k := range []string{"certificates/a/a.key", "ech/keys/1.pem", "ech/keys/2.pem"} {
		if _, err := c.Load(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	other.Delete(ctx, "ech/keys/1.pem") // retired by another node
	if keys, err := c.List(ctx, "ech/keys", false); err != nil || !slices.Equal(keys, []string{"ech/keys/2.pem"}) {
		t.Fatalf("list: %v, %v", keys, err)
	}
	if !c.HasCopy() {
		t.Fatal("the copy is empty")
	}

	e.Stop()
	waitFor(t, "the store to count as unreachable", func() bool { return !c.Health().Up })
	for k, want := range map[string]string{"certificates/a/a.crt": "written here", "certificates/a/a.key": "written elsewhere", "ech/keys/2.pem": "key 2"} {
		if v, err := c.Load(ctx, k); err != nil || string(v) != want {
			t.Errorf("while down, load %s: %q, %v", k, v, err)
		}
	}
	if _, err := c.Load(ctx, "ech/keys/1.pem"); err == nil {
		t.Error("while down, the key deleted elsewhere loads from the copy")
	}
	if keys, err := c.List(ctx, "ech/keys", false); err != nil || !slices.Equal(keys, []string{"ech/keys/2.pem"}) {
		t.Errorf("while down, list: %v, %v", keys, err)
	}
	if !c.Exists(ctx, "certificates/a") || c.Exists(ctx, "certificates/b") {
		t.Error("while down, Exists does not answer from the copy")
	}
	if info, err := c.Stat(ctx, "certificates/a/a.crt"); err != nil || info.Size != int64(len("written here")) {
		t.Errorf("while down, stat: %+v, %v", info, err)
	}
	if err := c.Store(ctx, "certificates/a/a.crt", []byte("changed")); err == nil {
		t.Error("a change while the store is down was taken")
	}
	if v, _ := c.Load(ctx, "certificates/a/a.crt"); string(v) != "written here" {
		t.Errorf("the refused change reached the copy: %q", v)
	}
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := c.Lock(short, "x"); err == nil {
		t.Error("a lock while the store is down")
	}

	e.Start()
	waitFor(t, "the store to count as reachable", func() bool { return c.Health().Up })
	other.Store(ctx, "certificates/a/a.crt", []byte("renewed elsewhere"))
	if v, err := c.Load(ctx, "certificates/a/a.crt"); err != nil || string(v) != "renewed elsewhere" {
		t.Fatalf("after the return: %q, %v", v, err)
	}
}
