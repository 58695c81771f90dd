package web

import (
	"compress/gzip"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// gzipMinLength is the smallest known body worth compressing.
const gzipMinLength = 256

var gzipWriters = sync.Pool{New: func() any {
	w, _ := gzip.NewWriterLevel(nil, gzip.DefaultCompression)
	return w
}}

// compressibleTypes are the media types compressed, as with nginx's
// `gzip on` plus gzip_types for the text formats a site serves.
var compressibleTypes = []string{
	"text/", "application/javascript", "application/json", "application/xml", "image/svg+xml",
}

// compressed runs h with gzip content coding (RFC 9110 §8.4.1.3) when the
// client accepts it and the response is a compressible 200. Range requests
// are then answered with the whole body, as RFC 9110 §14.2 allows, because a
// range of the compressed stream is rarely what a client can use.
func compressed(w http.ResponseWriter, r *http.Request, h http.HandlerFunc) {
	if r.Method == http.MethodHead || !acceptsGzip(r.Header.Get("Accept-Encoding")) {
		h(w, r)
		return
	}
	r.Header.Del("Range")
	gw := &gzipResponseWriter{ResponseWriter: w}
	defer gw.close()
	h(gw, r)
}

type gzipResponseWriter struct {
	http.ResponseWriter
	decided bool
	gz      *gzip.Writer
}

func (g *gzipResponseWriter) WriteHeader(code int) {
	if !g.decided {
		g.decided = true
		h := g.Header()
		if code == http.StatusOK && h.Get("Content-Encoding") == "" && compressible(h.Get("Content-Type")) {
			h.Add("Vary", "Accept-Encoding")
			if n, err := strconv.Atoi(h.Get("Content-Length")); err != nil || n >= gzipMinLength {
				h.Del("Content-Length")
				h.Set("Content-Encoding", "gzip")
				g.gz = gzipWriters.Get().(*gzip.Writer)
				g.gz.Reset(g.ResponseWriter)
			}
		}
	}
	g.ResponseWriter.WriteHeader(code)
}

func (g *gzipResponseWriter) Write(p []byte) (int, error) {
	if !g.decided {
		g.WriteHeader(http.StatusOK)
	}
	if g.gz != nil {
		return g.gz.Write(p)
	}
	return g.ResponseWriter.Write(p)
}

func (g *gzipResponseWriter) close() {
	if g.gz != nil {
		g.gz.Close()
		g.gz.Reset(nil)
		gzipWriters.Put(g.gz)
		g.gz = nil
	}
}

func compressible(contentType string) bool {
	for _, t := range compressibleTypes {
		if strings.HasPrefix(contentType, t) {
			return true
		}
	}
	return false
}

// acceptsGzip reads Accept-Encoding (RFC 9110 §12.5.3): gzip or * with a
// non-zero weight.
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		coding = strings.ToLower(strings.TrimSpace(coding))
		if coding != "gzip" && coding != "x-gzip" && coding != "*" {
			continue
		}
		q := strings.ReplaceAll(strings.ToLower(params), " ", "")
		if strings.HasPrefix(q, "q=") {
			if v, err := strconv.ParseFloat(q[2:], 64); err == nil && v == 0 {
				continue
			}
		}
		return true
	}
	return false
}
