package web

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEmbeddedSiteWhenFolderMissing(t *testing.T) {
	h := newTestServerWith(t, Config{Domain: "chat.example", SiteDir: filepath.Join(t.TempDir(), "absent")}, nil).Handler()
	rec := do(h, "GET", "https://chat.example/")
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/html" || !strings.Contains(rec.Body.String(), "chatmail relay") {
		t.Fatalf("embedded index: %d %q", rec.Code, rec.Body.String())
	}
	if rec := do(h, "GET", "https://chat.example/robots.txt"); rec.Code != 200 || rec.Body.String() != "User-agent: *\nDisallow: /\n" {
		t.Fatalf("embedded robots.txt: %d %q", rec.Code, rec.Body)
	}
	if rec := do(h, "GET", "https://chat.example/status.html"); rec.Code != 404 {
		t.Fatalf("assets outside site/ are served: %d", rec.Code)
	}
}

// TestSiteStaysInsideItsFolder: a symbolic link out of the website folder
// is not followed, and the folder is never listed.
func TestSiteStaysInsideItsFolder(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret.txt"), []byte("secret"), 0o644)
	site := t.TempDir()
	os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(site, "link.txt"))
	os.Symlink(outside, filepath.Join(site, "dir"))
	os.Mkdir(filepath.Join(site, "empty"), 0o755)
	os.WriteFile(filepath.Join(site, "data.bin"), []byte{1, 2, 3}, 0o644)
	os.WriteFile(filepath.Join(site, "inside.html"), []byte("inside"), 0o644)
	os.Symlink("inside.html", filepath.Join(site, "alias.html"))
	h := newTestServerWith(t, Config{Domain: "chat.example", SiteDir: site}, nil).Handler()
	for _, path := range []string{"/link.txt", "/dir/secret.txt", "/empty/", "/"} {
		if rec := do(h, "GET", "https://chat.example"+path); rec.Code != 404 || strings.Contains(rec.Body.String(), "secret") {
			t.Errorf("GET %s: %d %q", path, rec.Code, rec.Body)
		}
	}
	if rec := do(h, "GET", "https://chat.example/alias.html"); rec.Code != 200 || rec.Body.String() != "inside" {
		t.Errorf("a link inside the folder: %d %q", rec.Code, rec.Body)
	}
	if rec := do(h, "GET", "https://chat.example/data.bin"); rec.Header().Get("Content-Type") != "application/octet-stream" {
		t.Errorf("unknown extension: %q, want nginx's default_type", rec.Header().Get("Content-Type"))
	}
	if rec := do(h, "GET", "https://chat.example/empty?x=1"); rec.Code != 301 || rec.Header().Get("Location") != "/empty/?x=1" {
		t.Errorf("folder without slash: %d %q", rec.Code, rec.Header().Get("Location"))
	}
}

func TestGzip(t *testing.T) {
	site := t.TempDir()
	big := strings.Repeat("<p>chatmail</p>\n", 200)
	os.WriteFile(filepath.Join(site, "index.html"), []byte(big), 0o644)
	os.WriteFile(filepath.Join(site, "tiny.html"), []byte("<p>hi</p>"), 0o644)
	os.WriteFile(filepath.Join(site, "img.png"), []byte(big), 0o644)
	h := newTestServerWith(t, Config{Domain: "chat.example", SiteDir: site}, nil).Handler()
	get := func(path, accept string, extra ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "https://chat.example"+path, nil)
		req.Header.Set("Accept-Encoding", accept)
		if len(extra) == 2 {
			req.Header.Set(extra[0], extra[1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	rec := get("/", "br, gzip;q=0.8")
	if rec.Header().Get("Content-Encoding") != "gzip" || rec.Header().Get("Content-Length") != "" || rec.Header().Get("Vary") != "Accept-Encoding" {
		t.Fatalf("no gzip: %v", rec.Header())
	}
	zr, err := gzip.NewReader(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	if plain, _ := io.ReadAll(zr); string(plain) != big {
		t.Fatal("gzip body differs")
	}
	// A Range request of a compressible file gets the whole body, compressed.
	if rec := get("/", "gzip", "Range", "bytes=0-9"); rec.Code != 200 || rec.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("range with gzip: %d %v", rec.Code, rec.Header())
	}
	for _, c := range []struct{ path, accept string }{{"/", ""}, {"/", "gzip;q=0"}, {"/", "identity"}, {"/tiny.html", "gzip"}, {"/img.png", "gzip"}} {
		if rec := get(c.path, c.accept); rec.Header().Get("Content-Encoding") != "" || rec.Code != 200 {
			t.Errorf("%s with Accept-Encoding %q: %d %v", c.path, c.accept, rec.Code, rec.Header())
		}
	}
	if rec := get("/", "", "Range", "bytes=0-9"); rec.Code != http.StatusPartialContent || rec.Body.String() != big[:10] {
		t.Errorf("range without gzip: %d %q", rec.Code, rec.Body)
	}
}

func TestAcceptsGzip(t *testing.T) {
	for header, want := range map[string]bool{
		"gzip": true, "GZIP": true, "deflate, gzip;q=1.0": true, "*": true, "x-gzip": true, "gzip; q=0.5": true,
		"": false, "identity": false, "gzip;q=0": false, "gzip; q=0.0": false, "br": false, "gzipx": false,
	} {
		if got := acceptsGzip(header); got != want {
			t.Errorf("acceptsGzip(%q) = %v", header, got)
		}
	}
}

// TestSiteHidesDotfiles: a site folder that is a git checkout does not give
// its history away, nor any other dotfile; /.well-known/ is served.
func TestSiteHidesDotfiles(t *testing.T) {
	site := t.TempDir()
	for name, data := range map[string]string{
		".git/HEAD": "ref: refs/heads/main\n", ".env": "SECRET=1\n", "sub/.htpasswd": "admin:x\n",
		".well-known/acme-challenge/token": "token.key", ".well-known/.hidden": "no", "page.html": "page",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(site, name)), 0o755)
		os.WriteFile(filepath.Join(site, name), []byte(data), 0o644)
	}
	h := newTestServerWith(t, Config{Domain: "chat.example", SiteDir: site}, nil).Handler()
	for _, p := range []string{"/.git/HEAD", "/.git/", "/.git", "/.env", "/sub/.htpasswd", "/.well-known/.hidden", "/%2egit/HEAD"} {
		if rec := do(h, "GET", "https://chat.example"+p); rec.Code != 404 {
			t.Errorf("GET %s: %d %q, want 404", p, rec.Code, rec.Body)
		}
	}
	for p, want := range map[string]string{"/.well-known/acme-challenge/token": "token.key", "/page.html": "page"} {
		if rec := do(h, "GET", "https://chat.example"+p); rec.Code != 200 || rec.Body.String() != want {
			t.Errorf("GET %s: %d %q, want %q", p, rec.Code, rec.Body, want)
		}
	}
}
