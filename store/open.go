package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"chatmail-edge/internal/filelimit"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Config names the store and how to reach it.
type Config struct {
	// Endpoints are etcd's client URLs: https://host:2379 (http:// only on
	// loopback), or unix:// and unixs:// sockets.
	Endpoints []string
	// Prefix is where this relay's keys live in etcd; several relays can
	// share one etcd with different prefixes. "" is DefaultPrefix.
	Prefix string

	// CAFile verifies etcd's certificate ("" is the system's roots);
	// CertFile and KeyFile are this node's client certificate for etcd's
	// --client-cert-auth.
	CAFile, CertFile, KeyFile string
	// Username and the file with its password (first line), for etcd's
	// own users (etcdctl auth enable).
	Username, PasswordFile string

	// Timeout bounds every request; zero is DefaultTimeout.
	Timeout time.Duration
	// LockTTL is how long a lock of a node that stopped reaching the store
	// (a crash, a partition) stays; zero is DefaultLockTTL.
	LockTTL time.Duration
	// ProbeInterval is how often the store is asked whether it answers,
	// for the health; zero is DefaultProbeInterval. Tests shorten it.
	ProbeInterval time.Duration
}

// Defaults of Config.
const (
	DefaultPrefix        = "/chatmail-edge/"
	DefaultTimeout       = 5 * time.Second
	DefaultLockTTL       = 30 * time.Second
	DefaultProbeInterval = 5 * time.Second
)

// reconnectBackoff is the client's wait between attempts to reach an
// endpoint that is down: at most a few seconds, so that a store that
// returns is used again at once (gRPC's default waits up to two minutes).
var reconnectBackoff = backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second}

// maxResponse bounds one response from etcd (a List page of keys, a
// value with its header).
const maxResponse = 4 << 20

// Open connects to the store and asks it once: a store that does not
// answer within Timeout is an error naming the endpoints (a node that
// starts with nothing at hand has nothing to serve without it). Close it
// when done.
func Open(ctx context.Context, cfg Config, log *zap.Logger) (*Store, error) {
	s, err := Dial(cfg, log)
	if err != nil {
		return nil, err
	}
	if err := s.Check(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Check asks the store whether it answers; the error names the endpoints.
func (s *Store) Check(ctx context.Context) error {
	if err := s.probe(ctx); err != nil {
		return fmt.Errorf("shared store: etcd at %s does not answer: %w", strings.Join(s.cfg.Endpoints, ", "), err)
	}
	return nil
}

// Dial sets up the connection to the store without asking it anything: it
// fails only for a configuration that cannot work (files, settings). A
// store that does not answer yet shows in Health. Close it when done.
func Dial(cfg Config, log *zap.Logger) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("shared store: no etcd endpoints")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = DefaultLockTTL
	}
	if cfg.LockTTL < time.Second {
		return nil, fmt.Errorf("shared store: lock TTL %v is under a second", cfg.LockTTL)
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	tlsConfig, err := clientTLS(cfg)
	if err != nil {
		return nil, fmt.Errorf("shared store: %w", err)
	}
	password := ""
	if cfg.PasswordFile != "" {
		if password, err = readSecret(cfg.PasswordFile); err != nil {
			return nil, fmt.Errorf("shared store: password: %w", err)
		}
		password, _, _ = strings.Cut(password, "\n")
		password = strings.TrimRight(password, "\r")
	}
	etcdLog := log.Named("etcd")
	if log.Core().Enabled(zapcore.InfoLevel) {
		// The client logs every retry while the store is down; the health
		// logs the change once.
		etcdLog = etcdLog.WithOptions(zap.IncreaseLevel(zapcore.ErrorLevel))
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.Timeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: cfg.Timeout,
		TLS:                  tlsConfig,
		Username:             cfg.Username,
		Password:             password,
		MaxCallRecvMsgSize:   maxResponse,
		MaxCallSendMsgSize:   MaxValue + 4096,
		Logger:               etcdLog,
		DialOptions:          []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{Backoff: reconnectBackoff, MinConnectTimeout: cfg.Timeout})},
	})
	if err != nil {
		return nil, fmt.Errorf("shared store: connect to etcd at %s: %w", strings.Join(cfg.Endpoints, ", "), err)
	}
	run, cancel := context.WithCancel(context.Background())
	s := &Store{
		cfg: cfg, client: client, log: log, prefix: strings.TrimSuffix(cfg.Prefix, "/") + "/",
		run: run, cancel: cancel, held: map[string]*concurrency.Session{},
	}
	s.health = newHealth(cfg.Endpoints, log)
	s.wg.Go(s.probeLoop)
	return s, nil
}

// clientTLS is the TLS configuration for etcd, nil for none: TLS when a CA
// or a client certificate is given, or an endpoint says https or unixs.
func clientTLS(cfg Config) (*tls.Config, error) {
	wantTLS := cfg.CAFile != "" || cfg.CertFile != ""
	for _, ep := range cfg.Endpoints {
		wantTLS = wantTLS || strings.HasPrefix(ep, "https://") || strings.HasPrefix(ep, "unixs://")
	}
	if !wantTLS {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pemBytes, err := filelimit.ReadFile(cfg.CAFile, filelimit.PEM)
		if err != nil {
			return nil, fmt.Errorf("etcd CA: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificate in it", cfg.CAFile)
		}
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("a client certificate needs both its certificate and its key file")
	}
	if cfg.CertFile != "" {
		certPEM, err := filelimit.ReadFile(cfg.CertFile, filelimit.PEM)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		keyPEM, err := readSecret(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client key: %w", err)
		}
		pair, err := tls.X509KeyPair(certPEM, []byte(keyPEM))
		if err != nil {
			return nil, fmt.Errorf("client certificate %s and key %s: %w", cfg.CertFile, cfg.KeyFile, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// secretPermBits are the permission bits a file with a secret must not
// have: group and others.
const secretPermBits = 0o077

// readSecret reads a key or password file, which only its owner may read.
func readSecret(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return "", err
	}
	if perm := info.Mode().Perm(); perm&secretPermBits != 0 {
		return "", fmt.Errorf("%s has mode %04o, open to group or others; chmod 600 it", path, perm)
	}
	b, err := filelimit.ReadAll(f, filelimit.Small)
	if err != nil {
		return "", err
	}
	return string(b), nil
}
