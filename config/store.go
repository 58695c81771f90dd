package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"strings"
	"time"

	"chatmail-edge/internal/ini"
)

// StoreSettings are the keys of [store]: the shared store of several edge
// nodes for one relay (docs/NODES.md).
type StoreSettings struct {
	EtcdEndpoints []string
	Prefix        string
	TLSCA         string
	TLSCert       string
	TLSKey        string
	Username      string
	PasswordFile  string
	Timeout       time.Duration
	LockTTL       time.Duration
}

// Shared tells whether a shared store is configured.
func (s StoreSettings) Shared() bool { return len(s.EtcdEndpoints) > 0 }

// storeOptions follow the web's in `config describe`.
var storeOptions = []option{
	{"store", "etcd_endpoints", "", "etcd client URLs (space-separated) of the store that several edge nodes for one relay share: the ACME account, the certificates with certmagic's locks, and the ECH keys live there instead of in state_dir, so one node orders, renews or rotates and every node serves the result (docs/NODES.md). https://HOST:2379 (with tls_ca), http:// on loopback only (the store holds private keys), or unix:// and unixs:// sockets. The store must be reachable by the nodes alone: TLS client certificates (tls_cert) or etcd users (username). Each node keeps a copy of what it read in store-copy/ in state_dir, to start from while the store does not answer. Empty: no shared store, one node keeps everything in state_dir. Needs a restart.",
		func(s *Settings, v string) error {
			eps := strings.Fields(v)
			for _, ep := range eps {
				if err := checkEtcdEndpoint(ep); err != nil {
					return err
				}
			}
			s.Store.EtcdEndpoints = eps
			return nil
		}},
	{"store", "prefix", "/chatmail-edge/", "Where this relay's keys live in etcd. Relays that share one etcd need prefixes of their own; the nodes of one relay the same.",
		func(s *Settings, v string) error {
			if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, " \t\x00") {
				return fmt.Errorf("want a key prefix starting with / (like /chatmail-edge/), got %q", v)
			}
			s.Store.Prefix = v
			return nil
		}},
	{"store", "tls_ca", "", "PEM file with the CA that signed etcd's server certificate (etcd --cert-file); empty: the system's roots.",
		str(func(s *Settings) *string { return &s.Store.TLSCA })},
	{"store", "tls_cert", "", "This node's client certificate (PEM) for etcd's --client-cert-auth.",
		str(func(s *Settings) *string { return &s.Store.TLSCert })},
	{"store", "tls_key", "", "Key of tls_cert (PEM). Only its owner may read it (0600): the start fails otherwise.",
		str(func(s *Settings) *string { return &s.Store.TLSKey })},
	{"store", "username", "", "etcd user the node logs in as (etcdctl user add, auth enable), with password_file.",
		str(func(s *Settings) *string { return &s.Store.Username })},
	{"store", "password_file", "", "File whose first line is username's password. Only its owner may read it (0600).",
		str(func(s *Settings) *string { return &s.Store.PasswordFile })},
	{"store", "timeout", "5s", "Longest wait for one request to the store. A store that does not answer counts as unreachable (status page, metrics); the nodes go on serving the certificates and ECH keys they hold, and retry.",
		durationIn(100*time.Millisecond, time.Minute, func(s *Settings) *time.Duration { return &s.Store.Timeout })},
	{"store", "lock_ttl", "30s", "How long a lock (an order or renewal, an ECH rotation) of a node that stopped reaching the store, by a crash or a cut, stays before another node may take it.",
		durationIn(5*time.Second, 10*time.Minute, func(s *Settings) *time.Duration { return &s.Store.LockTTL })},
}

// checkEtcdEndpoint accepts an etcd client URL: https, unix and unixs
// anywhere, http only to loopback (it would carry private keys and
// passwords in the clear).
func checkEtcdEndpoint(ep string) error {
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" && u.Path == "" {
		return fmt.Errorf("want etcd client URLs like https://etcd.example.org:2379, got %q", ep)
	}
	switch u.Scheme {
	case "https", "unix", "unixs":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("%q: plain http to another machine would carry the store's private keys in the clear; use https:// (etcd --cert-file) with tls_ca", ep)
	}
	return fmt.Errorf("want etcd client URLs with https://, http:// (loopback), unix:// or unixs://, got %q", ep)
}

// checkStore checks what involves more than one key of [store].
func (s *Settings) checkStore() error {
	st := s.Store
	for _, p := range []struct {
		a, b       string
		setA, setB bool
	}{
		{"tls_cert", "tls_key", st.TLSCert != "", st.TLSKey != ""},
		{"username", "password_file", st.Username != "", st.PasswordFile != ""},
	} {
		if p.setA != p.setB {
			key := p.a
			if p.setB {
				key = p.b
			}
			return fmt.Errorf("%s: [store] %s and %s go together: set both or neither", s.where("store."+key), p.a, p.b)
		}
	}
	return nil
}

// StoreOf reads just [store] from the edge's configuration file at path,
// so that the `ech` commands find the shared store without chatmail.ini. A
// missing file is no store.
func StoreOf(path string) (StoreSettings, error) {
	s := &Settings{}
	setDefaults(s, storeOptions)
	f, err := ini.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s.Store, nil
	}
	if err != nil {
		return StoreSettings{}, fmt.Errorf("%w: read %s: %v", ErrConfig, path, err)
	}
	only := &ini.File{Path: f.Path}
	if sec := f.Section("store"); sec != nil {
		only.Sections = []*ini.Section{sec}
	}
	if err := applyFile(s, only); err != nil {
		return StoreSettings{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := s.checkStore(); err != nil {
		return StoreSettings{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return s.Store, nil
}
