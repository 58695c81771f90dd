package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"time"

	"chatmail-edge/config"
	"chatmail-edge/ech"
	"chatmail-edge/service"
)

// echCommandTimeout bounds an ech command on the shared store, where a
// rotation may wait for another node's lock on the key set.
const echCommandTimeout = 2 * time.Minute

func cmdECH(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: want ech show, ech rotate or ech retire", errUsage)
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("ech "+sub, stderr, "ech "+sub+" [flags]")
	stateDir := fs.String("state", "", "state folder (default: the shared store of [store] in "+config.DefaultFile+", else its state_dir, else /var/lib/chatmail-edge)")
	configFile := fs.String("config", config.DefaultFile, "the edge's configuration file, for [store] and state_dir")
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
		grace = fs.Duration("grace", ech.DefaultRetireGrace, "drop keys superseded longer ago than this")
	default:
		return fmt.Errorf("%w: unknown subcommand ech %s", errUsage, sub)
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	ctx, cancel := context.WithTimeout(context.Background(), echCommandTimeout)
	defer cancel()
	place := ech.InFolder(ech.Dir(*stateDir))
	if *stateDir == "" {
		place = ech.InFolder(ech.Dir(config.StateDirOf(*configFile)))
		st, err := config.StoreOf(*configFile)
		if err != nil {
			return err
		}
		log, err := service.NewLogger(stderr, "warn")
		if err != nil {
			return err
		}
		shared, err := service.OpenStore(ctx, st, log)
		if err != nil {
			return err
		}
		if shared != nil {
			defer shared.Close()
			place = ech.InStorage(shared)
		}
	}
	now := time.Now()

	switch sub {
	case "show":
		set, err := ech.LoadFrom(ctx, place)
		if err != nil {
			return err
		}
		if set.Current() == nil {
			return fmt.Errorf("no ECH keys in %s (the edge creates one when it starts)", place)
		}
		out, err := set.Format(*format, *domain, *port, now)
		if errors.Is(err, ech.ErrUnknownFormat) {
			return fmt.Errorf("%w: --format %w", errUsage, err)
		}
		if err != nil {
			return err
		}
		_, err = stdout.Write(out)
		return err
	case "rotate":
		key, set, err := ech.RotateLikeIn(ctx, place, *publicName, now)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added ECH key config_id %d (%s) in %s; %d keys now, older ones stay decrypt-only.\n", key.Parsed().ConfigID, path.Base(key.File), place, len(set.Keys))
		fmt.Fprintf(stdout, "A running edge (every node on the shared store) picks it up within 30 seconds (or at once with `systemctl reload chatmail-edge`).\nNew ECHConfigList: %s\n", set.Base64())
		return nil
	default: // retire
		removed, set, err := ech.RetireIn(ctx, place, *grace, now)
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
