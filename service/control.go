package service

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The control socket ([edge] control_socket, 0600 in the unit's runtime
// folder, so root and the service user only) is how `chatmail-edge upgrade`
// asks the running serve to upgrade and learns how it went. One request
// line, one answer line:
//
//	upgrade                      (client)
//	ok <what happened>           (serve: a new process serves)
//	error <why>                  (serve: this process goes on serving)
const (
	controlUpgrade  = "upgrade"
	controlOK       = "ok "
	controlError    = "error "
	maxControlLine  = 256
	controlReadWait = 5 * time.Second
)

// upgradeRequest asks serve's loop for an upgrade; it answers on done.
type upgradeRequest struct {
	done chan error // buffered: the loop never waits for the asker
	// result, set before done is written, is what happened after a
	// success, for the asker.
	result string
}

func newUpgradeRequest() *upgradeRequest { return &upgradeRequest{done: make(chan error, 1)} }

// controlServer answers on the control socket until closed.
type controlServer struct {
	ln       net.Listener
	log      *zap.Logger
	requests chan<- *upgradeRequest
	stopped  chan struct{} // serve's loop is gone
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func serveControl(ln net.Listener, log *zap.Logger, requests chan<- *upgradeRequest) *controlServer {
	cs := &controlServer{ln: ln, log: log, requests: requests, stopped: make(chan struct{})}
	cs.wg.Go(cs.accept)
	return cs
}

func (cs *controlServer) accept() {
	for {
		c, err := cs.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				cs.log.Error("control socket stopped", zap.Error(err))
			}
			return
		}
		cs.wg.Go(func() { cs.handle(c) })
	}
}

func (cs *controlServer) handle(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(controlReadWait))
	line, err := bufio.NewReaderSize(io.LimitReader(c, maxControlLine), maxControlLine).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != controlUpgrade {
		fmt.Fprintf(c, "%sunknown request %q (want %q)\n", controlError, strings.TrimSpace(line), controlUpgrade)
		return
	}
	req := newUpgradeRequest()
	select {
	case cs.requests <- req:
	case <-cs.stopped:
		fmt.Fprintf(c, "%sthe edge is stopping\n", controlError)
		return
	}
	var answer string
	select {
	case err = <-req.done:
		answer = controlOK + req.result
		if err != nil {
			answer = controlError + err.Error()
		}
	case <-cs.stopped:
		answer = controlError + "the edge stopped before the upgrade finished"
	}
	c.SetWriteDeadline(time.Now().Add(controlReadWait))
	fmt.Fprintln(c, strings.ReplaceAll(answer, "\n", " "))
}

// close stops accepting; a request being answered still gets its answer.
func (cs *controlServer) close() {
	cs.ln.Close()
}

// stop ends every open request once serve's loop is gone.
func (cs *controlServer) stop() {
	cs.stopOnce.Do(func() {
		cs.ln.Close()
		close(cs.stopped)
		cs.wg.Wait()
	})
}

// RequestUpgrade asks the serve behind the control socket at path to
// upgrade and returns its answer.
func RequestUpgrade(path string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("unix", path, controlReadWait)
	if err != nil {
		return "", fmt.Errorf("connect to the running edge's control socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(c, controlUpgrade); err != nil {
		return "", fmt.Errorf("send the upgrade request: %w", err)
	}
	line, err := bufio.NewReaderSize(io.LimitReader(c, 4096), 4096).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read the answer to the upgrade request: %w", err)
	}
	line = strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(line, controlOK):
		return strings.TrimPrefix(line, controlOK), nil
	case strings.HasPrefix(line, controlError):
		return "", errors.New(strings.TrimPrefix(line, controlError))
	}
	return "", fmt.Errorf("unexpected answer %q", line)
}
