package ech

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Base64 is the published ECHConfigList in standard base64 on one line: the
// form of the ech= SvcParam (RFC 9848) and of most config distribution.
func (s *KeySet) Base64() string {
	return base64.StdEncoding.EncodeToString(s.ConfigList())
}

// PEM is the current key in the RFC 9934 file format (PKCS#8 PRIVATE KEY, then
// ECHCONFIG), as OpenSSL 4 and nginx's ssl_ech_file read it. It holds the
// private key: keep it secret.
func (s *KeySet) PEM() ([]byte, error) {
	cur := s.Current()
	if cur == nil {
		return nil, errors.New("export ECH key PEM: no ECH key")
	}
	return encodeECHKeyPEM(cur)
}

// HTTPSRecord is one zone-file line publishing echConfigList (RFC 9848) in an
// HTTPS record (RFC 9460 §9) for the origin https://owner:port, e.g.
//
//	chat.example.org. 3600 IN HTTPS 1 . alpn="h2,http/1.1" ech="AEX+DQ..."
//
// For a port other than 443 the owner gets the port prefix of RFC 9460 §2.3
// (_8443._https.chat.example.org.), and the target is the host itself, since
// "." would mean the prefixed name (RFC 9460 §2.5.2). SvcParams are written in
// key order: alpn (1), port (3), ech (5).
func HTTPSRecord(owner string, port int, alpn []string, ttl uint32, echConfigList []byte) string {
	host := strings.TrimSuffix(owner, ".") + "."
	name, target := host, "."
	var params []string
	if len(alpn) > 0 {
		params = append(params, `alpn="`+presentALPN(alpn)+`"`)
	}
	if port != 443 {
		name, target = fmt.Sprintf("_%d._https.%s", port, host), host
		params = append(params, "port="+strconv.Itoa(port))
	}
	if len(echConfigList) > 0 {
		params = append(params, `ech="`+base64.StdEncoding.EncodeToString(echConfigList)+`"`)
	}
	return strings.TrimSpace(fmt.Sprintf("%s %d IN HTTPS 1 %s %s", name, ttl, target, strings.Join(params, " ")))
}

// presentALPN writes alpn-ids in presentation form: a comma-separated
// value-list (RFC 9460 §7.1.1, Appendix A.1) inside a quoted character-string
// (RFC 1035 §5.1), hence the double escaping of commas and backslashes.
func presentALPN(ids []string) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		for _, c := range []byte(id) {
			switch {
			case c == ',':
				b.WriteString(`\\,`) // value-list escape \, then \ escaped
			case c == '\\':
				b.WriteString(`\\\\`)
			case c == '"':
				b.WriteString(`\"`)
			case c <= ' ' || c >= 0x7f:
				fmt.Fprintf(&b, `\%03d`, c)
			default:
				b.WriteByte(c)
			}
		}
	}
	return b.String()
}

type echKeySetJSON struct {
	CurrentConfigID *uint8       `json:"current_config_id"` // null when there is no key
	ConfigList      string       `json:"config_list"`       // base64, what is published
	Keys            []echKeyJSON `json:"keys"`
}

// echKeyJSON describes one key without its private half.
type echKeyJSON struct {
	ConfigID      uint8  `json:"config_id"`
	PublicName    string `json:"public_name"`
	MaxNameLength uint8  `json:"max_name_length"`
	Created       string `json:"created"`
	Age           string `json:"age"`
	Current       bool   `json:"current"`
	SendAsRetry   bool   `json:"send_as_retry"`
	File          string `json:"file,omitempty"`
	Config        string `json:"config"` // base64 of the single Config
}

// JSON describes the set for operators and status pages: the published list
// and every key's public parts. It never holds private keys.
func (s *KeySet) JSON(now time.Time) ([]byte, error) {
	out := echKeySetJSON{ConfigList: s.Base64(), Keys: []echKeyJSON{}}
	if cur := s.Current(); cur != nil {
		id := cur.ConfigID()
		out.CurrentConfigID = &id
	}
	for i, tk := range s.TLSKeys() {
		k := s.Keys[i]
		c := k.Parsed()
		out.Keys = append(out.Keys, echKeyJSON{
			ConfigID:      c.ConfigID,
			PublicName:    c.PublicName,
			MaxNameLength: c.MaxNameLen,
			Created:       k.Created.UTC().Format(time.RFC3339),
			Age:           formatAge(now.Sub(k.Created)),
			Current:       i == 0,
			SendAsRetry:   tk.SendAsRetry,
			File:          k.File,
			Config:        base64.StdEncoding.EncodeToString(k.Config),
		})
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("export ECH keys as JSON: %w", err)
	}
	return b, nil
}

// formatAge gives a short age such as "3d2h", "5h12m" or "40m".
func formatAge(d time.Duration) string {
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	days, hours, minutes := int(d/(24*time.Hour)), int(d/time.Hour)%24, int(d/time.Minute)%60
	switch {
	case days > 0:
		return fmt.Sprintf("%s%dd%dh", sign, days, hours)
	case hours > 0:
		return fmt.Sprintf("%s%dh%dm", sign, hours, minutes)
	default:
		return fmt.Sprintf("%s%dm", sign, minutes)
	}
}

// ErrUnknownFormat is Format's answer for a format it does not know.
var ErrUnknownFormat = errors.New("unknown format (want base64, pem, dns or json)")

// Format is the key set in one of its publication forms, as `ech show`
// prints it: base64 (the ECHConfigList on one line), pem (RFC 9934, with the
// private key), dns (an HTTPS record line for owner and port, RFC 9848;
// owner "" is the current key's public_name) or json.
func (s *KeySet) Format(format, owner string, port int, now time.Time) ([]byte, error) {
	switch format {
	case "base64":
		return []byte(s.Base64() + "\n"), nil
	case "pem":
		return s.PEM()
	case "dns":
		if owner == "" {
			owner = s.Current().Parsed().PublicName
		}
		return []byte(HTTPSRecord(owner, port, []string{"h2", "http/1.1"}, 3600, s.ConfigList()) + "\n"), nil
	case "json":
		b, err := s.JSON(now)
		return append(b, '\n'), err
	}
	return nil, fmt.Errorf("%q: %w", format, ErrUnknownFormat)
}
