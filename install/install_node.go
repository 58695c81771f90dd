package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"chatmail-edge/config"
	"chatmail-edge/internal/ini"
	"chatmail-edge/systemd"
)

// Node mode: an edge on a machine that is not the relay, in front of it
// (docs/NODES.md). There is nothing to take over: no nginx, acmetool,
// Postfix or Dovecot here. Install writes the edge's file with [node] and
// a chatmail.ini with the relay's mail_domain, the user, the state folder
// and the unit, starts the edge and lists what the relay, the firewalls and
// DNS need.

// nodeChatmailINI is a node's chatmail.ini: the relay's mail_domain (and
// what else of it the operator copies), where no chatmaild is installed.
const nodeChatmailINI = "/etc/chatmail-edge/chatmail.ini"

// NodeOptions are install --mode node's flags; an existing configuration
// file is kept, and the flags must then agree with it.
type NodeOptions struct {
	Relay      string // [node] relay: the relay's host name or address
	Connect    string // [node] connect: tls (default) or proxy
	Name       string // [node] name
	RelayCA    string // [node] ca_file
	MailDomain string // mail_domain of the chatmail.ini to write
}

// ErrNodeFlags marks node flags given to another mode.
var ErrNodeFlags = errors.New("--relay, --connect, --node-name, --relay-ca and --mail-domain are for --mode node")

func (n NodeOptions) given() bool { return n != (NodeOptions{}) }

func (in *installer) installNode(rec *installRecord, configFile string, n NodeOptions) error {
	if rec.Mode != "" && rec.Mode != "node" {
		return fmt.Errorf("chatmail-edge is installed in %s mode: run `chatmail-edge uninstall` first to change to node mode", rec.Mode)
	}
	s, configData, chatmailData, err := in.nodePreflight(configFile, n)
	if err != nil {
		return err
	}
	rec.Mode = "node"
	fmt.Fprintf(in.out, "  ok     node of the relay %s (connect = %s) for %s, certificates: %s\n", s.Node.Relay, s.Node.Connect, s.MailDomain, s.CertMode())

	user, err := in.folders(configFile, s.StateDir)
	if err != nil {
		return err
	}
	restart := false
	for _, f := range []struct {
		path string
		data []byte
		sum  *string
	}{{s.ChatmailINI, chatmailData, &rec.ChatmailINI}, {configFile, configData, &rec.Config}} {
		changed, err := in.writeConfig(f.path, f.data, f.sum)
		if err != nil {
			return err
		}
		restart = restart || changed
	}
	if err := in.saveRecord(rec); err != nil {
		return err
	}
	binary, changed, err := in.installBinary()
	if err != nil {
		return err
	}
	restart = restart || changed
	units, err := systemd.Units(systemd.Params{Binary: binary, Config: configFile})
	if err != nil {
		return err
	}
	unitsChanged := false
	for _, u := range units {
		changed, err := in.writeFile(filepath.Join(unitDir, u.Name), u.Data, 0o644)
		if err != nil {
			return err
		}
		unitsChanged = unitsChanged || changed
	}
	if user.uid >= 0 {
		if err := in.chownTree(s.StateDir, user); err != nil {
			return err
		}
	}
	if err := in.startEdge([]string{systemd.Service}, unitsChanged, restart || unitsChanged, rec); err != nil {
		return err
	}
	return in.nodeSummary(s)
}

// nodePreflight checks that a node can be installed here and returns its
// settings and the files to write (nil for one that exists and is kept).
func (in *installer) nodePreflight(configFile string, n NodeOptions) (*config.Settings, []byte, []byte, error) {
	if in.live && os.Geteuid() != 0 {
		return nil, nil, nil, errors.New("install changes system services and files: run it as root")
	}
	if _, err := os.Stat(in.path(config.DefaultChatmailINI)); err == nil {
		return nil, nil, nil, fmt.Errorf("%s exists: this machine is a chatmail relay, and a node runs on another one (install --mode default or full here)", in.path(config.DefaultChatmailINI))
	}
	if n.Connect != "" && n.Connect != config.NodeConnectTLS && n.Connect != config.NodeConnectProxy {
		return nil, nil, nil, fmt.Errorf("%w: --connect %q: want %s or %s", ErrBadMode, n.Connect, config.NodeConnectTLS, config.NodeConnectProxy)
	}

	var f *ini.File
	var configData []byte
	data, err := os.ReadFile(in.path(configFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if n.Relay == "" {
			return nil, nil, nil, fmt.Errorf("%w: --mode node needs --relay HOST (the relay's name or address, not the mail domain)", ErrBadMode)
		}
		configData = nodeConfig(n)
		f, err = ini.Parse(configFile, configData)
	case err == nil:
		f, err = ini.Parse(in.path(configFile), data)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
	}
	chatmailPath := nodeChatmailINI
	if v := f.Get("edge", "chatmail_ini"); v != nil {
		chatmailPath = v.Value
	}
	var chatmailData []byte
	var cf *ini.File
	if existing, err := os.ReadFile(in.path(chatmailPath)); err == nil {
		cf, err = ini.Parse(in.path(chatmailPath), existing)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
		}
	} else {
		if n.MailDomain == "" {
			return nil, nil, nil, fmt.Errorf("%w: --mode node needs --mail-domain D (the relay's mail_domain): %s does not exist", ErrBadMode, chatmailPath)
		}
		chatmailData = []byte("# Written by `chatmail-edge install --mode node`: the relay's mail_domain.\n" +
			"# Copy max_message_size and disable_ipv6 here if the relay's chatmail.ini sets them.\n" +
			"[params]\nmail_domain = " + n.MailDomain + "\n")
		if cf, err = ini.Parse(chatmailPath, chatmailData); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
		}
	}
	s, err := config.FromFiles(f, cf)
	if err != nil {
		return nil, nil, nil, err
	}
	if configData == nil {
		if err := nodeFlagsAgree(s, n); err != nil {
			return nil, nil, nil, fmt.Errorf("%w: %s is kept as it is, but %v", config.ErrConfig, in.path(configFile), err)
		}
	}
	if n.MailDomain != "" && !strings.EqualFold(n.MailDomain, s.MailDomain) {
		return nil, nil, nil, fmt.Errorf("%w: %s is kept as it is, with mail_domain %s, not --mail-domain %s", config.ErrConfig, in.path(chatmailPath), s.MailDomain, n.MailDomain)
	}
	if in.live {
		if err := checkPorts("node"); err != nil {
			return nil, nil, nil, err
		}
	}
	return s, configData, chatmailData, nil
}

