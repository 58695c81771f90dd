package web

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// accessLogField bounds each client-given field of an access log line (the
// request line, Referer, User-Agent) after escaping: headers may take 64 KiB,
// a log line need not.
const accessLogField = 2048

// accessLogTime is nginx's $time_local.
const accessLogTime = "02/Jan/2006:15:04:05 -0700"

// withAccessLog logs one line per request when it is answered, in nginx's
// combined format (ngx_http_log_module):
//
//	$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
//
// as the message of an info entry of log, with the edge's connection id as
// its "conn" field. chatmail's nginx sent the same to syslog (local7).
func withAccessLog(h http.Handler, log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &accessRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		requestLog(log, r).Info(accessLine(r, rec.status(), rec.bytes, time.Now()))
	})
}

// accessLine is one combined-format line.
func accessLine(r *http.Request, status int, bytes int64, now time.Time) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	var b strings.Builder
	b.WriteString(logEscape(host))
	b.WriteString(" - - [")
	b.WriteString(now.Format(accessLogTime))
	b.WriteString(`] "`)
	b.WriteString(logEscape(r.Method + " " + r.RequestURI + " " + r.Proto))
	b.WriteString(`" `)
	b.WriteString(strconv.Itoa(status))
	b.WriteByte(' ')
	b.WriteString(strconv.FormatInt(bytes, 10))
	for _, v := range []string{r.Referer(), r.UserAgent()} {
		b.WriteString(` "`)
		b.WriteString(logEscape(v))
		b.WriteByte('"')
	}
	return b.String()
}

// logEscape writes "-" for an empty value, and escapes as nginx does
// (ngx_http_log_escape): `"`, `\`, control characters and bytes above 0x7e
// become \xHH, so that a client cannot forge or break log lines; the
// result is cut at accessLogField.
func logEscape(s string) string {
	if s == "" {
		return "-"
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < accessLogField; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b.WriteString(`\x`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// accessRecorder notes a response's status and body bytes. Flush and the
// rest are reached through Unwrap (http.ResponseController); Hijack is its
// own, to note a switch of protocols (a /relay WebSocket: 101, as nginx
// logs it).
type accessRecorder struct {
	http.ResponseWriter
	code     int
	bytes    int64
	hijacked bool
}

func (a *accessRecorder) WriteHeader(code int) {
	if a.code == 0 && code >= 200 {
		a.code = code
	}
	a.ResponseWriter.WriteHeader(code)
}

func (a *accessRecorder) Write(p []byte) (int, error) {
	if a.code == 0 {
		a.code = http.StatusOK
	}
	n, err := a.ResponseWriter.Write(p)
	a.bytes += int64(n)
	return n, err
}

func (a *accessRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(a.ResponseWriter).Hijack()
	if err == nil {
		a.hijacked = true
	}
	return c, rw, err
}

func (a *accessRecorder) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// status is what the client got: 101 after a hijack, 200 when the
// handler wrote nothing (net/http sends that).
func (a *accessRecorder) status() int {
	switch {
	case a.hijacked && a.code == 0:
		return http.StatusSwitchingProtocols
	case a.code == 0:
		return http.StatusOK
	}
	return a.code
}
