package web

import (
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"strings"

	"chatmail-edge/assets"

	"go.uber.org/zap"
)

// site serves the relay's website folder like nginx's
// `root /var/www/html; index index.html index.htm; try_files $uri $uri/ =404`,
// or the embedded default site when the folder does not exist.
type site struct {
	dir string
	log *zap.Logger
}

// indexFiles are tried in a folder, in nginx's order.
var indexFiles = []string{"index.html", "index.htm"}

func (st *site) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET, HEAD")
		return
	}
	fsys, closeFS, err := st.open()
	if err != nil {
		st.log.Error("website folder unusable", zap.String("dir", st.dir), zap.Error(err))
		http.Error(w, "site unavailable", http.StatusInternalServerError)
		return
	}
	defer closeFS()
	compressed(w, r, func(w http.ResponseWriter, r *http.Request) { serveFromFS(w, r, fsys) })
}

// open returns the website folder, opened with os.Root so that neither ".."
// nor a symbolic link leads out of it, or the embedded site when the folder
// does not exist. The folder is opened per request: cmdeploy may create or
// fill it while the edge runs.
func (st *site) open() (fs.FS, func(), error) {
	if st.dir == "" {
		return assets.Site(), func() {}, nil
	}
	root, err := os.OpenRoot(st.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return assets.Site(), func() {}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return root.FS(), func() { root.Close() }, nil
}

// serveFromFS serves the file of the request path, a folder's index file,
// or 404. A folder asked for without its slash is redirected to it, as
// nginx does. Folders are never listed.
func serveFromFS(w http.ResponseWriter, r *http.Request, fsys fs.FS) {
	name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	if hidden(name) {
		http.NotFound(w, r)
		return
	}
	if name == "" {
		name = "."
	}
	f, info, err := openFile(fsys, name)
	if err == nil && info.IsDir() {
		f.Close()
		if !strings.HasSuffix(r.URL.Path, "/") {
			target := r.URL.Path + "/"
			if r.URL.RawQuery != "" {
				target += "?" + r.URL.RawQuery
			}
			http.Redirect(w, r, target, http.StatusMovedPermanently)
			return
		}
		f, info, err = openIndex(fsys, name)
	}
	if err != nil || !info.Mode().IsRegular() {
		if err == nil {
			f.Close()
		}
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", contentType(info.Name()))
	content, ok := f.(io.ReadSeeker)
	if !ok { // every fs used here (os.Root, embed) has seekable files
		http.Error(w, "file not seekable", http.StatusInternalServerError)
		return
	}
	http.ServeContent(w, r, info.Name(), info.ModTime(), content)
}

// hidden tells whether a path in the site folder names a dotfile or lies in
// a dot-folder (.git/HEAD, .env, .htpasswd): never served, since a site
// folder that is a git checkout would hand out its history and whatever
// else sits there. /.well-known/ is the exception (RFC 8615): cmdeploy's
// autoconfig and MTA-STS files and ACME challenges live there.
func hidden(name string) bool {
	for i, part := range strings.Split(name, "/") {
		if strings.HasPrefix(part, ".") && (i > 0 || part != ".well-known") {
			return true
		}
	}
	return false
}

// openIndex opens the first index file of folder dir.
func openIndex(fsys fs.FS, dir string) (fs.File, fs.FileInfo, error) {
	for _, index := range indexFiles {
		f, info, err := openFile(fsys, path.Join(dir, index))
		if err == nil && !info.IsDir() {
			return f, info, nil
		}
		if err == nil {
			f.Close()
		}
	}
	return nil, nil, fs.ErrNotExist
}

func openFile(fsys fs.FS, name string) (fs.File, fs.FileInfo, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, nil, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, info, nil
}

// mimeTypes are those of nginx's mime.types for what a chatmail site holds,
// without a charset as nginx sends them. They do not depend on the host's
// /etc/mime.types, so every machine answers the same.
var mimeTypes = map[string]string{
	".html": "text/html", ".htm": "text/html",
	".css": "text/css", ".xml": "text/xml", ".txt": "text/plain",
	".js": "application/javascript", ".mjs": "application/javascript", ".json": "application/json",
	".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
	".svg": "image/svg+xml", ".svgz": "image/svg+xml", ".ico": "image/x-icon", ".webp": "image/webp",
	".avif": "image/avif", ".woff": "font/woff", ".woff2": "font/woff2", ".pdf": "application/pdf",
	".wasm": "application/wasm", ".md": "text/markdown",
}

// contentType is the type for a file name; nginx's default_type otherwise.
func contentType(name string) string {
	if t, ok := mimeTypes[strings.ToLower(path.Ext(name))]; ok {
		return t
	}
	return "application/octet-stream"
}
