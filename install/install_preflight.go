package install

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"chatmail-edge/config"
	"chatmail-edge/internal/ini"
	"chatmail-edge/mail"
	"chatmail-edge/systemd"
)

// preflight checks that install can go ahead and returns the settings the
// edge will run with, and the configuration file to write (nil when one
// exists and is kept).
func (in *installer) preflight(mode, configFile string) (*config.Settings, []byte, error) {
	if in.live && os.Geteuid() != 0 {
		return nil, nil, errors.New("install changes system services and files: run it as root")
	}
	var f *ini.File
	var write []byte
	data, err := os.ReadFile(in.path(configFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		write = installConfig(mode)
		f, err = ini.Parse(configFile, write)
	case err == nil:
		f, err = ini.Parse(in.path(configFile), data)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", config.ErrConfig, err)
	}
	// chatmail.ini first, for a clear "not a relay" before anything else.
	chatmailINI := config.DefaultChatmailINI
	if v := f.Get("edge", "chatmail_ini"); v != nil {
		chatmailINI = v.Value
	}
	if _, err := os.Stat(in.path(chatmailINI)); err != nil {
		return nil, nil, fmt.Errorf("this is not a chatmail relay: %s: %w (deploy the relay with cmdeploy first)", in.path(chatmailINI), err)
	}
	s, err := config.FromFile(f, in.root)
	if err != nil {
		return nil, nil, err
	}
	if write == nil {
		if err := configFitsMode(s, mode); err != nil {
			return nil, nil, fmt.Errorf("%w: %s is kept as it is, but %v", config.ErrConfig, in.path(configFile), err)
		}
		// The service user may not reload Dovecot and Postfix; the commands
		// would fail after every renewal. Not fatal: the path unit reloads.
		if len(s.Certs.Reload) > 0 {
			fmt.Fprintf(in.out, "  warn   %s keeps [acme] reload commands, which the unprivileged service cannot run;"+
				" %s reloads Dovecot and Postfix instead: set `reload =` in [acme]\n", in.path(configFile), systemd.ReloadPath)
		}
	}
	if mode == "full" && s.ECHMetadataFile != "" {
		// The METADATA proxy runs as the user of Dovecot's mail processes
		// and of chatmail-metadata's socket.
		if _, err := lookupUser(in.path("/etc/passwd"), metadataUser); err != nil {
			return nil, nil, fmt.Errorf("full mode runs the IMAP METADATA proxy as chatmail's user %s: %w (deploy the relay with cmdeploy first, or set `metadata_file =` in [ech] to go without it)", metadataUser, err)
		}
	}
	if in.live {
		if err := checkPorts(mode); err != nil {
			return nil, nil, err
		}
	}
	return s, write, nil
}

// metadataUser is chatmail's vmail (cmdeploy's ChatmailDeployer), the user
// of systemd.MetadataProxy.
const metadataUser = "vmail"

// installConfig is the configuration install writes when there is none.
func installConfig(mode string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by `chatmail-edge install --mode %s`, kept by later installs.\n", mode)
	b.WriteString("# `chatmail-edge config describe` documents every key; chatmail.ini has the rest.\n")
	if mode == "full" {
		fmt.Fprintf(&b, `
[edge]
# The edge takes 993 and 465 too, with ECH; Dovecot and Postfix listen on
# loopback for PROXY v2 (docs/PROXY.md).
imaps = :993
smtps = :465

[imap]
backend = proxy
address = %s

[smtp]
backend = proxy
address = %s
`, mail.ProxyIMAPAddress, mail.ProxySMTPAddress)
	}
	b.WriteString(`
[acme]
# The edge may not reload Postfix and Dovecot: chatmail-edge-mail-reload.path
# does when the exported certificate changes.
reload =
`)
	return []byte(b.String())
}

// configFitsMode tells whether a kept configuration file agrees with the
// mode: the ports the edge listens on must be the ones Dovecot and Postfix
// leave to it.
func configFitsMode(s *config.Settings, mode string) error {
	if mode == "full" {
		if s.IMAPS == "" || s.SMTPS == "" || s.IMAPBackend.Mode != "proxy" || s.SMTPBackend.Mode != "proxy" ||
			s.IMAPBackend.Address != mail.ProxyIMAPAddress || s.SMTPBackend.Address != mail.ProxySMTPAddress {
			return fmt.Errorf("full mode needs imaps and smtps set in [edge], and backend = proxy with address = %s in [imap] and %s in [smtp]",
				mail.ProxyIMAPAddress, mail.ProxySMTPAddress)
		}
		return nil
	}
	if s.IMAPS != "" || s.SMTPS != "" {
		return errors.New("it sets imaps or smtps, which Dovecot and Postfix keep in the default mode: use --mode full, or remove them")
	}
	return nil
}

// allowedHolders are the programs that may hold a port the edge takes:
// what it takes over from, and the edge itself (a second install).
var allowedHolders = map[int][]string{
	80:  {"nginx", "chatmail-edge"},
	443: {"nginx", "chatmail-edge"},
	993: {"dovecot", "imap-login", "chatmail-edge"},
	465: {"master", "smtpd", "chatmail-edge"},
}

// nodeHolders are the programs that may hold a node's ports: only the
// edge itself (a second install), since a node takes over from nothing.
var nodeHolders = map[int][]string{80: {"chatmail-edge"}, 443: {"chatmail-edge"}, 993: {"chatmail-edge"}, 465: {"chatmail-edge"}}

// checkPorts refuses to go on when another program holds a port the edge
// is going to take: stopping nginx would not free it.
func checkPorts(mode string) error {
	ports, allowed := []int{80, 443}, allowedHolders
	switch mode {
	case "full":
		ports = append(ports, 993, 465)
	case "node":
		ports, allowed = append(ports, 993, 465), nodeHolders
	}
	holders, err := portHolders(ports)
	if err != nil {
		return fmt.Errorf("find what listens on ports %v: %w", ports, err)
	}
	return portConflicts(ports, holders, allowed)
}

// portConflicts names the holders of ports that are not allowed there.
func portConflicts(ports []int, holders map[int][]holder, allowedHolders map[int][]string) error {
	var errs []error
	for _, port := range ports {
		allowed := allowedHolders[port]
		for _, h := range holders[port] {
			if slices.Contains(allowed, h.command) {
				continue
			}
			want := "nothing"
			if len(allowed) > 1 {
				want = strings.Join(allowed[:len(allowed)-1], " or ")
			}
			errs = append(errs, fmt.Errorf("port %d is held by %s (pid %d), where the edge expects %s: stop it first", port, h.command, h.pid, want))
		}
	}
	return errors.Join(errs...)
}

type holder struct {
	pid     int
	command string
}

// portHolders finds the processes that hold a listening TCP socket on each
// of ports: /proc/net/tcp{,6} name the sockets' inodes, /proc/PID/fd links
// them to processes, /proc/PID/comm names those (proc(5)).
func portHolders(ports []int) (map[int][]holder, error) {
	inodes := map[string]int{} // socket inode -> port
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if err := listeningSockets(table, ports, inodes); err != nil {
			return nil, err
		}
	}
	holders := map[int][]holder{}
	if len(inodes) == 0 {
		return holders, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue // gone, or not ours to read
		}
		seen := map[int]bool{}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			inode, ok := strings.CutPrefix(link, "socket:[")
			if err != nil || !ok {
				continue
			}
			if port, ok := inodes[strings.TrimSuffix(inode, "]")]; ok && !seen[port] {
				seen[port] = true
				comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
				holders[port] = append(holders[port], holder{pid, strings.TrimSpace(string(comm))})
			}
		}
	}
	return holders, nil
}

// listeningSockets adds the inodes of the LISTEN sockets (state 0A) on
// ports in one /proc/net/tcp table.
func listeningSockets(table string, ports []int, inodes map[string]int) error {
	f, err := os.Open(table)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no IPv6
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != "0A" {
			continue
		}
		_, hexPort, ok := strings.Cut(fields[1], ":")
		port, err := strconv.ParseUint(hexPort, 16, 16)
		if !ok || err != nil || !slices.Contains(ports, int(port)) {
			continue
		}
		inodes[fields[9]] = int(port)
	}
	return sc.Err()
}
