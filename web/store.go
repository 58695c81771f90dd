package web

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// StoreHealth is what the status pages and metrics show of the shared
// store of several nodes (Deps.Store).
type StoreHealth struct {
	Endpoints   []string
	Up          bool
	Since       time.Time // when Up took its value
	LastSuccess time.Time
	LastError   string
	LastErrorAt time.Time
}

// storeView is the store on the status pages: its state and since when on
// both, the endpoints and the error on the admin page only.
type storeView struct {
	State, Since                           string // State: up or down
	Endpoints, LastSuccess, Error, ErrorAt string
}

func (s *Server) storeView(now time.Time, admin bool) *storeView {
	if s.deps.Store == nil {
		return nil
	}
	h := s.deps.Store()
	v := &storeView{State: "down", Since: h.Since.UTC().Format(time.RFC3339) + " (" + formatDuration(now.Sub(h.Since)) + ")"}
	if h.Up {
		v.State = "up"
	}
	if admin {
		v.Endpoints = strings.Join(h.Endpoints, " ")
		if !h.LastSuccess.IsZero() {
			v.LastSuccess = h.LastSuccess.UTC().Format(time.RFC3339)
		}
		if !h.Up {
			v.Error, v.ErrorAt = h.LastError, h.LastErrorAt.UTC().Format(time.RFC3339)
		}
	}
	return v
}

// storeCollector is the shared store's health as metrics (docs/METRICS.md).
type storeCollector struct {
	s                               *Server
	up, unreachableSince, lastReply *prometheus.Desc
}

func newStoreCollector(s *Server) *storeCollector {
	return &storeCollector{
		s:                s,
		up:               prometheus.NewDesc(metricsPrefix+"store_up", "1 if the shared store (etcd) answered the last request or probe; 0 while it does not (the node serves what it holds).", nil, nil),
		unreachableSince: prometheus.NewDesc(metricsPrefix+"store_unreachable_since_timestamp_seconds", "Since when the shared store does not answer (absent while it does).", nil, nil),
		lastReply:        prometheus.NewDesc(metricsPrefix+"store_last_success_timestamp_seconds", "When the shared store last answered.", nil, nil),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.up
	ch <- c.unreachableSince
	ch <- c.lastReply
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	if c.s.deps.Store == nil {
		return
	}
	h := c.s.deps.Store()
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, boolGauge(h.Up))
	if !h.Up {
		ch <- prometheus.MustNewConstMetric(c.unreachableSince, prometheus.GaugeValue, float64(h.Since.Unix()))
	}
	if !h.LastSuccess.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.lastReply, prometheus.GaugeValue, float64(h.LastSuccess.Unix()))
	}
}
