package acmetest

import (
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// StartDNS answers A 127.0.0.1 for names and NXDOMAIN for anything else,
// over TCP (Pebble's validation authority asks over TCP) on 127.0.0.1:0. It
// returns the server's address.
func StartDNS(t testing.TB, names ...string) string {
	t.Helper()
	known := make(map[string]bool, len(names))
	for _, n := range names {
		known[dns.Fqdn(strings.ToLower(n))] = true
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		for _, question := range q.Question {
			name := strings.ToLower(question.Name)
			if !known[name] {
				m.Rcode = dns.RcodeNameError
				continue
			}
			if question.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}
