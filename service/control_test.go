package service

import (
	"bufio"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// The control socket answers one request line with one answer line: an
// upgrade's outcome from serve's loop, an error for anything else.
func TestControlSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	requests := make(chan *upgradeRequest)
	cs := serveControl(ln, zap.NewNop(), requests)
	defer cs.stop()

	// The loop's answers: a failure, then a success.
	go func() {
		req := <-requests
		req.done <- errors.New("new process: child exited: exit status 78")
		req = <-requests
		req.result = "a new process serves"
		req.done <- nil
	}()
	if _, err := RequestUpgrade(path, 10*time.Second); err == nil || !strings.Contains(err.Error(), "exit status 78") {
		t.Fatalf("failed upgrade: %v", err)
	}
	if got, err := RequestUpgrade(path, 10*time.Second); err != nil || got != "a new process serves" {
		t.Fatalf("upgrade: %q, %v", got, err)
	}

	for _, bad := range []string{"reload\n", strings.Repeat("u", 1000) + "\n", "upgrade"} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(bad))
		if bad == "upgrade" { // no end of line: the read deadline ends it
			c.(*net.UnixConn).CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || !strings.HasPrefix(line, controlError+"unknown request") {
			t.Errorf("request %.20q: answer %q, %v", bad, line, err)
		}
	}

	// Once serve's loop is gone, a request is refused instead of hanging.
	cs.stop()
	if _, err := RequestUpgrade(path, 10*time.Second); err == nil {
		t.Fatal("an upgrade request after stop succeeded")
	}
}
