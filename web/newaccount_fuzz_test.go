package web

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"
)

// cgiOutputSeeds are answers of chatmail's newemail.py and of broken
// scripts.
var cgiOutputSeeds = []string{
	"Content-Type: application/json\n\n{\"email\": \"abc123@chat.example\", \"password\": \"s3cr3t-s3cr3t\"}\n",
	"Content-Type: application/json\r\n\r\n{\"email\":\"x@chat.example\",\"password\":\"p\"}",
	"Status: 500 Internal Server Error\nContent-Type: text/plain\n\nfailed\n",
	"Status: 403 Forbidden\nContent-Type: text/plain\n\n",
	"Location: https://chat.example/\n\n",
	"Location: /elsewhere\n\n",
	"Content-Type: text/plain\nContent-Length: 2\n\nhello",
	"Content-Type: text/plain\nConnection: close\nTransfer-Encoding: chunked\n\nx",
	"Content-Type: text/plain\nX-Bad: a\x00b\n\nx",
	"Status: 099 Low\nContent-Type: text/plain\n\nx",
	"Status: -01\nContent-Type: text/plain\n\nx",
	"Status: 101 Switching Protocols\nUpgrade: websocket\n\n",
	"Status: 103 Early Hints\nContent-Type: text/plain\n\nx",
	"Status: 999\nContent-Type: text/plain\n\nx",
	"Status: 20\n\n",
	"Status: abc\nContent-Type: text/plain\n\nx",
	"no headers at all",
	"\n\n",
	"",
}

// FuzzNewAccountCGIOutput runs the account script's output (here cat,
// which answers what it is fed) through POST /new and checks what the
// client gets: a final status from 200 to 599, only valid header fields,
// none that would change the response's framing, never cacheable, and a
// body that is at most maxCGIOutput and, when the script's answer is
// passed on (marked no-store), the script's own body.
func FuzzNewAccountCGIOutput(f *testing.F) {
	cat, err := exec.LookPath("cat")
	if err != nil {
		f.Skip("no cat to play the account script")
	}
	for _, s := range cgiOutputSeeds {
		f.Add([]byte(s))
	}
	// No test logger: the fuzz target's runs must not log through f.
	s, err := New(Config{Domain: "chat.example", NewAccountCGI: cat, NewAccountTimeout: 5 * time.Second}, Deps{ECHConfigList: func() []byte { return nil }})
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	f.Fuzz(func(t *testing.T, output []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "https://chat.example/new", bytes.NewReader(output)))
		if rec.Code < 200 || rec.Code > 599 {
			t.Fatalf("status %d", rec.Code)
		}
		for name, values := range rec.Header() {
			if !httpguts.ValidHeaderFieldName(name) {
				t.Fatalf("invalid header name %q", name)
			}
			for _, v := range values {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("invalid value %q of %s", v, name)
				}
			}
		}
		for _, framing := range []string{"Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Trailer"} {
			if v, ok := rec.Header()[framing]; ok {
				t.Fatalf("the script set %s: %q", framing, v)
			}
		}
		body := rec.Body.Bytes()
		if len(body) > maxCGIOutput {
			t.Fatalf("%d bytes of body", len(body))
		}
		if rec.Header().Get("Cache-Control") != "no-store" {
			// Not the script's answer but the edge's own error, which
			// says nothing about the script's output.
			if (rec.Code != http.StatusInternalServerError && rec.Code != http.StatusBadGateway) || string(body) != "account creation failed\n" {
				t.Fatalf("status %d with body %q and no Cache-Control: no-store", rec.Code, body)
			}
			return
		}
		if !bytes.HasSuffix(output, body) {
			t.Fatalf("status %d with body %q, not the end of the script's output %q", rec.Code, body, output)
		}
		// A 200 needs the script to say so: a Content-Type or its Status line.
		if rec.Code == http.StatusOK && rec.Header().Get("Content-Type") == "" && !bytes.Contains(output, []byte("Status: 200")) {
			t.Fatalf("200 to the script's output %q", output)
		}
	})
}
