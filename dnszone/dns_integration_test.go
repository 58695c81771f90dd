//go:build integration

package dnszone

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDNSZonefileNamedCheckzone: BIND's own checker (Debian bind9-utils,
// which .ci/run installs) loads `dns --zonefile` $INCLUDEd into a zone
// that has the SOA and NS its DNS host gives it, with every check on
// (MX and SRV targets with addresses, no CNAME beside other data).
func TestDNSZonefileNamedCheckzone(t *testing.T) {
	checkzone, err := exec.LookPath("named-checkzone")
	if err != nil {
		t.Skip("SKIPPED: named-checkzone not installed (apt-get install bind9-utils); the zone file is not checked by BIND")
	}
	r := newDNSRelay(t, "chat.example", "")
	zone, code := r.dns(t, "--zonefile", "--ipv4", "192.0.2.1", "--ipv6", "2001:db8::1", "--account-url", testAccountURL)
	if code != 0 {
		t.Fatalf("dns --zonefile: exit %d", code)
	}
	records := filepath.Join(r.dir, "chatmail-edge.zone")
	mustWrite(t, records, zone)
	zoneFile := filepath.Join(r.dir, "chat.example.zone")
	mustWrite(t, zoneFile, "$TTL 3600\n"+
		"@ IN SOA ns1.example.net. hostmaster.chat.example. 1 7200 3600 1209600 3600\n"+
		"@ IN NS ns1.example.net.\n"+
		"$INCLUDE "+records+"\n")
	cmd := exec.Command(checkzone, "-k", "fail", "-m", "fail", "-M", "fail", "-n", "fail", "-S", "fail", "-i", "full", "chat.example", zoneFile)
	out, err := cmd.CombinedOutput()
	t.Logf("%s:\n%s", strings.Join(cmd.Args, " "), out)
	if err != nil || !strings.Contains(string(out), "\nOK\n") {
		t.Fatalf("named-checkzone: %v", err)
	}
	// The check can fail: BIND refuses a CNAME beside other data.
	mustWrite(t, records, zone+"www.chat.example. 3600 IN TXT \"beside a CNAME\"\n")
	if out, err := exec.Command(checkzone, "chat.example", zoneFile).CombinedOutput(); err == nil {
		t.Fatalf("named-checkzone accepted a CNAME beside other data:\n%s", out)
	}
}
