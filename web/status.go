package web

import (
	"bytes"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	"chatmail-edge/acme"
	"chatmail-edge/assets"

	"go.uber.org/zap"
)

// statusRefresh is the pages' auto-refresh interval.
const statusRefresh = 30

// certExpirySoon marks a certificate that should have been renewed by now
// (ACME renews 30 days before expiry).
const certExpirySoon = 14 * 24 * time.Hour

// statusPage is what status.html renders. The public page carries no
// secret and nothing an attacker could use beyond what a TLS handshake
// shows anyway: no key material, no addresses of internal services, no
// error texts, no admin port.
type statusPage struct {
	Admin          bool
	Domain         string
	Version        string
	Uptime         string
	Now            string
	RefreshSeconds int
	CSS            template.CSS
	AllUp          bool
	Services       []serviceView
	Certs          []certView
	ECH            echView
	Store          *storeView // nil without a shared store
	Node           *nodeView  // nil on the relay
	// Admin page only.
	Listeners       []listenerView
	Sessions        int64
	Pending         int64
	WaitingForHello int64
	HandshakeQueue  int64
	SourceRefusals  string
	Recent          []recentView
}

type serviceView struct {
	Name, State              string // State: up, down, unknown
	Target, Latency, Checked string
	Error                    string
}

type certView struct {
	Names, Source, Issuer, NotAfter, ExpiresIn, ExpiryClass string
	LastError, LastErrorAt, NextAttempt                     string
}

type echView struct {
	ConfigID   uint8
	PublicName string
	Created    string
	Age        string
	Keys       int
	// Admin page only.
	Metadata metadataView
}

type metadataView struct {
	Path, Error, FailingSince, NextAttempt string
	Current                                bool
	FailedAttempts                         int
}

type listenerView struct {
	Name, Address                     string
	Active                            int64
	Accepted                          uint64
	ECHAccepted, ECHRejected, ECHNone uint64
	Routes, Failures                  string
	// Medians and 90th percentiles (bucket bounds) of the handshake and of
	// the wait in line for a handshake slot.
	HandshakeP50, HandshakeP90, QueueWaitP50, QueueWaitP90 string
}

type recentView struct {
	Time, Level, Logger, Message, Fields string
}

func (s *Server) publicStatus(w http.ResponseWriter, r *http.Request) {
	s.renderStatus(w, r, s.statusPage(false))
}

func (s *Server) adminStatus(w http.ResponseWriter, r *http.Request) {
	s.renderStatus(w, r, s.statusPage(true))
}

