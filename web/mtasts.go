package web

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"

	"chatmail-edge/config"
)

// MTASTSConfig is the relay's inbound MTA-STS policy (RFC 8461 §3.2). The
// MX host is the mail domain itself, as chatmail has it.
type MTASTSConfig struct {
	Mode   string // enforce (default), testing or none
	MaxAge int64  // seconds; default 2419200 (28 days), chatmail's value
}

const defaultMTASTSMaxAge = 2419200

// maxMTASTSMaxAge is the largest max_age RFC 8461 §3.2 allows (about a year).
const maxMTASTSMaxAge = 31557600

func (c *MTASTSConfig) setDefaults() {
	if c.Mode == "" {
		c.Mode = "enforce"
	}
	if c.MaxAge == 0 {
		c.MaxAge = defaultMTASTSMaxAge
	}
}

func (c MTASTSConfig) validate() error {
	if err := config.ValidMTASTSMode(c.Mode); err != nil {
		return err
	}
	if c.MaxAge < 0 || c.MaxAge > maxMTASTSMaxAge {
		return fmt.Errorf("MTA-STS max_age %d: want 0 to %d seconds (RFC 8461 §3.2)", c.MaxAge, maxMTASTSMaxAge)
	}
	return nil
}

// MTASTSPolicy is the policy text, byte for byte what chatmail's
// mta-sts.txt.j2 renders for the default mode and max_age. RFC 8461 §3.2
// allows LF line ends.
func MTASTSPolicy(domain string, c MTASTSConfig) string {
	c.setDefaults()
	return fmt.Sprintf("version: STSv1\nmode: %s\nmx: %s\nmax_age: %d\n", c.Mode, strings.ToLower(domain), c.MaxAge)
}

// MTASTSPolicyID is the id of the `_mta-sts` TXT record: derived from the
// policy, so it changes exactly when the policy does, which is when
// senders must fetch it again (RFC 8461 §3.1). 20 hex digits fit the
// 1*32 ALPHA/DIGIT syntax.
func MTASTSPolicyID(policy string) string {
	sum := sha256.Sum256([]byte(policy))
	return hex.EncodeToString(sum[:10])
}

// MTASTSRecord is the zone-file line of the policy indicator record
// (RFC 8461 §3.1) for domain.
func MTASTSRecord(domain string, c MTASTSConfig) string {
	id := MTASTSPolicyID(MTASTSPolicy(domain, c))
	return fmt.Sprintf("_mta-sts.%s. 3600 IN TXT \"v=STSv1; id=%s\"", strings.TrimSuffix(strings.ToLower(domain), "."), id)
}

// mtaSTSPolicy serves the policy at /.well-known/mta-sts.txt (RFC 8461
// §3.3) as text/plain, on every name: nginx served one vhost for <d> and
// mta-sts.<d>. The generated policy takes precedence over a stale file that
// cmdeploy may have left in the website folder.
func (s *Server) mtaSTSPolicy(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	w.Write([]byte(MTASTSPolicy(s.cfg.Domain, s.cfg.MTASTS)))
}
