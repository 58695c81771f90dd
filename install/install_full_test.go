//go:build integration

package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"chatmail-edge/config"
	"chatmail-edge/mail"
	"chatmail-edge/metadata"
	"chatmail-edge/systemd"
)

// chatmailSMTPS is chatmail's smtps entry of master.cf (master.cf.j2), with
// chatmail.ini's default max_smtp_connections.
var chatmailSMTPS = `smtps     inet  n       -       y       -       1000    smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_tls_mandatory_protocols=>=TLSv1.3
` + mail.ChatmailSubmissionOptions(mail.DefaultMaxSMTPConnections) + `  -o smtpd_proxy_filter=127.0.0.1:10080
`

// mainCFMUA are the restrictions of chatmail's main.cf that its smtps
// entry, and so the edge's PROXY service, refers to.
const mainCFMUA = `mua_client_restrictions = permit_sasl_authenticated, reject
mua_sender_restrictions = reject_sender_login_mismatch, permit_sasl_authenticated, reject
mua_helo_restrictions = permit_mynetworks, reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname, permit
`

// mailTree adds Debian's Postfix and a chatmail-like Dovecot configuration
// to a relay tree; extraDovecot goes into dovecot.conf.
func mailTree(t *testing.T, extraDovecot, mainCF string) string {
	t.Helper()
	for _, bin := range []string{"doveconf", "postconf"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: apt-get install postfix dovecot-imapd (see .ci/run)", bin)
		}
	}
	root, relay := relayTree(t)
	addVmail(t, root)
	master, err := os.ReadFile("/usr/share/postfix/master.cf.dist")
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(root, "etc/postfix/master.cf"), string(master)+chatmailSMTPS)
	writeTestFile(t, filepath.Join(root, "etc/postfix/main.cf"), "myhostname = "+installDomain+"\n"+mainCF)
	writeTestFile(t, filepath.Join(root, "etc/dovecot/dovecot.conf"), `protocols = imap lmtp
ssl = required
ssl_cert = <`+filepath.Join(relay.Live, "fullchain")+`
ssl_key = <`+filepath.Join(relay.Live, "privkey")+`
ssl_min_protocol = TLSv1.3
mail_attribute_dict = `+chatmailAttributeDict+`
`+extraDovecot)
	return root
}

// chatmailAttributeDict is chatmail's own mail_attribute_dict (dovecot.conf.j2).
const chatmailAttributeDict = "proxy:/run/chatmail-metadata/metadata.socket:metadata"

