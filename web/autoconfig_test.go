package web

import (
	"encoding/xml"
	"strings"
	"testing"
)

// TestAutoconfigAsChatmail: with the default ports the document lists
// chatmail's servers in chatmail's order, and the ECH element names 443.
func TestAutoconfigAsChatmail(t *testing.T) {
	h := newTestServer(t, nil).Handler()
	var doc struct {
		Provider struct {
			ID      string `xml:"id,attr"`
			Display string `xml:"displayName"`
			Servers []struct {
				XMLName  xml.Name
				Type     string `xml:"type,attr"`
				Hostname string `xml:"hostname"`
				Port     string `xml:"port"`
				Socket   string `xml:"socketType"`
				Auth     string `xml:"authentication"`
				Username string `xml:"username"`
			} `xml:",any"`
		} `xml:"emailProvider"`
	}
	for _, target := range []string{"https://chat.example/.well-known/autoconfig/mail/config-v1.1.xml", "https://autoconfig.chat.example/mail/config-v1.1.xml"} {
		rec := do(h, "GET", target)
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/xml" {
			t.Fatalf("%s: %d %q", target, rec.Code, rec.Header().Get("Content-Type"))
		}
		doc.Provider.Servers = nil
		if err := xml.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range doc.Provider.Servers {
			if s.Type == "" { // domain, displayName, displayShortName, echConfigList
				got = append(got, s.XMLName.Local)
				continue
			}
			got = append(got, strings.Join([]string{s.XMLName.Local, s.Type, s.Hostname, s.Port, s.Socket, s.Auth, s.Username}, " "))
		}
		want := []string{
			"domain", "displayShortName", // displayName is read into its own field
			"incomingServer imap chat.example 993 SSL password-cleartext %EMAILADDRESS%",
			"incomingServer imap chat.example 143 STARTTLS password-cleartext %EMAILADDRESS%",
			"incomingServer imap chat.example 443 SSL password-cleartext %EMAILADDRESS%",
			"outgoingServer smtp chat.example 465 SSL password-cleartext %EMAILADDRESS%",
			"outgoingServer smtp chat.example 587 STARTTLS password-cleartext %EMAILADDRESS%",
			"outgoingServer smtp chat.example 443 SSL password-cleartext %EMAILADDRESS%",
			"echConfigList",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") || doc.Provider.ID != "chat.example" || doc.Provider.Display != "chat.example chatmail" {
			t.Fatalf("%s: %q\n%s", target, got, rec.Body)
		}
		if !strings.Contains(rec.Body.String(), `<echConfigList xmlns="urn:chatmail-edge:autoconfig:ech" encoding="base64" ports="443">AAP+DQA=</echConfigList>`) {
			t.Fatalf("ECH element:\n%s", rec.Body)
		}
	}
	if rec := do(h, "GET", "https://autoconfig.chat.example/other"); rec.Code != 404 {
		t.Fatalf("other path on autoconfig.<d>: %d", rec.Code)
	}
}
