package web

import (
	"encoding/json"
	"net/http"

	"go.uber.org/zap"
)

// newAccount is chatmail's account creation endpoint (chatmaild newemail.py):
// a browser GET is sent on to the app with a dcaccount: link, the app POSTs
// and gets {"email": ..., "password": ...}.
func (s *Server) newAccount(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		http.Redirect(w, r, "dcaccount:"+s.origin()+"/new", http.StatusMovedPermanently)
		return
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if s.deps.NewAccount == nil {
		http.Error(w, "account creation is not available", http.StatusServiceUnavailable)
		return
	}
	email, password, err := s.deps.NewAccount()
	if err != nil {
		s.deps.Log.Error("account creation failed", zap.Error(err))
		http.Error(w, "account creation failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(struct {
		Email    string `json:"email"`
		Password string `json:"password"`
	}{email, password})
}
