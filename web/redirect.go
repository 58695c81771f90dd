package web

import (
	"net"
	"net/http"
	"strconv"
)

// RedirectHandler answers plain HTTP (:80): everything moves to https on the
// same host, as chatmail's nginx does (`return 301 https://$host$request_uri`).
func (s *Server) RedirectHandler() http.Handler {
	return s.accessLogged(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := requestHost(r)
		if host == "" || !validHost(host) {
			host = s.cfg.Domain
		}
		if s.cfg.HTTPSPort != 0 && s.cfg.HTTPSPort != 443 {
			host = net.JoinHostPort(host, strconv.Itoa(s.cfg.HTTPSPort))
		} else {
			host = hostForURL(host)
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusMovedPermanently)
	}))
}

// validHost accepts DNS names and IP literals, nothing that could turn the
// redirect into a header injection or an open redirect with odd characters.
func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
