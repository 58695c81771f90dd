// Package mail holds everything chatmail-edge needs to talk to the mail
// daemons behind it: dialing Dovecot and Postfix (re-encrypted TLS or a
// plaintext loopback port with a PROXY v2 header), the IMAP and SMTP checks
// behind health probes, and the in-process local delivery used by `demo`.
package mail

import (
	"strconv"
)

// Protocol is a mail protocol the edge forwards.
type Protocol uint8

const (
	IMAP Protocol = iota + 1 // RFC 9051, Dovecot
	SMTP                     // RFC 5321 / RFC 6409 submission, Postfix
)

func (p Protocol) String() string {
	switch p {
	case IMAP:
		return "imap"
	case SMTP:
		return "smtp"
	}
	return "Protocol(" + strconv.Itoa(int(p)) + ")"
}

// Bounds for the text put into a refusal, so that the line stays well below
// the 512 octets of an SMTP reply line (RFC 5321 §4.5.3.1.5).
const (
	maxRefusalHost   = 255 // a DNS name (RFC 1035 §2.3.4)
	maxRefusalReason = 200
)

// Refusal returns the line the edge sends to a client it will not serve
// (overload, backend down) before closing the connection, or nil for an
// unknown protocol. host and reason are reduced to printable ASCII on one
// line.
//
//   - IMAP: an untagged BYE as the greeting (RFC 9051 §7.1.5) with the
//     UNAVAILABLE response code (RFC 5530 §3).
//   - SMTP: 421, the server is closing the transmission channel
//     (RFC 5321 §3.8 and §4.2.2), enhanced code 4.3.0 "other or undefined
//     mail system status" (RFC 3463 §3.5).
func (p Protocol) Refusal(host, reason string) []byte {
	var prefix string
	switch p {
	case IMAP:
		prefix = "* BYE [UNAVAILABLE]"
	case SMTP:
		prefix = "421 4.3.0"
	default:
		return nil
	}
	line := make([]byte, 0, len(prefix)+maxRefusalHost+maxRefusalReason+4)
	line = append(line, prefix...)
	line = appendRefusalText(line, host, maxRefusalHost)
	line = appendRefusalText(line, reason, maxRefusalReason)
	if len(line) == len(prefix) {
		// IMAP resp-text needs a character after the code (RFC 9051 §9).
		line = append(line, " service unavailable"...)
	}
	return append(line, "\r\n"...)
}

// appendRefusalText appends " " and s with every byte outside printable ASCII
// (CR and LF in particular, which would end the line and let the text inject
// a second response) replaced by a space, runs of spaces collapsed, and at
// most limit bytes. An s with nothing printable appends nothing.
func appendRefusalText(dst []byte, s string, limit int) []byte {
	start := len(dst)
	dst = append(dst, ' ')
	space := true
	for i := 0; i < len(s) && len(dst)-start-1 < limit; i++ {
		c := s[i]
		if c <= ' ' || c > '~' {
			if !space {
				dst = append(dst, ' ')
			}
			space = true
			continue
		}
		dst = append(dst, c)
		space = false
	}
	if space {
		dst = dst[:len(dst)-1] // trailing space, or nothing at all was printable
	}
	return dst
}
