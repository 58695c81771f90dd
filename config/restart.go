package config

import (
	"reflect"
	"time"
)

// Restart is the part of the settings a running edge cannot change: its
// listeners, folders, names, log level and certificate source. A reload
// compares it with what the edge started with, warns about every key that
// differs and keeps the value in force; everything else in Settings a
// reload applies (limits and timeouts, the mail backends, the web side,
// the drain time, the node's relay).
type Restart struct {
	HTTPS         string        `key:"[edge] https"`
	IMAPS         string        `key:"[edge] imaps"`
	SMTPS         string        `key:"[edge] smtps"`
	HTTP          string        `key:"[edge] http"`
	AdminAddress  string        `key:"[admin] address"`
	HeaderTimeout time.Duration `key:"[web] header_timeout"`
	SendTimeout   time.Duration `key:"[web] send_timeout"`
	ControlSocket string        `key:"[edge] control_socket"`
	StateDir      string        `key:"[edge] state_dir"`
	LogLevel      string        `key:"[edge] log_level"`
	MailDomain    string        `key:"mail_domain (chatmail.ini)"`
	PublicName    string        `key:"[ech] public_name"`
	MetadataFile  string        `key:"[ech] metadata_file"`
	CertMode      string        `key:"certificate mode ([tls] cert, chatmail.ini)"`
	Store         StoreSettings `key:"[store]"`
	Node          bool          `key:"[node] relay (set or empty)"`
	// ACME is the [acme] section, compared only when both are in acme mode
	// (it means nothing in the others).
	ACME *CertSettings `key:"[acme]"`
}

// Restart is s's part that needs a restart.
func (s *Settings) Restart() Restart {
	r := Restart{
		HTTPS: s.ListenAddr(s.HTTPS), IMAPS: s.ListenAddr(s.IMAPS), SMTPS: s.ListenAddr(s.SMTPS), HTTP: s.ListenAddr(s.HTTP),
		AdminAddress: s.AdminAddress, HeaderTimeout: s.HeaderTimeout, SendTimeout: s.SendTimeout,
		ControlSocket: s.ControlSocket, StateDir: s.StateDir, LogLevel: s.LogLevel,
		MailDomain: s.MailDomain, PublicName: s.ECHPublicName, MetadataFile: s.ECHMetadataFile,
		CertMode: s.CertMode(), Store: s.Store, Node: s.IsNode(),
	}
	if r.CertMode == "acme" {
		certs := s.Certs
		certs.SelfCert, certs.SelfKey, certs.CheckInterval = "", "", 0 // [tls], not [acme]
		r.ACME = &certs
	}
	return r
}

// Changed names the keys whose values differ between r (in force) and
// next (just read).
func (r Restart) Changed(next Restart) []string {
	var out []string
	a, b := reflect.ValueOf(r), reflect.ValueOf(next)
	for i := range a.NumField() {
		f := a.Type().Field(i)
		if f.Name == "ACME" && (r.ACME == nil || next.ACME == nil) {
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			out = append(out, f.Tag.Get("key"))
		}
	}
	return out
}
