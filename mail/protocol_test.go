package mail

import (
	"strings"
	"testing"
)

func TestProtocolString(t *testing.T) {
	if IMAP.String() != "imap" || SMTP.String() != "smtp" || Protocol(9).String() != "Protocol(9)" {
		t.Errorf("names: %v %v %v", IMAP, SMTP, Protocol(9))
	}
}

func TestRefusal(t *testing.T) {
	tests := []struct {
		p            Protocol
		host, reason string
		want         string
	}{
		{IMAP, "mail.example.org", "backend down", "* BYE [UNAVAILABLE] mail.example.org backend down\r\n"},
		{SMTP, "mail.example.org", "too many connections", "421 4.3.0 mail.example.org too many connections\r\n"},
		{SMTP, "mx", "evil\r\n250 OK\r\n", "421 4.3.0 mx evil 250 OK\r\n"},
		{IMAP, "", "\x00\t", "* BYE [UNAVAILABLE] service unavailable\r\n"},
		{IMAP, "", "busy ", "* BYE [UNAVAILABLE] busy\r\n"},
		{SMTP, "h\xc3\xa9st", "caf\xc3\xa9", "421 4.3.0 h st caf\r\n"},
	}
	for _, tt := range tests {
		if got := string(tt.p.Refusal(tt.host, tt.reason)); got != tt.want {
			t.Errorf("%v.Refusal(%q, %q) = %q, want %q", tt.p, tt.host, tt.reason, got, tt.want)
		}
	}
	if got := Protocol(0).Refusal("h", "r"); got != nil {
		t.Errorf("unknown protocol refusal %q, want nil", got)
	}

	long := string(SMTP.Refusal(strings.Repeat("h", 1000), strings.Repeat("r", 1000)))
	if len(long) > 512 || strings.Count(long, "\r\n") != 1 || !strings.HasSuffix(long, "\r\n") {
		t.Errorf("long refusal is %d bytes (RFC 5321 §4.5.3.1.5 allows 512) or not one line", len(long))
	}
}
