package web

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

const (
	autoconfigWellKnown = "/.well-known/autoconfig/mail/config-v1.1.xml"
	autoconfigHostPath  = "/mail/config-v1.1.xml" // on autoconfig.<d>

	// ECHNamespace is the XML namespace of the autoconfig extension that
	// carries the ECH config list (docs/AUTOCONFIG.md).
	ECHNamespace = "urn:chatmail-edge:autoconfig:ech"
)

// AutoconfigPorts are the public ports listed in autoconfig; 0 leaves an
// entry out. The zero value lists chatmail's: IMAP 993 (SSL), 143
// (STARTTLS), 443 (SSL); SMTP 465 (SSL), 587 (STARTTLS), 443 (SSL).
type AutoconfigPorts struct {
	IMAPS, IMAP, SMTPS, Submission, HTTPS int
	// Custom makes zero mean "leave out" (the demo has no STARTTLS ports).
	Custom bool
	// ECH lists the ports where the edge terminates TLS with ECH: 443
	// always, 993 and 465 only when the edge owns them too (full mode).
	// Default: HTTPS.
	ECH []int
}

func (p AutoconfigPorts) withDefaults() AutoconfigPorts {
	if !p.Custom {
		p.IMAPS, p.IMAP, p.SMTPS, p.Submission, p.HTTPS = 993, 143, 465, 587, 443
	}
	if len(p.ECH) == 0 && p.HTTPS != 0 {
		p.ECH = []int{p.HTTPS}
	}
	return p
}

type autoconfigServer struct {
	direction, protocol string // incomingServer/imap, outgoingServer/smtp
	port                int
	socket              string // SSL or STARTTLS
}

// autoconfig serves the Thunderbird autoconfig document
// (draft-bucksch-autoconfig) as chatmail's autoconfig.xml.j2 renders it,
// plus one element holding the ECH config list. Clients that do not know
// the element skip it: Delta Chat and Thunderbird only read the server
// elements. The query (?emailaddress=...) does not change the answer.
func (s *Server) autoconfig(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/xml")
	// Short, so that a rotated ECH key reaches clients soon.
	w.Header().Set("Cache-Control", "max-age=300")
	compressed(w, r, func(w http.ResponseWriter, r *http.Request) {
		w.Write(s.autoconfigXML())
	})
}

func (s *Server) autoconfigXML() []byte {
	p := s.cfg.Autoconfig.withDefaults()
	servers := []autoconfigServer{
		{"incomingServer", "imap", p.IMAPS, "SSL"},
		{"incomingServer", "imap", p.IMAP, "STARTTLS"},
		{"incomingServer", "imap", p.HTTPS, "SSL"},
		{"outgoingServer", "smtp", p.SMTPS, "SSL"},
		{"outgoingServer", "smtp", p.Submission, "STARTTLS"},
		{"outgoingServer", "smtp", p.HTTPS, "SSL"},
	}
	d := xmlText(s.cfg.Domain)
	var b bytes.Buffer
	b.WriteString("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\n<clientConfig version=\"1.1\">\n")
	fmt.Fprintf(&b, "  <emailProvider id=\"%s\">\n    <domain>%s</domain>\n", d, d)
	fmt.Fprintf(&b, "    <displayName>%s chatmail</displayName>\n    <displayShortName>%s</displayShortName>\n", d, d)
	for _, sv := range servers {
		if sv.port == 0 {
			continue
		}
		fmt.Fprintf(&b, "    <%s type=\"%s\">\n", sv.direction, sv.protocol)
		fmt.Fprintf(&b, "      <hostname>%s</hostname>\n      <port>%s</port>\n      <socketType>%s</socketType>\n", d, strconv.Itoa(sv.port), sv.socket)
		b.WriteString("      <authentication>password-cleartext</authentication>\n      <username>%EMAILADDRESS%</username>\n")
		fmt.Fprintf(&b, "    </%s>\n", sv.direction)
	}
	if list := s.deps.ECHConfigList(); len(list) > 0 && len(p.ECH) > 0 {
		// One list for the SSL entries on the edge's ports: they share the
		// keys. Dovecot's or Postfix's own ports cannot do ECH.
		ports := make([]string, len(p.ECH))
		for i, port := range p.ECH {
			ports[i] = strconv.Itoa(port)
		}
		fmt.Fprintf(&b, "    <echConfigList xmlns=\"%s\" encoding=\"base64\" ports=\"%s\">%s</echConfigList>\n",
			ECHNamespace, strings.Join(ports, " "), base64.StdEncoding.EncodeToString(list))
	}
	b.WriteString("  </emailProvider>\n</clientConfig>\n")
	return b.Bytes()
}

func xmlText(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
