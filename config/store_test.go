package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// [store]: endpoints that would carry the store's secrets in the clear are
// refused, keys that go together must come together, and StoreOf reads the
// section without chatmail.ini.
func TestStoreSection(t *testing.T) {
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	path := filepath.Join(dir, "edge.ini")
	load := func(store string) (*Settings, error) {
		os.WriteFile(path, []byte("[edge]\nchatmail_ini = "+chatmailINI+"\n[store]\n"+store), 0o644)
		return Load(path, true)
	}
	s, err := load("etcd_endpoints = https://etcd1.example:2379 https://etcd2.example:2379\ntls_ca = /etc/ca.pem\ntimeout = 2s\n")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Store.Shared() || !slices.Equal(s.Store.EtcdEndpoints, []string{"https://etcd1.example:2379", "https://etcd2.example:2379"}) ||
		s.Store.Prefix != "/chatmail-edge/" || s.Store.Timeout != 2*time.Second || s.Store.LockTTL != 30*time.Second {
		t.Fatalf("settings: %+v", s.Store)
	}
	for store, want := range map[string]string{
		"etcd_endpoints = http://10.0.0.5:2379\n":           "edge.ini:4: etcd_endpoints: \"http://10.0.0.5:2379\": plain http to another machine",
		"etcd_endpoints = ftp://etcd:2379\n":                "etcd_endpoints: want etcd client URLs with https://",
		"prefix = relay\n":                                  "prefix: want a key prefix starting with /",
		"tls_cert = /etc/c.pem\n":                           path + ":4: [store] tls_cert and tls_key go together",
		"username = edge\n":                                 path + ":4: [store] username and password_file go together",
		"etcd_endpoints = unix:///run/etcd.sock\nbogus = 1": "unknown key \"bogus\" in [store]",
	} {
		if _, err := load(store); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v; want %q", store, err, want)
		}
	}
	for _, ok := range []string{"http://127.0.0.1:2379", "http://localhost:2379", "http://[::1]:2379", "unix:///run/etcd/client.sock", "unixs://etcd:1"} {
		if _, err := load("etcd_endpoints = " + ok + "\n"); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}

	// StoreOf: no chatmail.ini needed, other sections ignored.
	os.WriteFile(path, []byte("[edge]\nchatmail_ini = /nonexistent\n[store]\netcd_endpoints = unix:///run/etcd.sock\nprefix = /relay1/\n"), 0o644)
	st, err := StoreOf(path)
	if err != nil || !slices.Equal(st.EtcdEndpoints, []string{"unix:///run/etcd.sock"}) || st.Prefix != "/relay1/" || st.Timeout != 5*time.Second {
		t.Fatalf("StoreOf: %+v, %v", st, err)
	}
	os.WriteFile(path, []byte("[store]\ntimeout = forever\n"), 0o644)
	if _, err := StoreOf(path); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), path+":2: timeout") {
		t.Fatalf("StoreOf of a bad file: %v", err)
	}
	if st, err := StoreOf(filepath.Join(dir, "missing.ini")); err != nil || st.Shared() {
		t.Fatalf("StoreOf of no file: %+v, %v", st, err)
	}

	// A change of store waits for a restart.
	a, _ := load("etcd_endpoints = unix:///run/a.sock\n")
	b, _ := load("etcd_endpoints = unix:///run/b.sock\n")
	if changed := a.Restart().Changed(b.Restart()); !slices.Equal(changed, []string{"[store]"}) {
		t.Fatalf("restart for %v, want [store]", changed)
	}
}
