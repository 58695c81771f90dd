package web

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// hostSeeds are Host header values as clients send them, and some that
// are not.
var hostSeeds = []string{
	"chat.example", "CHAT.Example:443", "www.chat.example.", "www.chat.example.:8443", "autoconfig.chat.example",
	"127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:443", "[2001:DB8::1]:8443", "[::ffff:192.0.2.1]",
	"", ":443", "::1", "[::1", "::1]", "[]", "[www.chat.example]", "[www.chat.example]:443", "[127.0.0.1]",
	"chat.example:", "chat.example:abc", "chat.example:+1", "a:b:c", "[fe80::1%25eth0]:1", "chat.example..",
	`evil"host`, "user@chat.example", "chat.example/path", "chat.example:443:443", "[::1]x", "[::1]:80:80",
}

// FuzzRequestHost: requestHost agrees with net/url's reading of an
// authority (RFC 3986 §3.2.2, §3.2.3: a reg-name or IPv4 address, or an IPv6
// literal in brackets, then an optional port of digits) wherever net/url
// accepts it unchanged, and what net/url refuses never becomes a host the
// redirect would use.
func FuzzRequestHost(f *testing.F) {
	for _, h := range hostSeeds {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, authority string) {
		got := requestHost(&http.Request{Host: authority})
		if got != strings.ToLower(got) {
			t.Fatalf("requestHost(%q) = %q: not lower case", authority, got)
		}
		u, err := url.Parse("http://" + authority + "/")
		if err != nil {
			if got != "" && validHost(got) {
				t.Fatalf("requestHost(%q) = %q, a valid host, but net/url refuses the authority: %v", authority, got, err)
			}
			return
		}
		if u.Host != authority || u.User != nil || u.Path != "/" {
			return // not an authority on its own (userinfo, a path, an escape)
		}
		if want := strings.ToLower(strings.TrimSuffix(u.Hostname(), ".")); got != want {
			t.Fatalf("requestHost(%q) = %q, net/url reads host %q", authority, got, want)
		}
	})
}

// FuzzRedirectLocation: the :80 redirect always points to https on the
// request's host when that is a valid one, else on the relay's domain, with
// the request's path, and its Location is one well-formed URL.
func FuzzRedirectLocation(f *testing.F) {
	for _, h := range hostSeeds {
		f.Add(h, "/")
	}
	f.Add("chat.example", "/some/path?q=1")
	f.Add("[::1]:80", "/%2e%2e/x?y=%0d%0a")
	s, err := New(Config{Domain: "chat.example", HTTPSPort: 443}, Deps{ECHConfigList: func() []byte { return nil }})
	if err != nil {
		f.Fatal(err)
	}
	h := s.RedirectHandler()
	f.Fuzz(func(t *testing.T, host, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil || !strings.HasPrefix(target, "/") || strings.Contains(target, " ") {
			return // not in an HTTP/1.1 request line: net/http answers 400 before any handler
		}
		if strings.Contains(target, "#") {
			return // no origin-form (RFC 9112 §3.2.1); passed on as it came, like nginx's $request_uri
		}
		req := &http.Request{Method: "GET", Host: host, URL: u, RequestURI: target, Header: http.Header{}}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		loc := rec.Header().Get("Location")
		if rec.Code != http.StatusMovedPermanently || strings.IndexFunc(loc, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
			t.Fatalf("Host %q %q: %d, Location %q", host, target, rec.Code, loc)
		}
		parsed, err := url.Parse(loc)
		if err != nil || parsed.Scheme != "https" || parsed.User != nil || parsed.Port() != "" {
			t.Fatalf("Host %q %q: Location %q is not an https URL of the default port: %v", host, target, loc, err)
		}
		want := requestHost(req)
		if want == "" || !validHost(want) {
			want = "chat.example"
		}
		if parsed.Hostname() != want {
			t.Fatalf("Host %q: Location %q goes to %q, want %q", host, loc, parsed.Hostname(), want)
		}
		// http.Redirect escapes what is not ASCII; the rest is kept.
		if rest := strings.TrimPrefix(loc, "https://"+parsed.Host); percentDecode(rest) != percentDecode(u.RequestURI()) {
			t.Fatalf("Location %q carries %q, want the request's %q", loc, rest, u.RequestURI())
		}
	})
}

// percentDecode decodes every valid %XX and leaves the rest.
func percentDecode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(v))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