// nodeFlagsAgree tells whether a kept configuration file is a node's, and
// the one the flags ask for.
func nodeFlagsAgree(s *config.Settings, n NodeOptions) error {
	if !s.IsNode() {
		return errors.New("it has no [node] relay: it is a relay's (run `chatmail-edge uninstall`, or set [node] relay)")
	}
	if n.Relay != "" && !strings.EqualFold(strings.TrimSuffix(n.Relay, "."), s.Node.Relay) {
		return fmt.Errorf("it names the relay %s, not --relay %s", s.Node.Relay, n.Relay)
	}
	if n.Connect != "" && n.Connect != s.Node.Connect {
		return fmt.Errorf("it says connect = %s, not --connect %s", s.Node.Connect, n.Connect)
	}
	return nil
}

// nodeConfig is the edge's file install writes for a node.
func nodeConfig(n NodeOptions) []byte {
	var b strings.Builder
	b.WriteString("# Written by `chatmail-edge install --mode node`, kept by later installs.\n")
	b.WriteString("# `chatmail-edge config describe` documents every key; docs/NODES.md the relay's side.\n")
	fmt.Fprintf(&b, "\n[edge]\nchatmail_ini = %s\n", nodeChatmailINI)
	b.WriteString("\n[node]\n# IMAP, SMTP and HTTPS go on to the relay over TLS, its certificate\n# verified for the mail domain. A node listens on 443, 993 and 465.\n")
	fmt.Fprintf(&b, "relay = %s\n", n.Relay)
	connect := n.Connect
	if connect == "" {
		connect = config.NodeConnectTLS
	}
	fmt.Fprintf(&b, "connect = %s\n", connect)
	if n.Name != "" {
		fmt.Fprintf(&b, "name = %s\n", n.Name)
	}
	if n.RelayCA != "" {
		fmt.Fprintf(&b, "ca_file = %s\n", n.RelayCA)
	}
	return []byte(b.String())
}

// nodeSummary probes the node (live) and says what the relay, the
// firewalls and DNS need: install cannot do those from here.
func (in *installer) nodeSummary(s *config.Settings) error {
	switch {
	case in.changes == 0:
		fmt.Fprintf(in.out, "\nNothing to change: chatmail-edge is installed (node mode).\n")
	case in.dryRun:
		fmt.Fprintf(in.out, "\n%d steps to take.\n", in.changes)
	default:
		fmt.Fprintf(in.out, "\nInstalled (node mode): %d changes. Undo with `chatmail-edge uninstall`.\n", in.changes)
	}
	ok := true
	if in.live && !in.dryRun {
		fmt.Fprintf(in.out, "\nprobe %s through this node (and on to the relay) on 127.0.0.1:\n", s.MailDomain)
		var err error
		if ok, err = in.probe(s, "node"); err != nil {
			return err
		}
	}
	n := s.Node
	ports := func(addrs ...string) string {
		var out []string
		for _, a := range addrs {
			out = append(out, a[strings.LastIndexByte(a, ':')+1:])
		}
		return strings.Join(out, ", ")
	}
	fmt.Fprintf(in.out, "\nStill to do (docs/NODES.md):\n")
	fmt.Fprintf(in.out, "- Relay: add this node's addresses to [edge] exempt_networks in its chatmail-edge.ini and reload it:\n"+
		"  every session and request through this node comes from them, and the per-address limits would count all its clients as one.\n")
	if n.Connect == config.NodeConnectProxy {
		fmt.Fprintf(in.out, "- Relay: the Dovecot listener and the Postfix service for nodes (ports %s) of docs/NODES.md,\n"+
			"  with this node's addresses in haproxy_trusted_networks and as the only sources its firewall lets reach those ports.\n", ports(n.RelayIMAP(), n.RelaySMTP()))
	} else {
		fmt.Fprintf(in.out, "- Relay: in Postfix, add this node's addresses to smtpd_client_event_limit_exceptions: it counts all its clients as one.\n")
	}
	fmt.Fprintf(in.out, "- Firewall here: let in TCP 80, 443, 993 and 465; let out TCP %s to %s.\n", ports(n.RelayHTTPS(), n.RelayIMAP(), n.RelaySMTP()), n.Relay)
	fmt.Fprintf(in.out, "- Ports 25, 143 and 587 are not the edge's: forward them to the relay (DNAT, docs/NODES.md), since %s's MX is %s.\n", s.MailDomain, s.MailDomain)
	fmt.Fprintf(in.out, "- DNS: once the probe passes, add this node's public addresses to the A/AAAA records of %s.\n", s.MailDomain)
	fmt.Fprintf(in.out, "- Certificates and ECH keys: this node shares them with the relay only through a shared store (docs/NODES.md); without one it has its own.\n")
	if !ok {
		return errors.New("the node runs, but the probe failed (above); `chatmail-edge uninstall` undoes the install")
	}
	return nil
}
