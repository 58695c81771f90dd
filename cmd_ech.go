package main

import (
	"fmt"
	"io"
	"path/filepath"
	"time"

	"chatmail-edge/edge"
	"chatmail-edge/internal/ini"
)

func cmdECH(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: want ech show, ech rotate or ech retire", errUsage)
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("ech "+sub, stderr, "ech "+sub+" [flags]")
	stateDir := fs.String("state", "", "state folder (default: state_dir of "+defaultConfigFile+", else /var/lib/chatmail-edge)")
	configFile := fs.String("config", defaultConfigFile, "the edge's configuration file, for state_dir")
	var format, domain, publicName *string
	var port *int
	var grace *time.Duration
	switch sub {
	case "show":
		format = fs.String("format", "base64", "base64 (the ECHConfigList, one line), pem (RFC 9934 key and config for other servers), dns (an HTTPS record line, RFC 9848) or json (ids, dates, current key)")
		domain = fs.String("domain", "", "owner name of the DNS record (default: the current key's public_name)")
		port = fs.Int("port", 443, "HTTPS port of the DNS record")
	case "rotate":
		publicName = fs.String("public-name", "", "public_name of the new key (default: that of the current key)")
	case "retire":
		grace = fs.Duration("grace", edge.DefaultECHRetireGrace, "drop keys superseded longer ago than this")
	default:
		return fmt.Errorf("%w: unknown subcommand ech %s", errUsage, sub)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if *stateDir == "" {
		*stateDir = stateDirFromConfig(*configFile)
	}
	dir := echDir(*stateDir)
	now := time.Now()

	switch sub {
	case "show":
		set, err := edge.LoadECHKeys(dir)
		if err != nil {
			return err
		}
		cur := set.Current()
		if cur == nil {
			return fmt.Errorf("no ECH keys in %s (the edge creates one when it starts)", dir)
		}
		return showECH(stdout, set, *format, *domain, *port, now)
	case "rotate":
		set, err := edge.LoadECHKeys(dir)
		if err != nil {
			return err
		}
		cur := set.Current()
		if cur == nil {
			return fmt.Errorf("no ECH keys in %s to rotate (the edge creates the first when it starts)", dir)
		}
		parsed := cur.Parsed()
		name := parsed.PublicName
		if *publicName != "" {
			name = *publicName
		}
		key, set, err := edge.RotateECHKey(dir, name, parsed.MaxNameLen, now)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added ECH key config_id %d (%s); %d keys now, older ones stay decrypt-only.\n", key.Parsed().ConfigID, filepath.Base(key.File), len(set.Keys))
		fmt.Fprintf(stdout, "A running edge picks it up within a minute (or at once with `systemctl reload chatmail-edge`).\nNew ECHConfigList: %s\n", set.Base64())
		return nil
	default: // retire
		removed, set, err := edge.RetireECHKeys(dir, *grace, now)
		if err != nil {
			return err
		}
		for _, k := range removed {
			fmt.Fprintf(stdout, "removed ECH key config_id %d (created %s)\n", k.Parsed().ConfigID, k.Created.Format(time.DateOnly))
		}
		fmt.Fprintf(stdout, "%d keys removed, %d kept.\n", len(removed), len(set.Keys))
		return nil
	}
}

func showECH(w io.Writer, set *edge.ECHKeySet, format, domain string, port int, now time.Time) error {
	switch format {
	case "base64":
		fmt.Fprintln(w, set.Base64())
	case "pem":
		b, err := set.PEM()
		if err != nil {
			return err
		}
		w.Write(b)
	case "dns":
		if domain == "" {
			domain = set.Current().Parsed().PublicName
		}
		fmt.Fprintln(w, edge.HTTPSRecord(domain, port, []string{"h2", "http/1.1"}, 3600, set.ConfigList()))
	case "json":
		b, err := set.JSON(now)
		if err != nil {
			return err
		}
		w.Write(b)
		fmt.Fprintln(w)
	default:
		return fmt.Errorf("%w: unknown format %q (want base64, pem, dns or json)", errUsage, format)
	}
	return nil
}

func echDir(stateDir string) string { return filepath.Join(stateDir, "ech") }

// stateDirFromConfig reads just state_dir from the edge's configuration
// file, so that `ech` commands work without chatmail.ini.
func stateDirFromConfig(path string) string {
	if f, err := ini.ReadFile(path); err == nil {
		if v := f.Get("edge", "state_dir"); v != nil && v.Value != "" {
			return v.Value
		}
	}
	return "/var/lib/chatmail-edge"
}
