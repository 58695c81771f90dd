//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/ech"
	"chatmail-edge/internal/metadatatest"
	"chatmail-edge/mail"
	"chatmail-edge/metadata"

	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/zap/zaptest"
)

// metadataRelay is a relay whose Dovecot has IMAP METADATA as chatmail
// configures it, pointed at the edge's metadata proxy as `install --mode
// full` points it, with a stand-in of chatmail's metadata service behind
// the proxy and the edge's ECH keys in a state folder.
type metadataRelay struct {
	*relay
	chatmail *metadatatest.Service
	proxy    *metadata.Proxy
	echDir   string
	echFile  string
}

// chatmailMetadataConf is what chatmail's dovecot.conf.j2 sets for METADATA
// (mail_attribute_dict, protocol imap's imap_metadata); proxyLine is what
// the edge's drop-in, included at the end of dovecot.conf, sets after it.
const chatmailMetadataConf = `
# chatmail's dovecot.conf.j2: METADATA to chatmail-metadata.
mail_attribute_dict = proxy:%s:metadata
protocol imap {
  imap_metadata = yes
}
# The edge's drop-in (conf.d/90-chatmail-edge.conf, included last).
%s
`

func startMetadataRelay(t *testing.T) *metadataRelay {
	t.Helper()
	r := &metadataRelay{relay: startRelay(t, mail.ModeProxy)} // full mode's backends
	dir := daemonDir(t)
	r.chatmail = metadatatest.Start(t, filepath.Join(dir, "chatmail-metadata.sock"))
	r.echDir, r.echFile = filepath.Join(dir, "ech"), filepath.Join(dir, "run", "ech-config-list")

	// The proxy runs as Dovecot's mail user would reach it on a relay:
	// its socket belongs to that user, mode 0660.
	socket := filepath.Join(dir, "edge-metadata.sock")
	p, err := metadata.New(metadata.Config{Upstream: r.chatmail.Socket, ECHFile: r.echFile}, zaptest.NewLogger(t).Named("metadata"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := metadata.Listen(socket, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := mailOwner(t)
	if err := os.Chown(socket, uid, gid); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-served; err != nil {
			t.Errorf("metadata proxy: %v", err)
		}
	})
	r.proxy = p

	r.dovecot.stop(t)
	conf, err := os.ReadFile(r.dovecot.conf)
	if err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf(chatmailMetadataConf, r.chatmail.Socket, metadata.DovecotAttributeDict(socket))
	writeFile(t, r.dovecot.conf, string(conf)+extra, 0o644)
	// The later setting wins (what uninstall relies on: removing the
	// drop-in puts chatmail's back).
	out, err := exec.Command("doveconf", "-c", r.dovecot.conf, "-h", "mail_attribute_dict").CombinedOutput()
	if got := strings.TrimSpace(string(out)); err != nil || got != "proxy:"+socket+":metadata" {
		t.Fatalf("doveconf -h mail_attribute_dict: %q, %v", got, err)
	}
	r.dovecot.start(t)
	return r
}

// useKeys serves set on the edge and publishes it, as the edge's instance
// does (instance.setECHKeys: SetECHKeys, then publishECHConfig, which
// calls metadata.PublishECHConfigList).
func (r *metadataRelay) useKeys(t *testing.T, set *ech.KeySet) {
	t.Helper()
	r.edge.SetECHKeys(set.TLSKeys(), set.Current().ConfigID())
	if _, err := metadata.PublishECHConfigList(r.echFile, set.ConfigList()); err != nil {
		t.Fatal(err)
	}
}

// echShow is what `chatmail-edge ech show --format base64` prints for the
// state folder (cmd_ech.go: LoadECHKeys, then Base64).
func (r *metadataRelay) echShow(t *testing.T) string {
	t.Helper()
	set, err := ech.Load(r.echDir)
	if err != nil {
		t.Fatal(err)
	}
	return set.Base64()
}

func getMetadata(t *testing.T, c *imapclient.Client, mailbox string, entries ...string) map[string]string {
	t.Helper()
	data, err := c.GetMetadata(mailbox, entries, nil).Wait()
	if err != nil {
		t.Fatalf("GETMETADATA %q %v: %v", mailbox, entries, err)
	}
	got := map[string]string{}
	for k, v := range data.Entries {
		if v != nil {
			got[k] = string(*v)
		}
	}
	return got
}

const irohEntry = "/shared/vendor/deltachat/irohrelay"

// TestMetadataThroughDovecot: GETMETADATA "" of the ECH entry through
// Dovecot, reached through the edge on 993 and on 443 with ECH, equals `ech
// show`, and follows `ech rotate`; chatmail's service (a stand-in) still
// answers its entries and stores a push token set by SETMETADATA; with the
// edge stopped, Dovecot still answers both; with chatmail's service down,
// the ECH entry still answers.
func TestMetadataThroughDovecot(t *testing.T) {
	r := startMetadataRelay(t)
	dumpOnFailure(t, r.dovecot.log)
	now := time.Now()
	set, _, err := ech.Ensure(r.echDir, domain, ech.MaxNameLength(domain), now)
	if err != nil {
		t.Fatal(err)
	}
	r.useKeys(t, set)
	r.echList = set.ConfigList()
	first := r.echShow(t)

	for _, rt := range []route{read993, read443} {
		c := r.login(t, rt, r.alice, nil)
		got := getMetadata(t, c, "", metadata.ECHEntry, irohEntry)
		if got[metadata.ECHEntry] != first || got[irohEntry] != metadatatest.IrohRelay {
			t.Fatalf("%s: GETMETADATA gave %q; want the ECH entry %q (ech show) and iroh's %q", rt.name, got, first, metadatatest.IrohRelay)
		}
	}
	// Dovecot's key layout, as the proxy matches it; the ECH lookup went
	// to the proxy alone.
	lookups := r.chatmail.Lines('L')
	if len(lookups) == 0 || !strings.HasPrefix(lookups[0], "Lshared/") || !strings.Contains(lookups[0], "/vendor/vendor.dovecot/pvt/server/vendor/deltachat/irohrelay\t"+r.alice.addr) {
		t.Fatalf("chatmail's service got lookups %q", lookups)
	}
	for _, l := range lookups {
		if strings.Contains(l, "deltachat/ech") {
			t.Fatalf("the ECH lookup reached chatmail's service: %q", l)
		}
	}

	// A push token, as Delta Chat sets it (SETMETADATA INBOX
	// /private/devicetoken), reaches chatmail's service.
	c := r.login(t, read443, r.alice, nil)
	token := "token-" + randomToken()
	if err := c.SetMetadata("INBOX", map[string]*[]byte{"/private/devicetoken": ptr([]byte(token))}).Wait(); err != nil {
		t.Fatalf("SETMETADATA: %v", err)
	}
	if got := r.chatmail.Tokens(r.alice.addr); len(got) != 1 || got[0] != token {
		t.Fatalf("chatmail's service stored %q, want %q", got, token)
	}
	if got := getMetadata(t, c, "INBOX", "/private/devicetoken"); got["/private/devicetoken"] != token {
		t.Fatalf("GETMETADATA INBOX /private/devicetoken: %q", got)
	}

	// `ech rotate`: the rotation code, then what the edge does when its
	// key watcher sees the new key. A client with the old config list
	// still connects (the old key decrypts) and reads the new one.
	_, rotated, err := ech.Rotate(r.echDir, domain, ech.MaxNameLength(domain), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	r.useKeys(t, rotated)
	second := r.echShow(t)
	if second == first {
		t.Fatal("ech rotate changed nothing")
	}
	for _, rt := range []route{read993, read443} {
		c := r.login(t, rt, r.bob, nil)
		if got := getMetadata(t, c, "", metadata.ECHEntry); got[metadata.ECHEntry] != second {
			t.Fatalf("%s after the rotation: %q, want %q", rt.name, got, second)
		}
	}

	// The edge's main process stopped: a client that reaches Dovecot
	// directly (here its PROXY listener, as on port 143 of a relay) gets
	// both entries, and a new push token is stored.
	r.edge.Shutdown()
	direct := r.dovecotDirect(t, r.bob)
	got := getMetadata(t, direct, "", metadata.ECHEntry, irohEntry)
	if got[metadata.ECHEntry] != second || got[irohEntry] != metadatatest.IrohRelay {
		t.Fatalf("with the edge stopped: %q", got)
	}
	token2 := "token-" + randomToken()
	if err := direct.SetMetadata("INBOX", map[string]*[]byte{"/private/devicetoken": ptr([]byte(token2))}).Wait(); err != nil {
		t.Fatalf("SETMETADATA with the edge stopped: %v", err)
	}
	if got := r.chatmail.Tokens(r.bob.addr); len(got) != 1 || got[0] != token2 {
		t.Fatalf("chatmail's service stored %q for bob", got)
	}

	// chatmail's service down: its entries fail as they do without the
	// proxy, the ECH entry answers.
	r.chatmail.Stop()
	if got := getMetadata(t, direct, "", metadata.ECHEntry); got[metadata.ECHEntry] != second {
		t.Fatalf("with chatmail's service down: %q", got)
	}
	if _, err := direct.GetMetadata("", []string{irohEntry}, nil).Wait(); err == nil {
		t.Fatal("iroh's entry answered with chatmail's service down")
	}
	r.chatmail.Restart(t)
	if got := getMetadata(t, direct, "", irohEntry); got[irohEntry] != metadatatest.IrohRelay {
		t.Fatalf("after chatmail's service is back: %q", got)
	}
}

// dovecotDirect logs in to Dovecot without the edge: on its loopback PROXY
// listener, with the PROXY v2 header the edge would send.
func (r *metadataRelay) dovecotDirect(t *testing.T, acct account) *imapclient.Client {
	t.Helper()
	b, err := mail.NewBackend(mail.BackendConfig{Protocol: mail.IMAP, Mode: mail.ModeProxy, Address: r.dovecot.Backend})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), clientTimeout)
	defer cancel()
	conn, err := b.Dial(ctx, mail.ClientInfo{
		Source:      netip.AddrPortFrom(netip.MustParseAddr(clientIP.String()), 40000),
		Destination: netip.MustParseAddrPort("127.0.0.1:993"),
		TLSVersion:  0x0304, CipherSuite: 0x1301,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := imapclient.New(conn, nil)
	t.Cleanup(func() { c.Close() })
	if err := c.Login(acct.addr, acct.password).Wait(); err != nil {
		t.Fatalf("LOGIN directly at Dovecot: %v", err)
	}
	return c
}

func ptr[T any](v T) *T { return &v }
