// Package metadatatest is a stand-in of chatmail's metadata service for
// tests: a dict server on a unix socket that speaks Dovecot's dict protocol
// as chatmaild's dictproxy.py and metadata.py (chatmail/relay) do, line for
// line, and keeps the push tokens it is given in memory.
package metadatatest

import (
	"bufio"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
)

// IrohRelay is the value of /shared/vendor/deltachat/irohrelay (chatmail's
// default, https://<mail domain>).
const IrohRelay = "https://chat.example"

const serverPrefix = "vendor/vendor.dovecot/pvt/server/vendor/deltachat/"

// Service is a running stand-in.
type Service struct {
	Socket string

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	// tokens are the push tokens per address (metadata.py's devicetoken).
	tokens map[string][]string
	// lines is every line received, for tests that check what Dovecot
	// sent (the dict keys) and what reached the service.
	lines []string
}

// Start listens on socket (a path in the test's folder) and serves until
// Stop or the test's end.
func Start(t testing.TB, socket string) *Service {
	t.Helper()
	s := &Service{Socket: socket, conns: map[net.Conn]struct{}{}, tokens: map[string][]string{}}
	s.listen(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Service) listen(t testing.TB) {
	t.Helper()
	os.Remove(s.Socket)
	ln, err := net.Listen("unix", s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	// Dovecot's mail processes and the proxy may run as other users.
	if err := os.Chmod(s.Socket, 0o666); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[conn] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				s.serve(conn)
				s.mu.Lock()
				delete(s.conns, conn)
				s.mu.Unlock()
				conn.Close()
			})
		}
	})
}

// Stop ends the service as a crash would: the socket is gone, open
// connections are cut. The tokens stay for Restart.
func (s *Service) Stop() {
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Restart listens again after Stop.
func (s *Service) Restart(t testing.TB) {
	t.Helper()
	s.listen(t)
}

// Tokens are the push tokens stored for addr.
func (s *Service) Tokens(addr string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tokens[addr]...)
}

// Lines are the lines received so far whose first byte is op.
func (s *Service) Lines(op byte) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.lines {
		if len(l) > 0 && l[0] == op {
			out = append(out, l)
		}
	}
	return out
}

type transaction struct{ addr, res string }

// serve is dictproxy.py's loop_forever and handle_dovecot_request.
func (s *Service) serve(conn net.Conn) {
	r := bufio.NewReader(conn)
	// Transactions are per connection: Dovecot reuses ids across them.
	transactions := map[string]*transaction{}
	for {
		line, err := r.ReadString('\n')
		msg := strings.TrimSpace(line)
		if err != nil || msg == "" {
			return // as dictproxy.py: an empty line ends the connection
		}
		s.mu.Lock()
		s.lines = append(s.lines, msg)
		s.mu.Unlock()
		if res := s.handle(msg, transactions); res != "" {
			if _, err := conn.Write([]byte(res)); err != nil {
				return
			}
		}
	}
}

func (s *Service) handle(msg string, transactions map[string]*transaction) string {
	parts := strings.Split(msg[1:], "\t")
	switch msg[0] {
	case 'L':
		return s.lookup(parts)
	case 'I':
		return "\n" // no keys to list
	case 'H':
		return ""
	case 'B':
		addr := ""
		if len(parts) > 1 {
			addr = parts[1]
		}
		transactions[parts[0]] = &transaction{addr: addr, res: "O\n"}
	case 'S':
		tr, ok := transactions[parts[0]]
		if !ok {
			return "" // dictproxy.py raises KeyError and drops the connection
		}
		if !s.set(tr.addr, parts) {
			tr.res = "F\n"
		}
	case 'C':
		tr, ok := transactions[parts[0]]
		if !ok {
			return ""
		}
		delete(transactions, parts[0])
		return tr.res
	}
	return "" // unknown commands get no reply (dictproxy.py logs them)
}

// lookup is metadata.py's MetadataDictProxy.handle_lookup.
func (s *Service) lookup(parts []string) string {
	key := strings.SplitN(parts[0], "/", 3)
	if len(key) == 3 && key[0] == "priv" && key[2] == "devicetoken" && len(parts) > 1 {
		return "O" + strings.Join(s.Tokens(parts[1]), " ") + "\n"
	}
	if len(key) == 3 && key[0] == "shared" {
		switch strings.TrimPrefix(key[2], serverPrefix) {
		case "irohrelay":
			return "O" + IrohRelay + "\n"
		case "maxsmtprecipients":
			return "O1000\n"
		}
	}
	return "N\n"
}

// set is metadata.py's handle_set: a devicetoken is added once, messagenew
// (the push trigger) is accepted, other keys fail.
func (s *Service) set(addr string, parts []string) bool {
	if len(parts) < 2 {
		return false
	}
	key := strings.Split(parts[1], "/")
	value := ""
	if len(parts) > 2 {
		value = parts[2]
	}
	if len(key) != 3 || key[0] != "priv" {
		return false
	}
	switch key[2] {
	case "devicetoken":
		s.mu.Lock()
		defer s.mu.Unlock()
		if !slices.Contains(s.tokens[addr], value) {
			s.tokens[addr] = append(s.tokens[addr], value)
		}
		return true
	case "messagenew":
		return true
	}
	return false
}
