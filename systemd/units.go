// Package systemd holds the systemd units of chatmail-edge, embedded in the
// binary for `chatmail-edge install`.
package systemd

import (
	"bytes"
	"embed"
	"fmt"
	"text/template"
)

//go:embed *.service *.path *.sysusers *.takeover.conf
var files embed.FS

// Unit names.
const (
	Service       = "chatmail-edge.service"
	ReloadPath    = "chatmail-edge-mail-reload.path"
	ReloadService = "chatmail-edge-mail-reload.service"
	// MetadataProxy is `chatmail-edge metadata-proxy` (docs/METADATA.md),
	// for full mode, where Dovecot's mail_attribute_dict points at it.
	MetadataProxy = "chatmail-edge-metadata.service"
	// ReapplyPath watches the files `cmdeploy run` rewrites over what
	// install changed in them and has ReapplyService run `install
	// --reapply`.
	ReapplyPath    = "chatmail-edge-reapply.path"
	ReapplyService = "chatmail-edge-reapply.service"
	// DropIn is the name of the drop-in (systemd.unit(5), "<unit>.d/")
	// with which install turns chatmail's nginx and acmetool units into
	// no-ops (TakeoverDropIn).
	DropIn = "chatmail-edge.conf"
	// User is the service user that Sysusers creates.
	User     = "chatmail-edge"
	Sysusers = "chatmail-edge.sysusers"
	// PackagedBinary is where the Debian package (release/) puts the
	// binary, which install then runs in place: /usr/bin, as Debian policy
	// 9.1.2 keeps packages out of /usr/local.
	PackagedBinary = "/usr/bin/chatmail-edge"
)

// Params fill in the units' paths.
type Params struct {
	Binary     string // the installed binary, /usr/local/bin/chatmail-edge
	Config     string // the edge's configuration file
	ExportCert string // the certificate exported for Postfix and Dovecot; "" for none
	ECHFile    string // the edge's [ech] metadata_file, for MetadataProxyUnit
	// Watch are the files ReapplyUnits watch.
	Watch []string
}

// Unit is one rendered file.
type Unit struct {
	Name string
	Data []byte
}

// Units renders the service, and the privileged reload of Postfix and
// Dovecot when p exports a certificate to them.
func Units(p Params) ([]Unit, error) {
	names := []string{Service}
	if p.ExportCert != "" {
		names = append(names, ReloadPath, ReloadService)
	}
	var units []Unit
	for _, name := range names {
		data, err := render(name, p)
		if err != nil {
			return nil, err
		}
		units = append(units, Unit{Name: name, Data: data})
	}
	return units, nil
}

// MetadataProxyUnit renders the metadata proxy's unit; p.ECHFile must be
// set.
func MetadataProxyUnit(p Params) (Unit, error) {
	if p.ECHFile == "" {
		return Unit{}, fmt.Errorf("unit %s: no ECH file", MetadataProxy)
	}
	data, err := render(MetadataProxy, p)
	return Unit{Name: MetadataProxy, Data: data}, err
}

// ReapplyUnits renders the path unit that watches p.Watch and the service
// it runs, `install --reapply`.
func ReapplyUnits(p Params) ([]Unit, error) {
	if len(p.Watch) == 0 {
		return nil, fmt.Errorf("unit %s: nothing to watch", ReapplyPath)
	}
	var units []Unit
	for _, name := range []string{ReapplyPath, ReapplyService} {
		data, err := render(name, p)
		if err != nil {
			return nil, err
		}
		units = append(units, Unit{Name: name, Data: data})
	}
	return units, nil
}

// TakeoverDropIn is the drop-in that makes unit, one of chatmail's front
// end units that the edge stands in for, a no-op that succeeds: nginx's
// also starts the edge. ok is false for a unit it has none for.
func TakeoverDropIn(unit string) (data []byte, ok bool) {
	var name string
	switch unit {
	case "nginx.service":
		name = "nginx.takeover.conf"
	case "acmetool-redirector.service", "acmetool-reconcile.service":
		name = "acmetool.takeover.conf"
	default:
		return nil, false
	}
	data, err := files.ReadFile(name)
	if err != nil {
		panic(err) // embedded
	}
	return data, true
}

// SysusersConf is the sysusers.d(5) entry of the service user.
func SysusersConf() []byte {
	data, err := files.ReadFile(Sysusers)
	if err != nil {
		panic(err) // embedded
	}
	return data
}

func render(name string, p Params) ([]byte, error) {
	text, err := files.ReadFile(name)
	if err != nil {
		return nil, err
	}
	t, err := template.New(name).Option("missingkey=error").Parse(string(text))
	if err != nil {
		return nil, fmt.Errorf("unit %s: %w", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, p); err != nil {
		return nil, fmt.Errorf("unit %s: %w", name, err)
	}
	return b.Bytes(), nil
}