func (s *Server) renderStatus(w http.ResponseWriter, r *http.Request, page statusPage) {
	var buf bytes.Buffer
	if err := s.status.Execute(&buf, page); err != nil {
		requestLog(s.log, r).Error("render the status page", zap.Error(err))
		http.Error(w, "status page unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	// The page needs nothing from anywhere: forbid everything else.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	compressed(w, r, func(w http.ResponseWriter, r *http.Request) { w.Write(buf.Bytes()) })
}

func (s *Server) statusPage(admin bool) statusPage {
	now := s.now()
	page := statusPage{
		Admin: admin, Domain: s.cfg.Domain, Version: s.cfg.Version,
		Uptime: formatDuration(now.Sub(s.started)), Now: now.UTC().Format(time.RFC3339),
		RefreshSeconds: statusRefresh, CSS: template.CSS(assets.StatusCSS()), AllUp: true,
		Node: s.nodeViewOf(now, admin),
	}
	for _, h := range s.Health() {
		v := serviceView{Name: h.Name, State: "unknown"}
		if !h.Checked.IsZero() {
			v.State = "down"
			if h.Up {
				v.State = "up"
			}
		}
		page.AllUp = page.AllUp && v.State == "up"
		if admin {
			v.Target = h.Target
			if !h.Checked.IsZero() {
				v.Latency = formatLatency(h.Latency)
				v.Checked = formatDuration(now.Sub(h.Checked)) + " ago"
			}
			v.Error = h.Error
		}
		page.Services = append(page.Services, v)
	}
	for _, c := range s.certs() {
		page.Certs = append(page.Certs, certViewOf(c, now, admin))
	}
	if page.Store = s.storeView(now, admin); page.Store != nil && page.Store.State != "up" {
		page.AllUp = false
	}
	if s.deps.ECHKey != nil {
		k := s.deps.ECHKey()
		page.ECH = echView{ConfigID: k.ConfigID, PublicName: k.PublicName, Keys: k.Keys,
			Created: k.Created.UTC().Format(time.DateOnly), Age: formatDuration(now.Sub(k.Created))}
	}
	if !admin {
		return page
	}
	if s.deps.ECHKey != nil {
		page.ECH.Metadata = metadataViewOf(s.deps.ECHKey().Metadata)
	}
	st := s.edgeStats()
	page.Sessions, page.Pending = st.ActiveSessions, st.Pending
	page.WaitingForHello, page.HandshakeQueue = st.WaitingForHello, st.HandshakeQueue
	page.SourceRefusals = formatCounts(st.SourceRefusals)
	for _, l := range st.Listeners {
		hs := func(q float64) string {
			return formatBound(quantile(l.HandshakeBuckets, l.HandshakeCounts, l.HandshakeCount, q), lastBound(l.HandshakeBuckets))
		}
		qw := func(q float64) string {
			return formatBound(quantile(l.QueueWaitBuckets, l.QueueWaitCounts, l.QueueWaitCount, q), lastBound(l.QueueWaitBuckets))
		}
		page.Listeners = append(page.Listeners, listenerView{
			Name: l.Name, Address: l.Address, Active: l.Active, Accepted: l.Accepted,
			ECHAccepted: l.ECH["accepted"], ECHRejected: l.ECH["rejected"], ECHNone: l.ECH["none"],
			Routes: formatCounts(l.Routes), Failures: formatCounts(l.Failures),
			HandshakeP50: hs(0.5), HandshakeP90: hs(0.9), QueueWaitP50: qw(0.5), QueueWaitP90: qw(0.9),
		})
	}
	if s.deps.Recent != nil {
		for _, e := range s.deps.Recent.Entries() {
			page.Recent = append(page.Recent, recentView{Time: e.Time.UTC().Format(time.RFC3339), Level: e.Level, Logger: e.Logger, Message: e.Message, Fields: e.Fields})
		}
	}
	return page
}

func (s *Server) certs() []acme.CertStatus {
	if s.deps.Certs == nil {
		return nil
	}
	return s.deps.Certs.Status()
}

func metadataViewOf(m MetadataFileState) metadataView {
	v := metadataView{Path: m.Path, Current: m.Current, Error: m.Error, FailedAttempts: m.FailedAttempts}
	if !m.FailingSince.IsZero() {
		v.FailingSince = m.FailingSince.UTC().Format(time.RFC3339)
	}
	if !m.NextAttempt.IsZero() {
		v.NextAttempt = m.NextAttempt.UTC().Format(time.RFC3339)
	}
	return v
}

func certViewOf(c acme.CertStatus, now time.Time, admin bool) certView {
	v := certView{Names: strings.Join(c.Names, ", "), Source: c.Source, NotAfter: "none yet", ExpiresIn: "no certificate", ExpiryClass: "expired"}
	if !c.NotAfter.IsZero() {
		left := c.NotAfter.Sub(now)
		v.NotAfter = c.NotAfter.UTC().Format("2006-01-02 15:04 UTC")
		switch {
		case left <= 0:
			v.ExpiresIn, v.ExpiryClass = "expired "+formatDuration(-left)+" ago", "expired"
		case left < certExpirySoon:
			v.ExpiresIn, v.ExpiryClass = "in "+formatDuration(left), "soon"
		default:
			v.ExpiresIn, v.ExpiryClass = "in "+formatDuration(left), "ok"
		}
	}
	if admin {
		v.Issuer = c.Issuer
		v.LastError = c.LastError
		if !c.LastErrorAt.IsZero() {
			v.LastErrorAt = c.LastErrorAt.UTC().Format(time.RFC3339)
		}
		v.NextAttempt = "none scheduled"
		if !c.NextAttempt.IsZero() {
			v.NextAttempt = c.NextAttempt.UTC().Format(time.RFC3339)
		}
	}
	return v
}

// formatDuration is a rough human duration: 3d 4h, 5h 12m, 42s.
func formatDuration(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd %dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh %dm", d/time.Hour, d%time.Hour/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm %ds", d/time.Minute, d%time.Minute/time.Second)
	default:
		return fmt.Sprintf("%ds", d/time.Second)
	}
}

func formatLatency(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

// formatCounts writes the non-zero counts, e.g. "http 12, imap 3".
func formatCounts(m map[string]uint64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
		}
	}
	if len(parts) == 0 {
		return "–"
	}
	return strings.Join(parts, ", ")
}
