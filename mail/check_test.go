package mail

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func dialTest(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func TestCheckStopsAtContextDeadline(t *testing.T) {
	addr := scriptedServer(t, nil) // never greets
	for _, p := range []Protocol{IMAP, SMTP} {
		t.Run(p.String(), func(t *testing.T) {
			outer := testContext(t, time.Minute)
			ctx, cancel := context.WithTimeout(outer, 200*time.Millisecond)
			defer cancel()
			_, err := check(ctx, p, dialTest(t, addr), nil)
			if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), p.String()+" greeting: ") {
				t.Fatalf("error %v, want %s greeting: ... deadline exceeded", err, p)
			}
			if outer.Err() != nil {
				t.Error("the check outlived its context")
			}
		})
	}
}

func TestCheckStopsWhenContextCancelled(t *testing.T) {
	addr := scriptedServer(t, nil)
	for _, p := range []Protocol{IMAP, SMTP} {
		t.Run(p.String(), func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			// Cancelling before or during the check must both end it.
			timer := time.AfterFunc(50*time.Millisecond, cancel)
			defer timer.Stop()
			_, err := check(ctx, p, dialTest(t, addr), nil)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("error %v, want context canceled", err)
			}
		})
	}
}

// TestCheckReadsRefusal runs the real clients against Protocol.Refusal: they
// must take it as a refusal, and the check must show it as the greeting.
func TestCheckReadsRefusal(t *testing.T) {
	for _, p := range []Protocol{IMAP, SMTP} {
		t.Run(p.String(), func(t *testing.T) {
			refusal := p.Refusal("mail.example.org", "backend down")
			addr := scriptedServer(t, refusal)
			res, err := check(testContext(t, 10*time.Second), p, dialTest(t, addr), nil)
			// go-imap reports a BYE greeting either as such or as the
			// connection's end, whichever it notices first.
			if err == nil || !strings.HasPrefix(err.Error(), p.String()+" greeting: ") {
				t.Errorf("error %v, want a refused greeting", err)
			}
			if res.Greeting != strings.TrimSuffix(string(refusal), "\r\n") {
				t.Errorf("greeting %q, want %q", res.Greeting, refusal)
			}
		})
	}
}

func TestCheckWrongPassword(t *testing.T) {
	daemons := startTestDaemons(t, requireProxyHeader)
	email, _, err := daemons.delivery.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	creds := &Credentials{User: email, Password: "not the password"}
	for _, tt := range []struct {
		p    Protocol
		addr string
		step string
	}{
		{IMAP, daemons.imapAddr, "imap LOGIN: "},
		{SMTP, daemons.smtpAddr, "smtp AUTH PLAIN: "},
	} {
		b := newTestBackend(t, BackendConfig{Protocol: tt.p, Mode: ModeProxy, Address: tt.addr})
		ctx := testContext(t, 10*time.Second)
		conn, err := b.Dial(ctx, ClientInfo{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := check(ctx, tt.p, conn, creds)
		if err == nil || !strings.HasPrefix(err.Error(), tt.step) || res.LoggedIn {
			t.Errorf("%v: LoggedIn %v, error %v, want %q...", tt.p, res.LoggedIn, err, tt.step)
		}
	}
}
