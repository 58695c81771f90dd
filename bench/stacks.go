package main

import (
	"context"
	"fmt"
)

// stack is one way for a client to reach a backend: the front-end
// processes, the backend processes and how to connect.
type stack struct {
	Name   string
	Target *target
	Front  []*daemon
	Back   []*daemon
}

// groups lists the front ends first, then the backends.
func (s stack) groups() []procGroup {
	var gs []procGroup
	for _, d := range append(append([]*daemon(nil), s.Front...), s.Back...) {
		gs = append(gs, procGroup{Label: d.Name, Roots: d.roots})
	}
	return gs
}

// restart gives every process on the path a fresh start (backend first),
// so that memory figures do not inherit what earlier runs left behind.
func (s stack) restart(ctx context.Context) error {
	for _, d := range append(append([]*daemon(nil), s.Back...), s.Front...) {
		if err := d.restart(ctx); err != nil {
			return fmt.Errorf("restart %s: %w", s.Name, err)
		}
	}
	return nil
}

// restartFront restarts only the front end, as an upgrade of it would.
func (s stack) restartFront(ctx context.Context) error {
	for _, d := range s.Front {
		if err := d.restart(ctx); err != nil {
			return fmt.Errorf("restart %s: %w", s.Name, err)
		}
	}
	return nil
}

func (l *lab) imapTarget(port int, ech []byte) *target {
	return &target{
		Addr:       fmt.Sprintf("127.0.0.1:%d", port),
		ServerName: benchDomain,
		ALPN:       []string{"imap"}, // what Delta Chat sends on 443
		ECH:        ech,
	}
}

// The stacks of the figures.
const (
	stackEdge      = "edge"
	stackEdgePlain = "edge without ECH"
	stackToday     = "chatmail today"
	stackTerm      = "nginx termination"
)

func (l *lab) edgeStack(withECH bool) stack {
	if withECH {
		return stack{stackEdge, l.imapTarget(l.ports.EdgeIMAP, l.echIMAP), []*daemon{l.edgeIMAP}, []*daemon{l.dovecot}}
	}
	return stack{stackEdgePlain, l.imapTarget(l.ports.EdgeIMAP, nil), []*daemon{l.edgeIMAP}, []*daemon{l.dovecot}}
}

func (l *lab) todayStack() stack {
	return stack{stackToday, l.imapTarget(l.ports.Today, nil), []*daemon{l.nginxToday}, []*daemon{l.dovecot}}
}

func (l *lab) termStack() stack {
	return stack{stackTerm, l.imapTarget(l.ports.TermIMAP, nil), []*daemon{l.nginxTerm}, []*daemon{l.dovecot}}
}

// The same front ends in front of the bench backend (bulk, traffic).
func (l *lab) edgeEchoStack() stack {
	return stack{stackEdge, l.imapTarget(l.ports.EdgeEcho, l.echEcho), []*daemon{l.edgeEcho}, []*daemon{l.backend}}
}

func (l *lab) termEchoStack() stack {
	return stack{stackTerm, l.imapTarget(l.ports.TermEcho, nil), []*daemon{l.nginxTerm}, []*daemon{l.backend}}
}
