package probe

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteTable prints the report for a person.
func (r Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "probe of %s (ECH config: %s)\n\n", r.Domain, r.ECHSource)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tRESULT\tECH\tSNI\tALPN\tTLS\tCERTIFICATE\tEXPIRES\tTIME\tDETAIL")
	for _, c := range r.Checks {
		result := "ok"
		detail := c.Detail
		if !c.OK {
			result, detail = "FAILED", c.Error
		}
		expires := "-"
		if !c.CertExpiry.IsZero() {
			expires = c.CertExpiry.Format(time.DateOnly)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1fms\t%s\n", c.Name, result, c.ECH, dash(c.ServerName), dash(c.ALPN),
			dash(c.TLSVersion), dash(c.CertName), expires, c.LatencyMS, detail)
	}
	tw.Flush()
	if r.OK {
		fmt.Fprintf(w, "\nall %d checks passed\n", len(r.Checks))
	} else {
		failed := 0
		for _, c := range r.Checks {
			if !c.OK {
				failed++
			}
		}
		fmt.Fprintf(w, "\n%d of %d checks FAILED\n", failed, len(r.Checks))
	}
}

// WriteJSON prints the report for a script.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