// addVmail adds chatmail's vmail user to the tree, as cmdeploy creates it.
func addVmail(t *testing.T, root string) {
	t.Helper()
	for file, line := range map[string]string{"etc/passwd": "vmail:x:990:990::/home/vmail:/usr/sbin/nologin\n", "etc/group": "vmail:x:990:\n"} {
		f, err := os.OpenFile(filepath.Join(root, file), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(line); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

// doveconfH is `doveconf -h setting` of the tree's Dovecot.
func doveconfH(t *testing.T, root, setting string) string {
	t.Helper()
	out, err := exec.Command("doveconf", "-c", filepath.Join(root, dovecotConf), "-h", setting).CombinedOutput()
	if err != nil {
		t.Fatalf("doveconf -h %s: %v\n%s", setting, err, out)
	}
	return strings.TrimSpace(string(out))
}

func postconfM(t *testing.T, root, service string) string {
	t.Helper()
	out, err := exec.Command("postconf", "-c", filepath.Join(root, "etc/postfix"), "-M", service).Output()
	if err != nil {
		t.Fatalf("postconf -M %s: %v", service, err)
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

// Full mode's drop-ins, checked by the real doveconf and postconf, and
// taken back by uninstall.
func TestInstallFullModeDropIns(t *testing.T) {
	requireInstallTools(t)
	root := mailTree(t, "", mainCFMUA)
	dovecotBefore, _ := os.ReadFile(filepath.Join(root, dovecotConf))
	smtpsBefore := postconfM(t, root, smtpsService)
	if smtpsBefore == "" {
		t.Fatal("the tree has no smtps service")
	}

	code, out := runCommand("install", "--root", root, "--mode", "full")
	t.Logf("install --mode full:\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	doveconf, err := exec.Command("doveconf", "-c", filepath.Join(root, dovecotConf), "-n").CombinedOutput()
	if err != nil {
		t.Fatalf("doveconf -n: %v\n%s", err, doveconf)
	}
	for _, want := range []string{"haproxy_trusted_networks = 127.0.0.0/8", "inet_listener imap_edge {\n    address = 127.0.0.1\n    haproxy = yes\n    port = 10993", "inet_listener imaps {\n    port = 0"} {
		if !strings.Contains(string(doveconf), want) {
			t.Errorf("doveconf -n lacks %q:\n%s", want, doveconf)
		}
	}
	if want := edgeServiceLine(mail.DefaultMaxSMTPConnections); postconfM(t, root, edgeService) != want {
		t.Errorf("postconf -M %s = %q, want %q", edgeService, postconfM(t, root, edgeService), want)
	}
	// IMAP METADATA goes through the edge's proxy, whose unit runs.
	if got := doveconfH(t, root, "mail_attribute_dict"); got != metadataAttributeDict {
		t.Errorf("mail_attribute_dict = %q, want %q", got, metadataAttributeDict)
	}
	unit, err := os.ReadFile(filepath.Join(root, metadataUnitPath))
	if err != nil || !strings.Contains(string(unit), " metadata-proxy --socket "+metadata.DefaultSocket+" ") ||
		!strings.Contains(string(unit), "--ech-file "+metadata.DefaultECHFile+"\n") {
		t.Errorf("%s: %v\n%s", metadataUnitPath, err, unit)
	}
	if s := unitState(t, root, systemd.MetadataProxy); s != "enabled" {
		t.Errorf("%s is %q, want enabled", systemd.MetadataProxy, s)
	}
	if got := postconfM(t, root, smtpsService); got != "" {
		t.Errorf("smtps still on: %q", got)
	}
	if out, err := exec.Command("postconf", "-c", filepath.Join(root, "etc/postfix"), "-n").CombinedOutput(); err != nil || strings.Contains(string(out), "warning") {
		t.Errorf("postconf -n: %v\n%s", err, out)
	}
	cfg, _ := os.ReadFile(filepath.Join(root, config.DefaultFile))
	if !strings.Contains(string(cfg), "imaps = :993") || !strings.Contains(string(cfg), "address = "+mail.ProxySMTPAddress) {
		t.Errorf("config of full mode:\n%s", cfg)
	}

	if code, out := runCommand("install", "--root", root, "--mode", "full"); code != 0 || !strings.Contains(out, "Nothing to change") {
		t.Errorf("second install: exit %d\n%s", code, out)
	}
	if code, out := runCommand("install", "--root", root); code != 1 || !strings.Contains(out, "installed in full mode: run `chatmail-edge uninstall` first") {
		t.Errorf("default mode over full mode: exit %d\n%s", code, out)
	}

	code, out = runCommand("uninstall", "--root", root)
	t.Logf("uninstall:\n%s", out)
	if code != 0 {
		t.Fatalf("uninstall: exit %d", code)
	}
	if got, _ := os.ReadFile(filepath.Join(root, dovecotConf)); string(got) != string(dovecotBefore) {
		t.Errorf("dovecot.conf after uninstall:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(root, dovecotDropIn)); err == nil {
		t.Errorf("the Dovecot drop-in is still there")
	}
	if got := postconfM(t, root, smtpsService); got != smtpsBefore {
		t.Errorf("smtps after uninstall: %q, want %q", got, smtpsBefore)
	}
	if got := postconfM(t, root, edgeService); got != "" {
		t.Errorf("the edge's Postfix service is still there: %q", got)
	}
	if got := doveconfH(t, root, "mail_attribute_dict"); got != chatmailAttributeDict {
		t.Errorf("mail_attribute_dict after uninstall = %q, want chatmail's %q", got, chatmailAttributeDict)
	}
	if _, err := os.Stat(filepath.Join(root, metadataUnitPath)); err == nil || unitState(t, root, systemd.MetadataProxy) == "enabled" {
		t.Errorf("%s is still there after uninstall", systemd.MetadataProxy)
	}
}

// chatmail.ini's max_smtp_connections sets the PROXY service's limits, as
// it sets chatmail's smtps; an empty [ech] metadata_file leaves METADATA
// to chatmail: no proxy unit, chatmail's mail_attribute_dict.
func TestInstallFullModeSettings(t *testing.T) {
	requireInstallTools(t)
	root := mailTree(t, "", mainCFMUA)
	ini := filepath.Join(root, config.DefaultChatmailINI)
	data, _ := os.ReadFile(ini)
	writeTestFile(t, ini, string(data)+"max_smtp_connections = 3000\n")
	writeTestFile(t, filepath.Join(root, config.DefaultFile), string(installConfig("full"))+"\n[ech]\nmetadata_file =\n")
	code, out := runCommand("install", "--root", root, "--mode", "full")
	t.Logf("install --mode full:\n%s", out)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	got := postconfM(t, root, edgeService)
	if !strings.Contains(got, "inet n - y - 3000 smtpd") || !strings.Contains(got, "-o smtpd_client_connection_count_limit=600 ") {
		t.Errorf("postconf -M %s = %q, want maxproc 3000 and a client limit of 600", edgeService, got)
	}
	if got := doveconfH(t, root, "mail_attribute_dict"); got != chatmailAttributeDict {
		t.Errorf("mail_attribute_dict = %q, want chatmail's %q without metadata_file", got, chatmailAttributeDict)
	}
	if _, err := os.Stat(filepath.Join(root, metadataUnitPath)); err == nil {
		t.Errorf("%s written without metadata_file", metadataUnitPath)
	}
}

// Full mode's METADATA proxy runs as chatmail's vmail: a tree without it
// is refused before anything is changed.
func TestInstallFullModeNeedsVmail(t *testing.T) {
	requireInstallTools(t)
	root := mailTree(t, "", mainCFMUA)
	passwd := filepath.Join(root, "etc/passwd")
	data, _ := os.ReadFile(passwd)
	writeTestFile(t, passwd, strings.ReplaceAll(string(data), "vmail:", "other:"))
	code, out := runCommand("install", "--root", root, "--mode", "full")
	if code != 1 || !strings.Contains(out, "user vmail") || !strings.Contains(out, "metadata_file =") {
		t.Errorf("exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(root, installedBinary)); err == nil {
		t.Errorf("install went ahead without vmail")
	}
}

// When Dovecot refuses the drop-in (here: the relay already listens on
// 127.0.0.1:10993), full mode is taken back and nothing else happens.
func TestInstallFullModeRollsBack(t *testing.T) {
	requireInstallTools(t)
	root := mailTree(t, "service imap-login {\n  inet_listener imap {\n    address = 127.0.0.1\n    port = 10993\n  }\n}\n", mainCFMUA)
	master := filepath.Join(root, "etc/postfix/master.cf")
	masterBefore, _ := os.ReadFile(master)
	dovecotBefore, _ := os.ReadFile(filepath.Join(root, dovecotConf))

	code, out := runCommand("install", "--root", root, "--mode", "full")
	t.Logf("install --mode full:\n%s", out)
	if code != 1 || !strings.Contains(out, "full mode was taken back") || !strings.Contains(out, "duplicate listener") {
		t.Fatalf("exit %d", code)
	}
	if got, _ := os.ReadFile(master); string(got) != string(masterBefore) {
		t.Errorf("master.cf not restored")
	}
	if got, _ := os.ReadFile(filepath.Join(root, dovecotConf)); string(got) != string(dovecotBefore) {
		t.Errorf("dovecot.conf not restored")
	}
	if _, err := os.Stat(filepath.Join(root, dovecotDropIn)); err == nil {
		t.Errorf("the Dovecot drop-in is still there")
	}
	if s := unitState(t, root, "nginx.service"); s != "enabled" {
		t.Errorf("nginx.service is %q after a failed full mode, want enabled", s)
	}
	if _, err := os.Stat(filepath.Join(root, metadataUnitPath)); err == nil {
		t.Errorf("the METADATA proxy's unit is still there after the rollback")
	}
}

// A main.cf without chatmail's MUA restrictions would leave the PROXY
// service without them: postconf's warning stops full mode.
func TestInstallFullModeNeedsChatmailMainCF(t *testing.T) {
	requireInstallTools(t)
	root := mailTree(t, "", "")
	code, out := runCommand("install", "--root", root, "--mode", "full")
	if code != 1 || !strings.Contains(out, "undefined parameter: mua_") || !strings.Contains(out, "full mode was taken back") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if got := postconfM(t, root, smtpsService); got == "" {
		t.Errorf("smtps was not turned back on")
	}
}

// Full mode survives `cmdeploy run`: cmdeploy's dovecot.conf and master.cf,
// rendered from its templates, put Dovecot and Postfix back on 993 and 465;
// the reapply puts the edge's changes back, checked by Debian's doveconf
// and postconf as install checks them, and uninstall gives back what
// cmdeploy wrote.
func TestInstallFullModeSurvivesCmdeploy(t *testing.T) {
	requireInstallTools(t)
	root := mailTree(t, "", mainCFMUA)
	writeTestFile(t, filepath.Join(root, config.DefaultChatmailINI), fixtureText(t, "chatmail.ini"))
	smtps := strings.Join(strings.Fields(fixtureSMTPS(t)), " ")
	surviveCmdeploy(t, root, "full", func(step string) {
		edgeOn := step == "installed" || step == "reapplied"
		wantDict, wantSMTPS, wantEdge := chatmailAttributeDict, smtps, ""
		if edgeOn {
			wantDict, wantSMTPS, wantEdge = metadataAttributeDict, "", edgeServiceLine(mail.DefaultMaxSMTPConnections)
		}
		if got := doveconfH(t, root, "mail_attribute_dict"); got != wantDict {
			t.Errorf("%s: mail_attribute_dict = %q, want %q", step, got, wantDict)
		}
		if got := postconfM(t, root, smtpsService); got != wantSMTPS {
			t.Errorf("%s: postconf -M %s = %q, want %q", step, smtpsService, got, wantSMTPS)
		}
		if got := postconfM(t, root, edgeService); got != wantEdge {
			t.Errorf("%s: postconf -M %s = %q, want %q", step, edgeService, got, wantEdge)
		}
		doveconf, err := exec.Command("doveconf", "-c", filepath.Join(root, dovecotConf), "-n").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: doveconf -n: %v\n%s", step, err, doveconf)
		}
		if strings.Contains(string(doveconf), "inet_listener imap_edge") != edgeOn {
			t.Errorf("%s: doveconf -n shows the imap_edge listener: %v, want %v", step, !edgeOn, edgeOn)
		}
	}, cmdeployFiles, cmdeployMailFiles)
}

// fixtureSMTPS is the smtps entry of cmdeploy's master.cf.
func fixtureSMTPS(t *testing.T) string {
	t.Helper()
	var entry strings.Builder
	in := false
	for line := range strings.Lines(fixtureText(t, "master.cf")) {
		switch {
		case strings.HasPrefix(line, "smtps "):
			in = true
		case in && !strings.HasPrefix(line, " "):
			return entry.String()
		}
		if in {
			entry.WriteString(line)
		}
	}
	t.Fatal("cmdeploy's master.cf has no smtps entry")
	return ""
}
