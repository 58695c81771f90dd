package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The bench backend is the plaintext server behind the front ends for the
// bulk and "after traffic" figures. It greets like an IMAP server, then reads
// command lines:
//
//	SINK n    read n bytes, then answer "OK\r\n"
//	SOURCE n  send n bytes
//	ECHO n    send back the next n bytes as they come
//
// and waits for the next command, so a connection can go idle after traffic.
const (
	backendGreeting = "* OK [CAPABILITY IMAP4rev1] bench backend ready\r\n"
	proxyV2Sig      = "\r\n\r\n\x00\r\nQUIT\n" // proxy-protocol.txt §2.2
	proxyHeaderWait = 5 * time.Second
	backendBufSize  = 32 << 10
)

// backendCommand formats a command line of the bench backend.
func backendCommand(verb string, n int64) string { return fmt.Sprintf("%s %d\r\n", verb, n) }

func cmdBackend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	plain := fs.String("listen", "", "address for connections without a PROXY header")
	proxied := fs.String("listen-proxy", "", "address for connections that start with a PROXY v1 or v2 header (nginx proxy_protocol, the edge's proxy mode)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *plain == "" && *proxied == "" {
		return errors.New("backend: give -listen and/or -listen-proxy")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for addr, withHeader := range map[string]bool{*plain: false, *proxied: true} {
		if addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("backend: listen on %s: %w", addr, err)
		}
		go func() { <-ctx.Done(); ln.Close() }()
		wg.Go(func() { errs <- serveBackend(ln, withHeader) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return <-errs
}

func serveBackend(ln net.Listener, withHeader bool) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: keep serving those already connected.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			handleBackendConn(c, withHeader)
		}()
	}
}

func handleBackendConn(c net.Conn, withHeader bool) error {
	r := bufio.NewReaderSize(c, backendBufSize)
	if withHeader {
		c.SetReadDeadline(time.Now().Add(proxyHeaderWait))
		if err := skipProxyHeader(r); err != nil {
			return err
		}
		c.SetReadDeadline(time.Time{})
	}
	if _, err := io.WriteString(c, backendGreeting); err != nil {
		return err
	}
	return serveBackendCommands(r, c)
}

// serveBackendCommands runs the command loop until the client leaves.
func serveBackendCommands(r *bufio.Reader, w io.Writer) error {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		verb, n, err := parseBackendCommand(line)
		if err != nil {
			if _, err := fmt.Fprintf(w, "BAD %v\r\n", err); err != nil {
				return err
			}
			continue
		}
		switch verb {
		case "SINK":
			if _, err := io.CopyN(io.Discard, r, n); err != nil {
				return err
			}
			_, err = io.WriteString(w, "OK\r\n")
		case "SOURCE":
			_, err = io.CopyN(w, zeroReader{}, n)
		case "ECHO":
			_, err = io.CopyBuffer(w, io.LimitReader(r, n), make([]byte, backendBufSize))
		}
		if err != nil {
			return err
		}
	}
}

func parseBackendCommand(line string) (verb string, n int64, err error) {
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", 0, fmt.Errorf("want VERB COUNT, got %q", strings.TrimSpace(line))
	}
	switch f[0] {
	case "SINK", "SOURCE", "ECHO":
	default:
		return "", 0, fmt.Errorf("unknown command %q", f[0])
	}
	n, err = strconv.ParseInt(f[1], 10, 64)
	if err != nil || n < 0 {
		return "", 0, fmt.Errorf("bad count %q", f[1])
	}
	return f[0], n, nil
}

// skipProxyHeader consumes a PROXY v1 (text) or v2 (binary) header; the
// bench has no use for its contents. Anything else is an error, as on
// Dovecot's haproxy=yes port.
func skipProxyHeader(r *bufio.Reader) error {
	head, err := r.Peek(len(proxyV2Sig))
	if err != nil {
		return fmt.Errorf("read PROXY header: %w", err)
	}
	if string(head) == proxyV2Sig {
		fixed, err := r.Peek(16)
		if err != nil {
			return fmt.Errorf("read PROXY v2 header: %w", err)
		}
		if fixed[12]>>4 != 2 {
			return fmt.Errorf("PROXY v2 header with version %d", fixed[12]>>4)
		}
		_, err = r.Discard(16 + int(binary.BigEndian.Uint16(fixed[14:16])))
		return err
	}
	if bytes.HasPrefix(head, []byte("PROXY ")) {
		// At most 107 bytes with CRLF (proxy-protocol.txt §2.1).
		for i := 0; i < 107; i++ {
			b, err := r.ReadByte()
			if err != nil {
				return fmt.Errorf("read PROXY v1 header: %w", err)
			}
			if b == '\n' {
				return nil
			}
		}
		return errors.New("PROXY v1 header longer than 107 bytes")
	}
	return fmt.Errorf("no PROXY header (starts %q)", head)
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
