package ech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"
)

func TestECHKeySetBase64(t *testing.T) {
	set := NewKeySet(testECHKey(t, 1, testEpoch), testECHKey(t, 2, testEpoch.Add(time.Hour)))
	got, err := base64.StdEncoding.DecodeString(set.Base64())
	if err != nil || !bytes.Equal(got, set.ConfigList()) {
		t.Errorf("Base64 decodes to %x (%v), want the config list %x", got, err, set.ConfigList())
	}
	if strings.ContainsAny(set.Base64(), "\n ") {
		t.Errorf("Base64 is not one line: %q", set.Base64())
	}
}

func TestECHKeySetPEM(t *testing.T) {
	old, cur := testECHKey(t, 1, testEpoch), testECHKey(t, 2, testEpoch.Add(time.Hour))
	data, err := NewKeySet(old, cur).PEM()
	if err != nil {
		t.Fatalf("PEM: %v", err)
	}
	keyBlock, rest := pem.Decode(data)
	if keyBlock == nil || keyBlock.Type != "PRIVATE KEY" {
		t.Fatalf("first block is not PRIVATE KEY:\n%s", data)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes)
	if err != nil {
		t.Fatalf("ParsePKCS8PrivateKey: %v", err)
	}
	priv, ok := parsed.(*ecdh.PrivateKey)
	if !ok || priv.Curve() != ecdh.X25519() {
		t.Fatalf("private key is %T, want an X25519 *ecdh.PrivateKey", parsed)
	}
	if !bytes.Equal(priv.Bytes(), cur.PrivateKey) {
		t.Errorf("PEM holds another private key than the current one")
	}
	configBlock, rest := pem.Decode(rest)
	if configBlock == nil || configBlock.Type != "ECHCONFIG" || len(rest) != 0 {
		t.Fatalf("second and last block is not ECHCONFIG:\n%s", data)
	}
	if !bytes.Equal(configBlock.Bytes, MarshalConfigList(cur.Config)) {
		t.Errorf("ECHCONFIG block is not the current key's list")
	}
	// And our own reader takes it back.
	config, key, err := decodeECHKeyPEM(data)
	if err != nil || !bytes.Equal(config, cur.Config) || !bytes.Equal(key, cur.PrivateKey) {
		t.Errorf("decodeECHKeyPEM did not round-trip: %v", err)
	}

	if _, err := NewKeySet().PEM(); err == nil {
		t.Errorf("PEM of an empty set succeeded")
	}
}

func TestHTTPSRecord(t *testing.T) {
	list := handBuiltECHConfigList
	b64 := base64.StdEncoding.EncodeToString(list)
	tests := []struct {
		name  string
		owner string
		port  int
		alpn  []string
		want  string
	}{
		{"default port", "chat.example.org", 443, []string{"h2", "http/1.1"},
			`chat.example.org. 3600 IN HTTPS 1 . alpn="h2,http/1.1" ech="` + b64 + `"`},
		{"fqdn owner", "chat.example.org.", 443, []string{"imap"},
			`chat.example.org. 3600 IN HTTPS 1 . alpn="imap" ech="` + b64 + `"`},
		{"other port", "chat.example.org", 8443, []string{"h2"},
			`_8443._https.chat.example.org. 3600 IN HTTPS 1 chat.example.org. alpn="h2" port=8443 ech="` + b64 + `"`},
		{"no alpn", "chat.example.org", 443, nil,
			`chat.example.org. 3600 IN HTTPS 1 . ech="` + b64 + `"`},
	}
	for _, tt := range tests {
		if got := HTTPSRecord(tt.owner, tt.port, tt.alpn, 3600, list); got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, got, tt.want)
		}
	}
}

func TestPresentALPNEscapes(t *testing.T) {
	// RFC 9460 Appendix A.1: a comma inside an alpn-id is \, in the value-list,
	// and that backslash is escaped again in the quoted zone-file string.
	got := presentALPN([]string{"a,b", `c\d`, `e"f`, "g h"})
	want := `a\\,b,c\\\\d,e\"f,g\032h`
	if got != want {
		t.Errorf("presentALPN = %s, want %s", got, want)
	}
}

func TestECHKeySetJSON(t *testing.T) {
	old := testECHKey(t, 1, testEpoch)
	old.File = "/var/lib/chatmail-edge/ech/20261125T080100Z-01.pem"
	cur := testECHKey(t, 42, testEpoch.Add(24*time.Hour))
	set := NewKeySet(old, cur)
	now := testEpoch.Add(4*24*time.Hour + 2*time.Hour + 5*time.Minute)

	data, err := set.JSON(now)
	if err != nil {
		t.Fatalf("JSON: %v", err)
	}
	for _, k := range set.Keys {
		for _, secret := range []string{
			base64.StdEncoding.EncodeToString(k.PrivateKey),
			base64.RawURLEncoding.EncodeToString(k.PrivateKey),
			hex.EncodeToString(k.PrivateKey),
		} {
			if bytes.Contains(bytes.ToLower(data), []byte(strings.ToLower(secret))) {
				t.Errorf("JSON contains private key material %s:\n%s", secret, data)
			}
		}
	}

	var got struct {
		CurrentConfigID int    `json:"current_config_id"`
		ConfigList      string `json:"config_list"`
		Keys            []struct {
			ConfigID    int    `json:"config_id"`
			PublicName  string `json:"public_name"`
			Created     string `json:"created"`
			Age         string `json:"age"`
			Current     bool   `json:"current"`
			SendAsRetry bool   `json:"send_as_retry"`
			File        string `json:"file"`
			Config      string `json:"config"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("Unmarshal: %v\n%s", err, data)
	}
	if got.CurrentConfigID != 42 || got.ConfigList != set.Base64() || len(got.Keys) != 2 {
		t.Fatalf("JSON = %s", data)
	}
	first, second := got.Keys[0], got.Keys[1]
	if first.ConfigID != 42 || !first.Current || !first.SendAsRetry || first.Age != "3d2h" || first.Created != "2026-11-26T08:01:00Z" {
		t.Errorf("current key entry = %+v", first)
	}
	if first.Config != base64.StdEncoding.EncodeToString(cur.Config) || first.PublicName != testPublicName {
		t.Errorf("current key config/public_name = %q/%q", first.Config, first.PublicName)
	}
	if second.ConfigID != 1 || second.Current || second.SendAsRetry || second.File != old.File || second.Age != "4d2h" {
		t.Errorf("old key entry = %+v", second)
	}
	if !bytes.Contains(data, []byte("\n  \"config_list\"")) {
		t.Errorf("JSON is not indented:\n%s", data)
	}
}

func TestEmptyECHKeySetJSON(t *testing.T) {
	data, err := NewKeySet().JSON(testEpoch)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got["current_config_id"] != nil || got["config_list"] != "" {
		t.Errorf("empty set JSON = %s", data)
	}
	if keys, ok := got["keys"].([]any); !ok || len(keys) != 0 {
		t.Errorf("keys = %#v, want an empty array", got["keys"])
	}
}

func TestFormatAge(t *testing.T) {
	tests := map[time.Duration]string{
		0:                               "0m",
		59 * time.Second:                "0m",
		40 * time.Minute:                "40m",
		5*time.Hour + 12*time.Minute:    "5h12m",
		3*24*time.Hour + 2*time.Hour:    "3d2h",
		-(2*time.Hour + 30*time.Minute): "-2h30m",
	}
	for d, want := range tests {
		if got := formatAge(d); got != want {
			t.Errorf("formatAge(%v) = %q, want %q", d, got, want)
		}
	}
}
