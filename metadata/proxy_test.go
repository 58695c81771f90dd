package metadata

import (
	"bufio"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail-edge/internal/metadatatest"
	"chatmail-edge/internal/testserver"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

const (
	helloLine   = "H3\t2\t0\t\tmetadata"
	user        = "alice@chat.example"
	inboxGUID   = "0b2ad00f6d4a5a66e2300000b9d9a3ab"
	serverAttr  = "shared/" + inboxGUID + "/vendor/vendor.dovecot/pvt/server/vendor/deltachat/"
	echLookup   = "L" + serverAttr + "ech\t" + user
	irohLookup  = "L" + serverAttr + "irohrelay\t" + user
	tokenLookup = "Lpriv/" + inboxGUID + "/devicetoken\t" + user
	// ioTimeout bounds each wait of a test for the proxy; the proxy's
	// own timeouts are what the tests check.
	ioTimeout = 10 * time.Second
)

type testProxy struct {
	*Proxy
	socket, echFile string
	logs            *observer.ObservedLogs
	served          chan error
}

// startProxy runs a proxy in front of the upstream socket with the given
// changes to its configuration, and publishes an ECH config list.
func startProxy(t *testing.T, upstream string, adjust func(*Config)) *testProxy {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{Upstream: upstream, ECHFile: filepath.Join(dir, "ech-config-list")}
	if adjust != nil {
		adjust(&cfg)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	p, err := New(cfg, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	tp := &testProxy{Proxy: p, socket: filepath.Join(dir, "proxy.sock"), echFile: cfg.ECHFile, logs: logs, served: make(chan error, 1)}
	ln, err := Listen(tp.socket, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	go func() { tp.served <- p.Serve(ln) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-tp.served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	tp.publish(t, configList(64, 7))
	return tp
}

func (tp *testProxy) publish(t *testing.T, list []byte) string {
	t.Helper()
	if _, err := PublishECHConfigList(tp.echFile, list); err != nil {
		t.Fatal(err)
	}
	return "O" + base64.StdEncoding.EncodeToString(list)
}

// dovecotConn is a connection to the proxy, spoken as Dovecot's dict
// client speaks it.
type dovecotConn struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (tp *testProxy) dial(t *testing.T) *dovecotConn {
	t.Helper()
	c := tp.dialRaw(t)
	c.send(helloLine)
	return c
}

func (tp *testProxy) dialRaw(t *testing.T) *dovecotConn {
	t.Helper()
	conn, err := net.Dial("unix", tp.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &dovecotConn{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// send writes the lines in one write, as Dovecot's output stream does
// when it has several queued.
func (c *dovecotConn) send(lines ...string) {
	c.t.Helper()
	c.write(strings.Join(lines, "\n") + "\n")
}

func (c *dovecotConn) write(data string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c.conn, data); err != nil {
		c.t.Fatal(err)
	}
}

func (c *dovecotConn) reply() string {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("waiting for a reply: %v (got %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n")
}

func (c *dovecotConn) expect(want ...string) {
	c.t.Helper()
	for _, w := range want {
		if got := c.reply(); got != w {
			c.t.Fatalf("reply %.100q, want %.100q", got, w)
		}
	}
}

// expectFailure reads one reply and checks that it is a failure of
// chatmail's service, with the given prefix (F, F<id>\t).
func (c *dovecotConn) expectFailure(prefix string) string {
	c.t.Helper()
	got := c.reply()
	if !strings.HasPrefix(got, prefix+"chatmail-edge metadata proxy: chatmail's metadata service") {
		c.t.Fatalf("reply %q, want a failure starting with %q", got, prefix)
	}
	return got
}

// expectClosed waits for the proxy to close the connection.
func (c *dovecotConn) expectClosed() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(ioTimeout))
	rest, err := io.ReadAll(c.r)
	if err != nil || len(rest) > 0 {
		c.t.Fatalf("want the proxy to close the connection, got %q, %v", rest, err)
	}
}

func upstreamSocket(t *testing.T) string {
	return filepath.Join(t.TempDir(), "chatmail.sock")
}

// withChatmail starts a stand-in of chatmail's service and a proxy in
// front of it, and publishes a list of n bytes; want is its lookup reply.
func withChatmail(t *testing.T, n int) (chatmail *metadatatest.Service, tp *testProxy, want string) {
	t.Helper()
	chatmail = metadatatest.Start(t, upstreamSocket(t))
	tp = startProxy(t, chatmail.Socket, nil)
	return chatmail, tp, tp.publish(t, configList(n, byte(n)))
}

// TestProxyAnswersECHAndPassesTheRest: the ECH entry from the file, every
// other request to chatmail's service, including a push token's
// transaction, on one connection.
func TestProxyAnswersECHAndPassesTheRest(t *testing.T) {
	chatmail, tp, want := withChatmail(t, 80)

	c := tp.dial(t)
	c.send(echLookup)
	c.expect(want)
	c.send(irohLookup)
	c.expect("O" + metadatatest.IrohRelay)
	c.send("B1\t"+user, "S1\tpriv/"+inboxGUID+"/devicetoken\ttoken-1", "C1")
	c.expect("O")
	c.send(tokenLookup)
	c.expect("Otoken-1")
	// A set that chatmail's service refuses fails as it would directly.
	c.send("B2\t"+user, "S2\tpriv/"+inboxGUID+"/other\tx", "C2")
	c.expect("F")
	c.send("I12\t0\tshared/" + inboxGUID + "/\t" + user)
	c.expect("")

	if got := chatmail.Tokens(user); len(got) != 1 || got[0] != "token-1" {
		t.Fatalf("chatmail's service stored %q, want the token", got)
	}
	// Passed unchanged, the hello first; the ECH lookup is not passed on.
	if got := chatmail.Lines('H'); len(got) != 1 || got[0] != helloLine {
		t.Fatalf("chatmail's service got hellos %q", got)
	}
	for _, l := range chatmail.Lines('L') {
		if strings.Contains(l, "deltachat/ech") {
			t.Fatalf("the ECH lookup reached chatmail's service: %q", l)
		}
	}
	if got := chatmail.Lines('S'); len(got) != 2 || got[0] != "S1\tpriv/"+inboxGUID+"/devicetoken\ttoken-1" {
		t.Fatalf("chatmail's service got sets %q", got)
	}
}

// TestProxyFollowsRotation: each lookup sees the file as it is now.
func TestProxyFollowsRotation(t *testing.T) {
	tp := startProxy(t, upstreamSocket(t), nil)
	c := tp.dial(t)
	for i := range 3 {
		want := tp.publish(t, configList(60+i, byte(i)))
		c.send(echLookup)
		c.expect(want)
	}
	os.Remove(tp.echFile)
	c.send(echLookup)
	c.expect("N")
	if tp.logs.FilterMessage("no ECH config list published yet: the METADATA entry is absent").Len() != 1 {
		t.Fatal("a missing file is not logged")
	}
}

// TestProxyECHOnlyNeedsNoUpstream: a connection that asks for the ECH
// entry only never reaches chatmail's service.
func TestProxyECHOnlyNeedsNoUpstream(t *testing.T) {
	chatmail := metadatatest.Start(t, upstreamSocket(t))
	tp := startProxy(t, chatmail.Socket, nil)
	c := tp.dial(t)
	c.send(echLookup, echLookup)
	c.reply()
	c.reply()
	if got := chatmail.Lines('H'); len(got) != 0 {
		t.Fatalf("chatmail's service was connected: %q", got)
	}
}

// TestProxyKeepsOrder: pipelined commands get their replies in the order
// they were sent, the local one between chatmail's.
func TestProxyKeepsOrder(t *testing.T) {
	_, tp, want := withChatmail(t, 70)
	c := tp.dial(t)
	c.send(irohLookup, echLookup, "L"+serverAttr+"maxsmtprecipients\t"+user, echLookup, "Lunknown\t"+user)
	c.expect("O"+metadatatest.IrohRelay, want, "O1000", want, "N")
}

// TestProxySplitLines: commands that arrive a byte at a time, and several
// in one write, are read as lines.
func TestProxySplitLines(t *testing.T) {
	_, tp, want := withChatmail(t, 70)
	c := tp.dialRaw(t)
	for _, b := range []byte(helloLine + "\n" + echLookup + "\n" + irohLookup + "\n") {
		c.write(string(b))
	}
	c.expect(want, "O"+metadatatest.IrohRelay)
}

// TestProxyPassesEscapedFieldsUnchanged: what Dovecot escaped reaches
// chatmail's service byte for byte, and a key whose escapes unescape to
// something else is not the ECH entry.
func TestProxyPassesEscapedFieldsUnchanged(t *testing.T) {
	chatmail := metadatatest.Start(t, upstreamSocket(t))
	tp := startProxy(t, chatmail.Socket, nil)
	c := tp.dial(t)
	set := "S1\tpriv/" + inboxGUID + "/devicetoken\ttab\001there\001nand\0011"
	c.send("B1\tal\001tice", set, "C1")
	c.expect("O")
	if got := chatmail.Lines('S'); len(got) != 1 || got[0] != set {
		t.Fatalf("chatmail's service got %q, want %q", got, set)
	}
	// "\001/" unescapes to "/": the key has an extra path step.
	c.send("Lshared/" + inboxGUID + "\001//vendor/vendor.dovecot/pvt/server/vendor/deltachat/ech\t" + user)
	c.expect("N")
	if got := chatmail.Lines('L'); len(got) != 1 {
		t.Fatalf("the escaped key did not go to chatmail's service: %q", got)
	}
}

// TestProxyUpstreamDown: with chatmail's service down, its entries fail
// as they would without the proxy (an error, not "not found"), and the
// ECH entry still answers on the same connection.
func TestProxyUpstreamDown(t *testing.T) {
	tp := startProxy(t, upstreamSocket(t), nil)
	want := tp.publish(t, configList(70, 5))
	c := tp.dial(t)
	c.send(irohLookup, echLookup)
	c.expectFailure("F")
	c.expect(want)
	c.send("B1\t"+user, "S1\tpriv/"+inboxGUID+"/devicetoken\tt", "C1")
	c.expectFailure("F1\t")
	c.send("D2")
	c.expectFailure("AF2\t")
	c.send("I12\t0\tshared/\t"+user, echLookup)
	c.expectFailure("F")
	c.expect(want)
	if tp.logs.FilterMessage("chatmail's metadata service failed; its entries fail on this connection, the ECH entry still answers").Len() != 1 {
		t.Fatalf("want one warning per connection, got %v", tp.logs.All())
	}
}

// TestProxyUpstreamStopsMidway: chatmail's service goes away between
// commands; what follows fails, the ECH entry answers, and a new
// connection from Dovecot reaches the service once it is back.
func TestProxyUpstreamStopsMidway(t *testing.T) {
	chatmail, tp, want := withChatmail(t, 70)
	c := tp.dial(t)
	c.send(irohLookup)
	c.expect("O" + metadatatest.IrohRelay)
	chatmail.Stop()
	c.send(irohLookup, echLookup)
	c.expectFailure("F")
	c.expect(want)

	chatmail.Restart(t)
	c2 := tp.dial(t)
	c2.send(irohLookup)
	c2.expect("O" + metadatatest.IrohRelay)
}

// scriptedUpstream serves each connection with handle, for replies
// chatmail's service does not make: none, late, out of order, broken.
func scriptedUpstream(t *testing.T, handle func(r *bufio.Reader, w net.Conn)) string {
	t.Helper()
	socket := upstreamSocket(t)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	testserver.ServeListener(t, ln, func(conn net.Conn) { handle(bufio.NewReader(conn), conn) })
	return socket
}

// replyAfter is an upstream that reads the hello and commands more lines,
// writes script, then reads on without answering (or hangs up, in the
// middle of a line if script ends so).
func replyAfter(commands int, script string, hangUp bool) func(*bufio.Reader, net.Conn) {
	return func(r *bufio.Reader, w net.Conn) {
		for range 1 + commands {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
		}
		io.WriteString(w, script)
		if hangUp {
			w.Close()
		}
		io.Copy(io.Discard, r)
	}
}

// readUntilClosed reads and ignores everything: an upstream that never
// answers.
func readUntilClosed(r *bufio.Reader, _ net.Conn) { io.Copy(io.Discard, r) }

// TestProxyUpstreamTimeout: a service that does not answer is given up
// after UpstreamTimeout, before Dovecot's own 30 s.
func TestProxyUpstreamTimeout(t *testing.T) {
	tp := startProxy(t, scriptedUpstream(t, readUntilClosed), func(c *Config) { c.UpstreamTimeout = 50 * time.Millisecond })
	want := tp.publish(t, configList(70, 8))
	c := tp.dial(t)
	c.send(irohLookup, echLookup, "B1\t"+user, "C1")
	if got := c.expectFailure("F"); !strings.Contains(got, "no reply within 50ms") {
		t.Fatalf("failure %q does not say why", got)
	}
	c.expect(want)
	c.expectFailure("F1\t")
}

// TestProxyOutOfOrderUpstream: a dict server that answers out of order
// (Dovecot's own, for clients of protocol 3.1 and later: "*<id>", then
// "+<id>\t<reply>") still gives Dovecot its replies in order, unframed.
func TestProxyOutOfOrderUpstream(t *testing.T) {
	upstream := scriptedUpstream(t, replyAfter(2, "*1\n*2\n+2\tOsecond\n+1\tOk1\tv1\n+1\tOk2\tv2\n+1\t\n", false))
	tp := startProxy(t, upstream, nil)
	want := tp.publish(t, configList(70, 9))
	c := tp.dial(t)
	c.send("I0\t0\tshared/\t"+user, echLookup, irohLookup)
	c.expect("Ok1\tv1", "Ok2\tv2", "", want, "Osecond")
}

// TestProxyBrokenUpstream: replies the protocol does not allow make the
// proxy give up on the service, not pass them to Dovecot.
func TestProxyBrokenUpstream(t *testing.T) {
	for name, script := range map[string]string{
		"unknown async id": "+9\tOx\n",
		"async id twice":   "*1\n*1\n",
		"bad async id":     "*x\n",
		"line too long":    strings.Repeat("O", maxUpstreamLine+1) + "\n",
		"end in mid-line":  "Opartial",
	} {
		t.Run(name, func(t *testing.T) {
			upstream := scriptedUpstream(t, replyAfter(1, script, name == "end in mid-line"))
			tp := startProxy(t, upstream, nil)
			want := tp.publish(t, configList(70, 10))
			c := tp.dial(t)
			c.send(irohLookup)
			c.expectFailure("F")
			c.send(irohLookup, echLookup)
			c.expectFailure("F")
			c.expect(want)
		})
	}
}

// TestProxyUnaskedReply: a reply when nothing waits is not passed on.
func TestProxyUnaskedReply(t *testing.T) {
	upstream := scriptedUpstream(t, replyAfter(1, "Oasked\nOunasked\n", false))
	tp := startProxy(t, upstream, nil)
	want := tp.publish(t, configList(70, 10))
	c := tp.dial(t)
	c.send(irohLookup)
	c.expect("Oasked")
	// Nothing tells Dovecot's side when the second line was read: wait
	// for the proxy's log line.
	deadline := time.Now().Add(ioTimeout)
	for tp.logs.FilterMessage("chatmail's metadata service failed; its entries fail on this connection, the ECH entry still answers").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the unasked reply was not noticed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.send(irohLookup, echLookup)
	if got := c.expectFailure("F"); !strings.Contains(got, "a reply for no waiting command") {
		t.Fatalf("failure %q does not say why", got)
	}
	c.expect(want)
}

// TestProxyHeldBackRepliesBounded: an out-of-order service cannot make the
// proxy hold more than maxBufferedReplies for a command that waits.
func TestProxyHeldBackRepliesBounded(t *testing.T) {
	row := "+2\tOk\t" + strings.Repeat("v", maxUpstreamLine-10) + "\n"
	upstream := scriptedUpstream(t, replyAfter(2, "*1\n*2\n"+row+row+row, false))
	tp := startProxy(t, upstream, nil)
	c := tp.dial(t)
	c.send(irohLookup, "I0\t0\tshared/\t"+user)
	if got := c.expectFailure("F"); !strings.Contains(got, "held back") {
		t.Fatalf("failure %q does not say why", got)
	}
	for {
		if got := c.reply(); strings.HasPrefix(got, "F") {
			break
		}
	}
}

// TestProxyBadInputFromDovecot: input Dovecot never sends ends the
// connection with a log line, as Dovecot's own dict server does.
func TestProxyBadInputFromDovecot(t *testing.T) {
	tp := startProxy(t, upstreamSocket(t), nil)
	for _, tc := range []struct{ name, input, log string }{
		{"no hello", echLookup + "\n", "want the hello first"},
		{"second hello", helloLine + "\n" + helloLine + "\n", "want the hello first"},
		{"old protocol", "H2\t1\t0\t\tmetadata\n", "protocol version"},
		{"unknown command", helloLine + "\nX1\n", "unknown command"},
		{"bad transaction id", helloLine + "\nBx\tuser\n", "transaction id"},
		{"empty line", helloLine + "\n\n", "empty line"},
		{"line too long", helloLine + "\nL" + strings.Repeat("k", maxDovecotLine) + "\n", "line too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tp.dialRaw(t)
			c.write(tc.input)
			c.expectClosed()
			found := false
			for _, e := range tp.logs.All() {
				if err, ok := e.ContextMap()["error"].(string); ok && strings.Contains(err, tc.log) {
					found = true
				}
			}
			if !found {
				t.Fatalf("no log line with %q: %v", tc.log, tp.logs.All())
			}
		})
	}
}

// TestProxyPendingLimit: at most maxPending commands wait for replies.
func TestProxyPendingLimit(t *testing.T) {
	tp := startProxy(t, scriptedUpstream(t, readUntilClosed), nil)
	c := tp.dial(t)
	var lines []string
	for range maxPending + 1 {
		lines = append(lines, irohLookup)
	}
	c.send(lines...)
	c.expectClosed()
	if tp.logs.FilterFieldKey("error").FilterMessage("closing the connection from Dovecot").Len() != 1 {
		t.Fatalf("no log line: %v", tp.logs.All())
	}
}

// TestProxyConnectionLimit: past MaxConnections a new connection is
// closed at once; the ones in use go on, and a slot frees when one ends.
func TestProxyConnectionLimit(t *testing.T) {
	tp := startProxy(t, upstreamSocket(t), func(c *Config) { c.MaxConnections = 1 })
	want := tp.publish(t, configList(70, 11))
	first := tp.dial(t)
	first.send(echLookup)
	first.expect(want)
	refused := tp.dialRaw(t)
	refused.expectClosed()
	first.send(echLookup)
	first.expect(want)
	first.conn.Close()
	// The slot is given back once the session has ended; nothing signals
	// that to a client, so try until a connection is served.
	deadline := time.Now().Add(ioTimeout)
	for {
		c := tp.dial(t)
		c.send(echLookup)
		c.conn.SetReadDeadline(time.Now().Add(ioTimeout))
		if line, err := c.r.ReadString('\n'); err == nil {
			if line != want+"\n" {
				t.Fatalf("reply %q", line)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection served after the first one ended")
		}
	}
}

// TestProxyIdleTimeout: a connection with nothing waiting is closed after
// IdleTimeout, also one that dribbles a line that never ends.
func TestProxyIdleTimeout(t *testing.T) {
	tp := startProxy(t, upstreamSocket(t), func(c *Config) { c.IdleTimeout = 50 * time.Millisecond })
	tp.dial(t).expectClosed()
	c := tp.dial(t)
	c.write("Lpartial")
	c.expectClosed()
}

// TestProxyClose: Close ends the connections and Serve returns nil.
func TestProxyClose(t *testing.T) {
	tp := startProxy(t, upstreamSocket(t), nil)
	c := tp.dial(t)
	c.send(echLookup)
	c.reply()
	tp.Close()
	c.expectClosed()
	if err := <-tp.served; err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	tp.served <- nil // for the cleanup
	if _, err := net.Dial("unix", tp.socket); err == nil {
		t.Fatal("the socket still accepts after Close")
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	ln, err := Listen(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v", fi.Mode().Perm())
	}
	// A socket left behind by a crash is replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = Listen(path, 0o600)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	ln.Close()
	// Anything else is not.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	if _, err := Listen(file, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("over a file: %v", err)
	}
}

func TestNewChecksConfig(t *testing.T) {
	for _, cfg := range []Config{{}, {Upstream: "u"}, {Upstream: "u", ECHFile: "f", IdleTimeout: -1}} {
		if _, err := New(cfg, zap.NewNop()); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestReadLine: lines longer than the reader's buffer are put together;
// one past the limit is refused.
func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", 10000)
	r := bufio.NewReaderSize(strings.NewReader(long+"\n"+long+"y\nshort\ntail"), 16)
	if l, err := readLine(r, len(long)); err != nil || string(l) != long {
		t.Fatalf("line at the limit: %d bytes, %v", len(l), err)
	}
	if _, err := readLine(r, len(long)); !errors.Is(err, errLineTooLong) {
		t.Fatalf("line past the limit: %v", err)
	}
	r = bufio.NewReader(strings.NewReader("short\ntail"))
	if l, err := readLine(r, 100); err != nil || string(l) != "short" {
		t.Fatalf("%q, %v", l, err)
	}
	if _, err := readLine(r, 100); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("unterminated line: %v", err)
	}
	if _, err := readLine(r, 100); !errors.Is(err, io.EOF) {
		t.Fatalf("at the end: %v", err)
	}
}
