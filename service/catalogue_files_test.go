package service

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"chatmail-edge/config"
	"chatmail-edge/ech"
	"chatmail-edge/internal/filelimit"
	"chatmail-edge/internal/testcert"
)

// badFile breaks one file serve reads. It returns a text the error must
// hold: the file's name, and the line or the limit.
type badFile struct {
	name   string
	breaks func(t *testing.T, env *reloadEnv) (want []string)
}

// The broken files, each a kind. They apply to a start and to a reload
// alike.
func badFiles() []badFile {
	oversized := func(path string, limit int) []string {
		return []string{path, "file too large: more than " + strconv.Itoa(limit) + " bytes"}
	}
	appendTo := func(t *testing.T, path, text string) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := io.WriteString(f, text); err != nil {
			t.Fatal(err)
		}
	}
	lines := func(t *testing.T, path string) int { return strings.Count(mustRead(t, path), "\n") }
	chatmailINI := func(env *reloadEnv) string { return filepath.Join(env.dir, "chatmail.ini") }
	echKeyFile := func(t *testing.T, env *reloadEnv, data string, mode os.FileMode) string {
		t.Helper()
		dir := ech.Dir(filepath.Join(env.dir, "state"))
		os.MkdirAll(dir, 0o700)
		path := filepath.Join(dir, "20990101T000000Z-bad.pem")
		if err := os.WriteFile(path, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, mode)
		return path
	}
	return []badFile{
		{"edge config with a NUL byte", func(t *testing.T, env *reloadEnv) []string {
			n := lines(t, env.config)
			appendTo(t, env.config, "# a comment\x00 with a NUL\n")
			return []string{env.config + ":" + strconv.Itoa(n+1) + ": control character U+0000"}
		}},
		{"edge config not UTF-8", func(t *testing.T, env *reloadEnv) []string {
			n := lines(t, env.config)
			appendTo(t, env.config, "# caf\xe9 in Latin-1\n")
			return []string{env.config + ":" + strconv.Itoa(n+1) + ": not UTF-8 text"}
		}},
		{"edge config of 2 MiB", func(t *testing.T, env *reloadEnv) []string {
			appendTo(t, env.config, strings.Repeat("# a comment line of forty bytes .......\n", 2<<20/40))
			return oversized(env.config, filelimit.Config)
		}},
		{"edge config with a misspelt key", func(t *testing.T, env *reloadEnv) []string {
			conf := strings.Split(mustRead(t, env.config), "\n")
			at := slices.Index(conf, "[edge]") + 1
			os.WriteFile(env.config, []byte(strings.Join(slices.Insert(conf, at, "max_conections = 5"), "\n")), 0o600)
			return []string{env.config + ":" + strconv.Itoa(at+1) + `: unknown key "max_conections" in [edge]`}
		}},
		{"chatmail.ini without mail_domain", func(t *testing.T, env *reloadEnv) []string {
			os.WriteFile(chatmailINI(env), []byte("[params]\nmax_message_size = 1000\n"), 0o644)
			return []string{chatmailINI(env) + ": mail_domain is missing in [params]"}
		}},
		{"chatmail.ini gone", func(t *testing.T, env *reloadEnv) []string {
			os.Remove(chatmailINI(env))
			return []string{"read chatmail.ini " + chatmailINI(env), "no such file or directory"}
		}},
		{"chatmail.ini with a control character", func(t *testing.T, env *reloadEnv) []string {
			os.WriteFile(chatmailINI(env), []byte("[params]\nmail_domain = "+reloadDomain+"\x1b[2J\n"), 0o644)
			return []string{chatmailINI(env) + ":2: control character U+001B"}
		}},
		{"chatmail.ini of 2 MiB", func(t *testing.T, env *reloadEnv) []string {
			appendTo(t, chatmailINI(env), strings.Repeat("#", 2<<20)+"\n")
			return oversized(chatmailINI(env), filelimit.Config)
		}},
		{"ECH key file of 1 MiB", func(t *testing.T, env *reloadEnv) []string {
			return oversized(echKeyFile(t, env, strings.Repeat("#", 1<<20), 0o600), filelimit.Small)
		}},
		{"corrupt ECH key file", func(t *testing.T, env *reloadEnv) []string {
			path := echKeyFile(t, env, "-----BEGIN ECHCONFIG-----\nnot base64!\n-----END ECHCONFIG-----\n", 0o600)
			return []string{"load ECH key " + path}
		}},
		{"ECH key file others may read", func(t *testing.T, env *reloadEnv) []string {
			path := echKeyFile(t, env, "", 0o644)
			return []string{"load ECH key " + path, "is open to group or others"}
		}},
		{"garbage external certificate", func(t *testing.T, env *reloadEnv) []string {
			os.WriteFile(env.certFile, []byte("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"), 0o644)
			return []string{env.certFile}
		}},
		{"external certificate of 2 MiB", func(t *testing.T, env *reloadEnv) []string {
			appendTo(t, env.certFile, strings.Repeat("#", 2<<20))
			return oversized(env.certFile, filelimit.PEM)
		}},
		{"external key gone", func(t *testing.T, env *reloadEnv) []string {
			os.Remove(env.keyFile)
			return []string{env.keyFile, "no such file or directory"}
		}},
		{"external key of another certificate", func(t *testing.T, env *reloadEnv) []string {
			other, _ := testcert.SelfSigned(t, reloadDomain)
			writeKeyPair(t, filepath.Join(env.dir, "other.pem"), env.keyFile, other)
			return []string{env.certFile, env.keyFile, "private key does not match public key"}
		}},
	}
}

