package service

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/config"
	"chatmail-edge/dnszone"
	"chatmail-edge/ech"
	"chatmail-edge/internal/acmetest"
	"chatmail-edge/internal/etcdtest"

	acmeapi "github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// storeNodes are several edges for one relay on one shared store: a real
// etcd (etcdtest, Debian's etcd-server), one Pebble, and edges started as
// serve starts them, at once, each with its own state folder,
// configuration, listeners and METADATA file. Pebble validates at the
// first node's ports, as DNS would point it there: the others' orders are
// answered through the store.
type storeNodes struct {
	etcd     *etcdtest.Etcd
	pebble   *acmetest.Pebble
	domain   string
	names    []string // every name with a certificate
	envs     []*serveEnv
	edges    []*Service
	metadata []string // each node's METADATA file
}

func startStoreNodes(t *testing.T, n int, domain string, opts acmetest.Options) *storeNodes {
	t.Helper()
	nd := &storeNodes{
		etcd: etcdtest.Start(t, etcdtest.Options{}), pebble: acmetest.Start(t, opts), domain: domain,
		names: []string{domain, "mta-sts." + domain, "www." + domain, "front." + domain},
		edges: make([]*Service, n),
	}
	validating := make(chan struct{})
	for i := range n {
		md := filepath.Join(t.TempDir(), "ech-config-list")
		extra := fmt.Sprintf("[store]\netcd_endpoints = %s\ntimeout = 1s\nlock_ttl = 5s\n[ech]\nmetadata_file = %s\n[admin]\naddress = 127.0.0.1:0\n", nd.etcd.Endpoint, md)
		env := newServeEnvWith(t, nd.pebble, domain, "front."+domain, extra)
		if i == 0 {
			env.pebbleReady = func() { close(validating) }
		} else {
			env.elsewhere = true
			env.pebbleReady = func() {
				select {
				case <-validating:
				case <-time.After(time.Minute): // the first node failed: its error says why
				}
			}
		}
		nd.envs, nd.metadata = append(nd.envs, env), append(nd.metadata, md)
	}
	type started struct {
		i   int
		e   *Service
		err error
	}
	results := make(chan started, n)
	for i, env := range nd.envs {
		go func() {
			e, err := env.startErr(t)
			results <- started{i, e, err}
		}()
	}
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatalf("node %d: %v", r.i, r.err)
		}
		nd.edges[r.i] = r.e
	}
	return nd
}

