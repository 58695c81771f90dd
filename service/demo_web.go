package service

import (
	"net"
	"path/filepath"
	"strconv"
	"time"

	"chatmail-edge/web"
)

// demoWeb holds what tests change in the demo's web side; the zero value is
// the demo: the built-in site, accounts from the local delivery, chatmail's
// upstream addresses (usually absent on a developer's machine, so the status
// page shows them down), and the METADATA file in the state folder.
type demoWeb struct {
	SiteDir         string
	NewAccountCGI   string
	MXDeliv         string
	IrohRelay       string
	UpstreamTimeout time.Duration
	MaxMessageSize  int64
	MetadataFile    string
}

func (c DemoConfig) webConfig() web.Config {
	w := web.Config{
		SiteDir:         c.web.SiteDir,
		NewAccountCGI:   c.web.NewAccountCGI,
		MXDeliv:         c.web.MXDeliv,
		IrohRelay:       c.web.IrohRelay,
		UpstreamTimeout: c.web.UpstreamTimeout,
		MaxMessageSize:  c.web.MaxMessageSize,
		// The demo's own ports (startWeb fills them in); it has no
		// STARTTLS ports.
		Autoconfig: web.AutoconfigPorts{Custom: true},
	}
	if w.MXDeliv == "" {
		w.MXDeliv = web.DefaultMXDeliv
	}
	if w.IrohRelay == "" {
		w.IrohRelay = web.DefaultIrohRelay
	}
	return w
}

func (c DemoConfig) metadataFile() string {
	if c.web.MetadataFile != "" {
		return c.web.MetadataFile
	}
	return filepath.Join(c.StateDir, "ech-config-list")
}

// adminURL is the admin listener's base URL.
func (d *Demo) adminURL() string {
	return "http://" + d.adminLn.Addr().String()
}

func (d *Demo) printWebRows(row func(k, v string)) {
	row("ECH config file (METADATA)", d.cfg.metadataFile())
	row("status page", "https://"+net.JoinHostPort(d.cfg.Domain, strconv.Itoa(d.port("https")))+"/status")
	row("admin: status and /metrics", d.adminURL()+"/")
}
