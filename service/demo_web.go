package service

import (
	"net"
	"path/filepath"
	"strconv"
	"time"

	"chatmail-edge/web"
)

// demoWeb holds what tests change in the demo's web side; the zero value is
// the demo: the built-in site, accounts from the local delivery, the
// in-process stand-ins for filtermail and iroh-relay (demo_standins.go),
// and the METADATA file in the state folder.
type demoWeb struct {
	SiteDir         string
	NewAccountCGI   string
	MXDeliv         string
	IrohRelay       string
	UpstreamTimeout time.Duration
	MaxMessageSize  int64
	MetadataFile    string
}

// webConfig is the demo's web side; the stand-ins serve the upstreams
// demoWeb leaves empty.
func (c DemoConfig) webConfig(standIns *demoStandIns) web.Config {
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
		w.MXDeliv = standIns.MXDeliv
	}
	if w.IrohRelay == "" {
		w.IrohRelay = standIns.IrohRelay
	}
	return w
}

// maxMessageSize is the demo's chatmail.ini max_message_size.
func (c DemoConfig) maxMessageSize() int64 {
	if c.web.MaxMessageSize > 0 {
		return c.web.MaxMessageSize
	}
	return 31457280 // chatmaild's default
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
	row("filtermail, iroh-relay", "in-process stand-ins behind /mxdeliv and /relay, /ping, /generate_204")
	row("status page", "https://"+net.JoinHostPort(d.cfg.Domain, strconv.Itoa(d.port("https")))+"/status")
	row("admin: status and /metrics", d.adminURL()+"/")
}