// rotate is `chatmail-edge ech rotate` on the first node's machine: the
// store named by its configuration file, the key set there under the
// store's lock.
func (nd *storeNodes) rotate(t *testing.T) (old, cur []byte) {
	t.Helper()
	st, err := config.StoreOf(nd.envs[0].config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	shared, err := OpenStore(ctx, st, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer shared.Close()
	before, err := ech.LoadFrom(ctx, ech.InStorage(shared))
	if err != nil {
		t.Fatal(err)
	}
	_, after, err := ech.RotateLikeIn(ctx, ech.InStorage(shared), "", time.Now())
	if err != nil {
		t.Fatalf("ech rotate: %v", err)
	}
	return before.ConfigList(), after.ConfigList()
}

// converged says why not every node accepts ECH with both config lists
// and publishes cur alike: origin-svcb byte for byte, autoconfig and the
// METADATA file.
func (nd *storeNodes) converged(old, cur []byte) error {
	want := base64.StdEncoding.EncodeToString(cur)
	var first []byte
	for i, e := range nd.edges {
		for which, list := range map[string][]byte{"the old config": old, "the new config": cur} {
			if _, err := e.dialECHWith(nd.domain, list, nd.pebble.Roots()); err != nil {
				return fmt.Errorf("node %d, a client with %s: %w", i, which, err)
			}
		}
		svcb, err := e.getECH(nd.domain, "/.well-known/origin-svcb", cur, nd.pebble.Roots())
		if err != nil {
			return fmt.Errorf("node %d: %w", i, err)
		}
		if !bytes.Contains(svcb, []byte(want)) {
			return fmt.Errorf("node %d publishes %s in origin-svcb", i, svcb)
		}
		if i == 0 {
			first = svcb
		} else if !bytes.Equal(svcb, first) {
			return fmt.Errorf("node %d's origin-svcb differs from node 0's:\n%s\n%s", i, svcb, first)
		}
		if auto, err := e.getECH(nd.domain, "/.well-known/autoconfig/mail/config-v1.1.xml", cur, nd.pebble.Roots()); err != nil || !bytes.Contains(auto, []byte(want)) {
			return fmt.Errorf("node %d's autoconfig lacks the new config (%v)", i, err)
		}
		if md, err := os.ReadFile(nd.metadata[i]); err != nil || strings.TrimSpace(string(md)) != want {
			return fmt.Errorf("node %d's METADATA file holds %q (%v)", i, md, err)
		}
	}
	return nil
}

// getECH fetches https://host/path from the node with ECH, as a client
// holding the config list does.
func (e *Service) getECH(host, path string, configList []byte, roots *x509.CertPool) ([]byte, error) {
	addr := e.edge.Addr("https").String()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: roots, EncryptedClientHelloConfigList: configList},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + host + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK || !resp.TLS.ECHAccepted {
		return nil, fmt.Errorf("GET https://%s%s: %s, ECH %v (%v)", host, path, resp.Status, resp.TLS.ECHAccepted, err)
	}
	return body, nil
}

// metrics is the node's /metrics on its admin listener.
func (e *Service) metrics() (string, error) {
	resp, err := http.Get("http://" + e.adminLn.Addr().String() + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return string(b), err
}

// storeShown says why not every node's public status page and metrics
// show the store as up (or down).
func (nd *storeNodes) storeShown(up bool, list []byte) error {
	for i := range nd.edges {
		if err := nd.storeShownAt(i, up, list); err != nil {
			return err
		}
	}
	return nil
}

func (nd *storeNodes) storeShownAt(i int, up bool, list []byte) error {
	e := nd.edges[i]
	page, err := e.getECH(nd.domain, "/status", list, nd.pebble.Roots())
	if err != nil {
		return err
	}
	state, metric := "reachable", "chatmail_edge_store_up 1\n"
	if !up {
		state, metric = "unreachable", "chatmail_edge_store_up 0\n"
	}
	section := string(page)
	if at := strings.Index(section, `<section id="store">`); at >= 0 {
		section = section[at:]
	} else {
		return fmt.Errorf("node %d's status page has no store section", i)
	}
	if !strings.Contains(section, ">"+state+"</span>") {
		return fmt.Errorf("node %d's status page does not say the store is %s", i, state)
	}
	if strings.Contains(string(page), nd.etcd.Endpoint) {
		return fmt.Errorf("node %d's public status page shows the store's endpoint", i)
	}
	m, err := e.metrics()
	if err != nil {
		return err
	}
	if !strings.Contains(m, metric) || strings.Contains(m, "chatmail_edge_store_unreachable_since_timestamp_seconds") == up {
		return fmt.Errorf("node %d's metrics: want %q, and the unreachable-since gauge only while down", i, metric)
	}
	return nil
}

// accountURL is the relay's ACME account, as the nodes share it in the
// store.
func (nd *storeNodes) accountURL(t *testing.T) string {
	t.Helper()
	e := nd.edges[0]
	cfg := e.startSettings.ACME()
	cfg.Storage = e.cfg.Shared
	m, err := acme.NewManager(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	url, err := m.AccountURL(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// Issue 20's acceptance, certificates: three nodes started at once on one
// store, with certificates that live seconds. Across the first start and
// the renewals each name is ordered once: the first order of a name
// obtains it and every later one replaces the one before (RFC 9773 §5), so
// no node ordered what another had; and every node serves the newest
// certificate of every name within a bound.
func TestStoreNodesOrderOncePerName(t *testing.T) {
	nd := startStoreNodes(t, 3, "nodes.test", acmetest.Options{Validity: 12 * time.Second})
	account := nd.accountURL(t)
	acmetest.WaitFor(t, 60*time.Second, "a renewal of every name", func() error {
		for _, name := range nd.names {
			if orders, certs := nd.pebble.OrdersFor(account, name); len(orders) < 2 || certs[len(certs)-1] == nil {
				return fmt.Errorf("%s: %d orders", name, len(orders))
			}
		}
		return nil
	})
	acmetest.WaitFor(t, 10*time.Second, "every node serving the newest certificates", func() error {
		for _, name := range nd.names {
			_, certs := nd.pebble.OrdersFor(account, name)
			newest := certs[len(certs)-1]
			for i, e := range nd.edges {
				cs, err := e.dialECH(name, nd.pebble.Roots())
				if err != nil {
					return err
				}
				if newest == nil || !cs.PeerCertificates[0].Equal(newest) {
					return fmt.Errorf("node %d serves %s an older certificate", i, name)
				}
			}
		}
		return nil
	})
	for _, e := range nd.edges {
		e.Shutdown()
	}
	for _, name := range nd.names {
		orders, certs := nd.pebble.OrdersFor(account, name)
		for i, o := range orders {
			want := ""
			if i > 0 && certs[i-1] != nil {
				var err error
				if want, err = acmeapi.ARIUniqueIdentifier(certs[i-1]); err != nil {
					t.Fatal(err)
				}
			}
			if o.Replaces != want {
				t.Fatalf("%s: order %d of %d replaces %q, want %q: a node ordered what another had", name, i+1, len(orders), o.Replaces, want)
			}
		}
	}
	if orders := nd.pebble.Orders(account); len(orders) == 0 {
		t.Fatal("no orders at all")
	}
}

// Issue 20's acceptance, ECH: the three nodes share one key set from the
// start (published alike), and `ech rotate` on one node's machine (the
// store named by its configuration, the key set there) reaches every node
// within a bound, sooner than the 30 s check (the store's watch): each
// accepts the new and the old config and publishes the same list in
// origin-svcb, autoconfig and the METADATA file, and `chatmail-edge dns`
// prints it.
func TestStoreNodesShareECHRotation(t *testing.T) {
	nd := startStoreNodes(t, 3, "ech-nodes.test", acmetest.Options{})
	first := nd.edges[0].echKeys.Load().ConfigList()
	acmetest.WaitFor(t, 20*time.Second, "one key set on every node", func() error { return nd.converged(first, first) })

	old, cur := nd.rotate(t)
	if !bytes.Equal(old, first) || bytes.Equal(cur, old) {
		t.Fatal("the rotation did not start from the nodes' key set")
	}
	acmetest.WaitFor(t, 20*time.Second, "the rotation on every node", func() error { return nd.converged(old, cur) })

	// `chatmail-edge dns` of any node's machine prints the list in the store.
	var out bytes.Buffer
	zone, err := dnszone.Build(nd.edges[2].startSettings, dnszone.Options{Shared: nd.edges[2].cfg.Shared, IPv4: []net.IP{net.IPv4(192, 0, 2, 1)}, AccountURL: "https://ca.test/acct/1"})
	if err != nil {
		t.Fatal(err)
	}
	zone.Print(&out)
	if !strings.Contains(out.String(), `ech="`+base64.StdEncoding.EncodeToString(cur)+`"`) {
		t.Fatalf("dns prints another ECH config list:\n%s", out.String())
	}
}

// storeOutage is how long the store stays down in
// TestStoreNodesOutlastTheStore: a minute, as issue 20 asks ([store]
// timeout is 1s and the probe runs every 5s, so every request has failed
// many times over by then, certmagic's maintenance included).
const storeOutage = time.Minute

// Issue 20's acceptance, the store down: etcd killed for storeOutage. Every
// node keeps serving TLS with ECH with what it holds, and its status page
// and metrics say the store is unreachable; a node restarted meanwhile
// starts from its copy of the store. etcd started again on its data
// folder, every node says so, and a rotation right after the return
// reaches them all.
func TestStoreNodesOutlastTheStore(t *testing.T) {
	nd := startStoreNodes(t, 3, "outage.test", acmetest.Options{})
	for _, e := range nd.edges {
		nd.envs[0].waitIssued(t, e) // every name: what the nodes hold when the store goes
	}
	list := nd.edges[0].echKeys.Load().ConfigList()
	acmetest.WaitFor(t, 20*time.Second, "one key set and the store up on every node", func() error {
		if err := nd.converged(list, list); err != nil {
			return err
		}
		return nd.storeShown(true, list)
	})

	down := time.Now()
	nd.etcd.Stop()
	acmetest.WaitFor(t, 20*time.Second, "every node saying the store is unreachable", func() error { return nd.storeShown(false, list) })
	metrics, err := nd.edges[0].metrics()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := os.ReadFile("../docs/prometheus-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range regexp.MustCompile(`chatmail_edge_store_[a-z_]+`).FindAllString(string(rules), -1) {
		if !regexp.MustCompile(`(?m)^` + name + `[{ ]`).MatchString(metrics) {
			t.Errorf("the alert rules use %s, which /metrics does not export while the store is down", name)
		}
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for time.Since(down) < storeOutage {
		for i, e := range nd.edges {
			for _, name := range nd.names {
				if _, err := e.dialECH(name, nd.pebble.Roots()); err != nil {
					t.Fatalf("node %d while the store is down, %s: %v", i, name, err)
				}
			}
			if _, err := e.getECH(nd.domain, "/.well-known/origin-svcb", list, nd.pebble.Roots()); err != nil {
				t.Fatalf("node %d while the store is down: %v", i, err)
			}
		}
		<-tick.C
	}
	// A node stopped while the store is down stops (it waits for no
	// request to the store beyond its timeout), and starts again from its
	// copy of the store: the same certificates and ECH keys, and it says
	// the store is unreachable.
	nd.edges[2].Shutdown()
	restarted, err := nd.envs[2].startErr(t)
	if err != nil {
		t.Fatalf("node 2 restarted while the store is down: %v", err)
	}
	nd.edges[2] = restarted
	for _, name := range nd.names {
		if _, err := restarted.dialECH(name, nd.pebble.Roots()); err != nil {
			t.Fatalf("node 2 restarted while the store is down, %s: %v", name, err)
		}
	}
	if got := restarted.echKeys.Load().ConfigList(); !bytes.Equal(got, list) {
		t.Fatal("node 2 restarted with other ECH keys")
	}
	if err := nd.storeShown(false, list); err != nil {
		t.Fatal(err)
	}

	nd.etcd.Start()
	acmetest.WaitFor(t, 30*time.Second, "every node saying the store is back", func() error { return nd.storeShown(true, list) })
	old, cur := nd.rotate(t)
	acmetest.WaitFor(t, 30*time.Second, "the rotation after the return on every node", func() error { return nd.converged(old, cur) })
}

// A node that starts while the store does not answer, with no copy of it
// from an earlier run, fails at once and says which store.
func TestStoreUnreachableAtStart(t *testing.T) {
	endpoint := "unix://" + filepath.Join(t.TempDir(), "no-etcd:1")
	env := newServeEnv(t, "lonely.test", "front.lonely.test", acmetest.Options{}, "[store]\netcd_endpoints = "+endpoint+"\ntimeout = 500ms\n")
	_, err := env.startErr(t)
	if err == nil || !strings.Contains(err.Error(), endpoint) || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("start without the store: %v; want an error naming %s", err, endpoint)
	}
	if errors.Is(err, config.ErrConfig) || !strings.Contains(err.Error(), "holds no copy") {
		t.Fatalf("start without the store: %v; want no configuration error, and the copy named", err)
	}
}
