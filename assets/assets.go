// Package assets holds the files embedded in the binary: the default site
// served when the relay has no website folder, and the status page's
// template and style sheet.
package assets

import (
	"embed"
	"io/fs"
)

//go:embed site status.html status.css
var files embed.FS

// Site is the default site: a short page saying that this is a chatmail
// relay, for a demo or a relay whose website was never deployed.
func Site() fs.FS {
	site, err := fs.Sub(files, "site")
	if err != nil {
		panic(err) // "site" is embedded above; fs.Sub fails only on a bad name
	}
	return site
}

// StatusTemplate is the html/template of the public and the admin status page.
func StatusTemplate() string { return mustRead("status.html") }

// StatusCSS is the status page's style sheet, inlined so that the page loads
// no other resource.
func StatusCSS() string { return mustRead("status.css") }

func mustRead(name string) string {
	b, err := files.ReadFile(name)
	if err != nil {
		panic(err) // embedded above
	}
	return string(b)
}