// TestCatalogueFilesAtStart: serve refuses to start on each broken file,
// with an error that names it.
func TestCatalogueFilesAtStart(t *testing.T) {
	for _, c := range badFiles() {
		t.Run(c.name, func(t *testing.T) {
			env, _ := newReloadFiles(t)
			env.writeConfig(t, catalogueConfig)
			want := c.breaks(t, env)
			err := startError(t, env.config)
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("start error %q lacks %q", err, w)
				}
			}
		})
	}
}

// startError is the error serve's start gives with config.
func startError(t *testing.T, configFile string) error {
	t.Helper()
	s, err := config.Load(configFile, true)
	if err != nil {
		return err
	}
	e, err := startServe(context.Background(), s, testZap(t), nil, nil)
	if err == nil {
		e.Shutdown()
		t.Fatal("serve started")
	}
	return err
}

// TestCatalogueFilesAtReload: a reload with each broken file is refused
// with the error (in the status line for systemd and the log); serve lives
// on with what it had, and serves the next clients. The file repaired, the
// next reload is taken.
func TestCatalogueFilesAtReload(t *testing.T) {
	env := startCatalogue(t, "")
	good := map[string][]byte{}
	for _, f := range []string{env.config, filepath.Join(env.dir, "chatmail.ini"), env.certFile, env.keyFile} {
		good[f] = []byte(mustRead(t, f))
	}
	for _, c := range badFiles() {
		t.Run(c.name, func(t *testing.T) {
			since := len(env.logs.All())
			want := c.breaks(t, env.reloadEnv)
			status := env.reload(t)
			if !strings.HasPrefix(status, "STATUS=reload refused, previous configuration kept: ") {
				t.Fatalf("status %q, want the refusal", status)
			}
			for _, w := range want {
				if !strings.Contains(status, w) {
					t.Errorf("status %q lacks %q", status, w)
				}
				env.expectLogged(t, since, logLine{"reload refused; the configuration in force stays", w})
			}
			env.expectServing(t)

			for f, data := range good {
				os.WriteFile(f, data, 0o600)
			}
			bad, _ := filepath.Glob(filepath.Join(ech.Dir(filepath.Join(env.dir, "state")), "2099*"))
			for _, f := range bad {
				os.Remove(f)
			}
			if status := env.reload(t); !strings.HasPrefix(status, "STATUS=serving ") {
				t.Fatalf("after the repair: %q", status)
			}
		})
	}
}

// TestCatalogueTicketKeyFile: a broken session ticket key file costs
// clients one full handshake, no more: serve starts, says so, and puts a
// good file in its place.
func TestCatalogueTicketKeyFile(t *testing.T) {
	for name, content := range map[string]string{
		"corrupt":  "2026-01-01T00:00:00Z not-base64\n",
		"of 1 MiB": strings.Repeat("#", 1<<20),
	} {
		t.Run(name, func(t *testing.T) {
			env, roots := newReloadFiles(t)
			path := filepath.Join(env.dir, "state", "tls-ticket-keys")
			os.MkdirAll(filepath.Dir(path), 0o700)
			os.WriteFile(path, []byte(content), 0o600)
			ce := newCatalogue(t, env, roots)
			ce.start(t)
			ce.expectLogged(t, 0, logLine{"session ticket keys unreadable, starting with a new key; clients do one full handshake", path})
			if kept := mustRead(t, path); kept == content || !strings.HasPrefix(kept, "# chatmail-edge TLS session ticket keys") {
				t.Fatalf("the ticket key file was not replaced: %.100q", kept)
			}
			ce.expectServing(t)
		})
	}
}
