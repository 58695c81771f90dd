package web

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
)

// originSVCB is the well-known resource of draft-ietf-tls-wkech §5: the
// service binding data (ECH config, ALPN) that a zone factory should publish
// in this origin's HTTPS record, and that clients can fetch directly.
type originSVCB struct {
	// RegenInterval (seconds) is how often the data may change; a zone
	// factory polls at that rate. Keys are rotated by the operator
	// (`chatmail-edge ech rotate`), so an hour is ample.
	RegenInterval int        `json:"regeninterval"`
	Endpoints     []endpoint `json:"endpoints"`
}

type endpoint struct {
	Priority int            `json:"priority"`
	Params   endpointParams `json:"params"`
}

// endpointParams are SvcParams (RFC 9460 §7) named as in presentation format.
type endpointParams struct {
	ALPN []string `json:"alpn"`
	ECH  string   `json:"ech,omitempty"` // base64 ECHConfigList, RFC 9848
}

const originSVCBRegenInterval = 3600

func (s *Server) originSVCB(w http.ResponseWriter, r *http.Request) {
	doc := originSVCB{
		RegenInterval: originSVCBRegenInterval,
		Endpoints: []endpoint{{Priority: 1, Params: endpointParams{
			ALPN: []string{"h2", "http/1.1"},
			ECH:  base64.StdEncoding.EncodeToString(s.deps.ECHConfigList()),
		}}},
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	json.NewEncoder(w).Encode(doc)
}
