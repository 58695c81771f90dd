package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigDocIsCurrent keeps docs/CONFIG.md equal to `config describe`.
// Run `go run . config describe > docs/CONFIG.md.part` and paste it after a change.
func TestConfigDocIsCurrent(t *testing.T) {
	doc, err := os.ReadFile("../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```ini\n"+Describe()+"```\n") {
		t.Fatal("docs/CONFIG.md is out of date: paste the output of `go run . config describe` into its ini block")
	}
}

func TestConfigDescribeParses(t *testing.T) {
	out := bytes.NewBufferString(Describe())
	// Uncommenting every key gives a valid file with the defaults.
	var uncommented []string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(line, "#") && strings.Contains(line, " = ") && !strings.HasPrefix(line, "# ") {
			line = strings.TrimPrefix(line, "#")
		}
		uncommented = append(uncommented, line)
	}
	dir := t.TempDir()
	chatmailINI := filepath.Join(dir, "chatmail.ini")
	os.WriteFile(chatmailINI, []byte("[params]\nmail_domain = chat.example\n"), 0o644)
	text := strings.Replace(strings.Join(uncommented, "\n"), "chatmail_ini = /usr/local/lib/chatmaild/chatmail.ini", "chatmail_ini = "+chatmailINI, 1)
	path := filepath.Join(dir, "edge.ini")
	os.WriteFile(path, []byte(text), 0o644)
	s, err := Load(path, true)
	if err != nil {
		t.Fatalf("described config does not load: %v", err)
	}
	if s.MailDomain != "chat.example" || s.HTTPS != ":443" || s.IMAPBackend.Address != "127.0.0.1:993" {
		t.Fatalf("defaults not as described: %+v", s)
	}
}
