package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/etcdtest"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"
)

// testCA signs certificates for the test's etcd and its clients.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newTestCA(t *testing.T, dir string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test etcd CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, file: filepath.Join(dir, "ca.pem")}
	os.WriteFile(ca.file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return ca
}

// issue writes a certificate for name (server or client) and its key
// (0600) and returns their files.
func (ca *testCA) issue(t *testing.T, dir, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile
}

// etcd serving TLS and asking for client certificates: a node with its
// certificate uses the store, one without is refused.
func TestStoreOverTLSWithClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir)
	// The client checks a unix socket's server certificate for the
	// socket's file name up to the colon (etcd's endpoint rules).
	serverCert, serverKey := ca.issue(t, dir, "client", x509.ExtKeyUsageServerAuth)
	nodeCert, nodeKey := ca.issue(t, dir, "node1", x509.ExtKeyUsageClientAuth)
	helperCert, helperKey := ca.issue(t, dir, "test", x509.ExtKeyUsageClientAuth)
	helper, err := clientTLS(Config{CAFile: ca.file, CertFile: helperCert, KeyFile: helperKey})
	if err != nil {
		t.Fatal(err)
	}
	e := etcdtest.Start(t, etcdtest.Options{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: ca.file, ClientTLS: helper})
	if !strings.HasPrefix(e.Endpoint, "unixs://") {
		t.Fatalf("endpoint %s", e.Endpoint)
	}
	s := open(t, e, Config{CAFile: ca.file, CertFile: nodeCert, KeyFile: nodeKey})
	ctx := context.Background()
	if err := s.Store(ctx, "k", []byte("over TLS")); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Load(ctx, "k"); err != nil || string(v) != "over TLS" {
		t.Fatalf("load: %q, %v", v, err)
	}
	_, err = Open(ctx, Config{Endpoints: []string{e.Endpoint}, CAFile: ca.file, Timeout: time.Second}, zaptest.NewLogger(t))
	if err == nil {
		t.Fatal("a node without a client certificate was let in")
	}
}

// etcd with its users on: a node with the edge's user and password uses
// the store, one with a wrong password is refused.
func TestStoreWithEtcdUsers(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	ctx := context.Background()
	admin, err := e.Client(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "root-secret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "edge"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "edge", "/test/", clientv3.GetPrefixRangeEnd("/test/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "edge", "edge-secret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "edge", "edge"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("set up etcd's users: %v", err)
		}
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good"), filepath.Join(dir, "bad")
	os.WriteFile(good, []byte("edge-secret\n"), 0o600)
	os.WriteFile(bad, []byte("guess\n"), 0o600)

	s := open(t, e, Config{Username: "edge", PasswordFile: good})
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := s.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if err := s.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, Config{Endpoints: []string{e.Endpoint}, Prefix: "/test/", Username: "edge", PasswordFile: bad, Timeout: time.Second}, zaptest.NewLogger(t)); err == nil {
		t.Fatal("a wrong password was let in")
	}
	// The edge's user has its prefix only.
	other, err := Open(ctx, Config{Endpoints: []string{e.Endpoint}, Prefix: "/other/", Username: "edge", PasswordFile: good, Timeout: time.Second}, zaptest.NewLogger(t))
	if err == nil {
		other.Close()
		t.Fatal("the edge's user reached a prefix not granted to it")
	}
}
