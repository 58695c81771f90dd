package ech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testECHDir is a fresh STATE/ech path that does not exist yet.
func testECHDir(t *testing.T) string {
	return filepath.Join(t.TempDir(), "ech")
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// addTestKey rotates in a new key (the first one too) and returns the set.
func addTestKey(t *testing.T, dir string, now time.Time) *KeySet {
	t.Helper()
	_, set, err := Rotate(dir, testPublicName, 32, now)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	return set
}

// storedTestKey stores one key in a fresh dir and returns its file's bytes.
func storedTestKey(t *testing.T) (dir string, k *Key, data []byte) {
	t.Helper()
	dir = testECHDir(t)
	k = addTestKey(t, dir, testEpoch).Current()
	data, err := os.ReadFile(k.File)
	if err != nil {
		t.Fatal(err)
	}
	return dir, k, data
}

func TestLoadECHKeysFromMissingDir(t *testing.T) {
	set, err := Load(testECHDir(t))
	if err != nil || len(set.Keys) != 0 {
		t.Errorf("Load(missing) = %d keys, %v; want empty, nil", len(set.Keys), err)
	}
}

func TestEnsureECHKeysCreatesOneKeyOnce(t *testing.T) {
	dir := testECHDir(t)
	first, created, err := Ensure(dir, testPublicName, 32, testEpoch)
	if err != nil || !created {
		t.Fatalf("first Ensure: created %v, %v", created, err)
	}
	if len(first.Keys) != 1 {
		t.Fatalf("first Ensure made %d keys", len(first.Keys))
	}
	k := first.Current()
	wantName := fmt.Sprintf("20261125T080100Z-%02x.pem", k.ConfigID())
	if filepath.Base(k.File) != wantName || filepath.Dir(k.File) != dir {
		t.Errorf("key file %s, want %s in %s", k.File, wantName, dir)
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{".lock", wantName}) {
		t.Errorf("dir holds %q, want .lock and the key file only", got)
	}

	second, created, err := Ensure(dir, "other.example.org", 99, testEpoch.Add(time.Hour))
	if err != nil || created {
		t.Fatalf("second Ensure: created %v, %v", created, err)
	}
	if len(second.Keys) != 1 {
		t.Fatalf("second Ensure has %d keys", len(second.Keys))
	}
	got := second.Current()
	if !bytes.Equal(got.Config, k.Config) || !bytes.Equal(got.PrivateKey, k.PrivateKey) || !got.Created.Equal(k.Created) || got.File != k.File {
		t.Errorf("reloaded key differs:\n%+v\n%+v", got, k)
	}
}

func TestECHKeyFilesAreSecret(t *testing.T) {
	dir := testECHDir(t)
	addTestKey(t, dir, testEpoch)
	set := addTestKey(t, dir, testEpoch.Add(time.Hour))
	info, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o700 {
		t.Errorf("dir mode %04o, want 0700", perm)
	}
	for _, k := range set.Keys {
		info, err := os.Stat(k.File)
		if err != nil {
			t.Fatal(err)
		}
		if perm := info.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s mode %04o, want 0600", k.File, perm)
		}
	}
}

func TestECHKeyFileFormat(t *testing.T) {
	_, k, data := storedTestKey(t)
	text := string(data)
	for _, line := range []string{
		"# chatmail-edge ECH key (RFC 9934). Keep this file secret.\n",
		fmt.Sprintf("# config_id: 0x%02x\n", k.ConfigID()),
		"# public_name: chat.example.org\n",
		"# created: 2026-11-25T08:01:00.000Z\n",
	} {
		if !strings.Contains(text, line) {
			t.Errorf("key file lacks %q:\n%s", line, text)
		}
	}
	keyBlock, rest := pem.Decode(data)
	configBlock, rest := pem.Decode(rest)
	if keyBlock == nil || keyBlock.Type != "PRIVATE KEY" || configBlock == nil || configBlock.Type != "ECHCONFIG" || len(rest) != 0 {
		t.Fatalf("key file is not PRIVATE KEY then ECHCONFIG:\n%s", text)
	}
	if !bytes.Equal(configBlock.Bytes, MarshalConfigList(k.Config)) {
		t.Errorf("ECHCONFIG block is not the key's one-config list")
	}
}

func TestLoadECHKeysFallsBackToModTime(t *testing.T) {
	dir := testECHDir(t)
	k := addTestKey(t, dir, testEpoch).Current()
	blocks, err := encodeECHKeyPEM(k) // no "created:" line
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.File, blocks, 0o600); err != nil {
		t.Fatal(err)
	}
	mtime := testEpoch.Add(72 * time.Hour)
	if err := os.Chtimes(k.File, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	set, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := set.Current().Created; !got.Equal(mtime) {
		t.Errorf("Created = %v, want the mtime %v", got, mtime)
	}
}

func TestBrokenECHKeyFileIsAnErrorAndNotReplaced(t *testing.T) {
	a, b := testECHKey(t, 1, testEpoch), testECHKey(t, 2, testEpoch)
	validPEM, err := encodeECHKeyPEM(a)
	if err != nil {
		t.Fatal(err)
	}
	mismatched, err := encodeECHKeyPEM(&Key{Config: b.Config, PrivateKey: a.PrivateKey})
	if err != nil {
		t.Fatal(err)
	}
	// configWith re-encodes a's config changed by edit, with a's private key.
	configWith := func(edit func(c *Config)) []byte {
		c := a.Parsed()
		edit(&c)
		data, err := encodeECHKeyPEM(&Key{Config: c.Marshal(), PrivateKey: a.PrivateKey})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	keyBlockOnly, _ := pem.Decode(validPEM)
	p256, err := ecdh.P256().GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	p256DER, err := x509.MarshalPKCS8PrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}
	_, configBlock := pem.Decode(validPEM)
	tests := []struct {
		name, wantErr string
		data          []byte
	}{
		{"garbage", "no PEM block", []byte("not a key\n")},
		{"truncated in key", "no PEM block", validPEM[:60]},
		{"truncated in config", "no \"ECHCONFIG\"", validPEM[:len(validPEM)-40]},
		{"mismatched key", "does not match", mismatched},
		{"not X25519 config", "kem_id is 0x0010", configWith(func(c *Config) { c.KEMID = 0x0010 })},
		{"unknown version", "exactly one Config", configWith(func(c *Config) { c.Version = 0xfe0c })},
		{"two configs", "exactly one Config", append(pem.EncodeToMemory(keyBlockOnly), pem.EncodeToMemory(&pem.Block{Type: "ECHCONFIG", Bytes: MarshalConfigList(a.Config, b.Config)})...)},
		{"no ECHCONFIG", "no \"ECHCONFIG\"", pem.EncodeToMemory(keyBlockOnly)},
		{"P-256 private key", "want X25519", append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p256DER}), configBlock...)},
		{"bad created line", "created line", append([]byte("# created: yesterday\n"), validPEM...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testECHDir(t)
			addTestKey(t, dir, testEpoch) // a good key next to the bad one
			bad := filepath.Join(dir, "20261201T000000Z-77.pem")
			if err := os.WriteFile(bad, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			before := dirNames(t, dir)

			_, err := Load(dir)
			if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Load error = %v, want one naming %s and saying %q", err, bad, tt.wantErr)
			}
			_, created, err := Ensure(dir, testPublicName, 32, testEpoch.Add(time.Hour))
			if err == nil || created || !strings.Contains(err.Error(), bad) {
				t.Errorf("Ensure = created %v, %v; want an error naming %s", created, err, bad)
			}
			if _, _, err := Rotate(dir, testPublicName, 32, testEpoch.Add(time.Hour)); err == nil {
				t.Errorf("Rotate succeeded next to a broken key file")
			}
			if after := dirNames(t, dir); !slices.Equal(after, before) {
				t.Errorf("dir changed from %q to %q", before, after)
			}
		})
	}
}

func TestEnsureECHKeysDoesNotReplaceOnlyKeyWhenBroken(t *testing.T) {
	dir := testECHDir(t)
	k := addTestKey(t, dir, testEpoch).Current()
	if err := os.WriteFile(k.File, []byte("-----BEGIN PRIVATE KEY-----\ntruncated"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, created, err := Ensure(dir, testPublicName, 32, testEpoch.Add(time.Hour)); err == nil || created {
		t.Errorf("Ensure over a corrupt only key: created %v, err %v", created, err)
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{".lock", filepath.Base(k.File)}) {
		t.Errorf("dir holds %q after the failed Ensure", got)
	}
}

func TestLoadECHKeysIgnoresOtherNames(t *testing.T) {
	dir := testECHDir(t)
	addTestKey(t, dir, testEpoch)
	for _, name := range []string{".ech-key-123.tmp", ".hidden.pem", "README", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("junk"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	set, err := Load(dir)
	if err != nil || len(set.Keys) != 1 {
		t.Errorf("Load = %d keys, %v; want the one key", len(set.Keys), err)
	}
}

func TestLoadECHKeysRefusesDuplicateConfigIDs(t *testing.T) {
	dir, k, data := storedTestKey(t)
	copyPath := filepath.Join(dir, "backup.pem")
	if err := os.WriteFile(copyPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir)
	if err == nil || !strings.Contains(err.Error(), k.File) || !strings.Contains(err.Error(), copyPath) {
		t.Errorf("error = %v, want one naming %s and %s", err, k.File, copyPath)
	}
}

func TestLoadECHKeysRefusesOpenPermissions(t *testing.T) {
	dir := testECHDir(t)
	k := addTestKey(t, dir, testEpoch).Current()

	if err := os.Chmod(k.File, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), k.File) || !strings.Contains(err.Error(), "0640") {
		t.Errorf("group-readable key file: error = %v", err)
	}
	if err := os.Chmod(k.File, 0o600); err != nil {
		t.Fatal(err)
	}

	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "0750") {
		t.Errorf("group-accessible dir: error = %v", err)
	}
	if _, _, err := Ensure(dir, testPublicName, 32, testEpoch); err == nil {
		t.Errorf("Ensure accepted a group-accessible dir")
	}
}

func TestRotateECHKey(t *testing.T) {
	dir := testECHDir(t)
	first := addTestKey(t, dir, testEpoch).Current()
	newKey, set, err := Rotate(dir, testPublicName, 32, testEpoch.Add(time.Hour))
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if len(set.Keys) != 2 || set.Current() != newKey || newKey.ConfigID() == first.ConfigID() {
		t.Fatalf("after rotation: %d keys, current id %d, new id %d, first id %d",
			len(set.Keys), set.Current().ConfigID(), newKey.ConfigID(), first.ConfigID())
	}
	tlsKeys := set.TLSKeys()
	if !tlsKeys[0].SendAsRetry || tlsKeys[1].SendAsRetry || !bytes.Equal(tlsKeys[1].Config, first.Config) {
		t.Errorf("SendAsRetry must be on the new key only: %v %v", tlsKeys[0].SendAsRetry, tlsKeys[1].SendAsRetry)
	}
	published, err := ParseConfigList(set.ConfigList())
	if err != nil || len(published) != 1 || published[0].ConfigID != newKey.ConfigID() {
		t.Errorf("published list %+v (%v), want only config %d", published, err, newKey.ConfigID())
	}

	reloaded, err := Load(dir)
	if err != nil || len(reloaded.Keys) != 2 || !bytes.Equal(reloaded.Current().Config, newKey.Config) {
		t.Errorf("reload after rotation: %v; current is the new key: %v", err, err == nil && bytes.Equal(reloaded.Current().Config, newKey.Config))
	}
}

func TestRotateECHKeyRefusesClockGoingBack(t *testing.T) {
	dir := testECHDir(t)
	addTestKey(t, dir, testEpoch)
	for _, now := range []time.Time{testEpoch, testEpoch.Add(999 * time.Microsecond), testEpoch.Add(-time.Hour)} {
		if _, _, err := Rotate(dir, testPublicName, 32, now); err == nil {
			t.Errorf("Rotate at %v accepted though the current key is from %v", now, testEpoch)
		}
	}
	if got := len(dirNames(t, dir)); got != 2 {
		t.Errorf("dir holds %d entries, want .lock and one key", got)
	}
}

func TestRetireECHKeys(t *testing.T) {
	const day = 24 * time.Hour
	dir := testECHDir(t)
	k0 := addTestKey(t, dir, testEpoch).Current()
	k1 := addTestKey(t, dir, testEpoch.Add(10*day)).Current()
	k2 := addTestKey(t, dir, testEpoch.Add(20*day)).Current()

	// k0 was superseded at day 10, k1 at day 20; at day 45 only k0 is past 30 days.
	removed, set, err := Retire(dir, 30*day, testEpoch.Add(45*day))
	if err != nil {
		t.Fatalf("Retire: %v", err)
	}
	if len(removed) != 1 || removed[0].File != k0.File {
		t.Fatalf("removed %d keys, want only %s", len(removed), k0.File)
	}
	if _, err := os.Stat(k0.File); !os.IsNotExist(err) {
		t.Errorf("%s still exists: %v", k0.File, err)
	}
	if len(set.Keys) != 2 || set.Keys[0].File != k2.File || set.Keys[1].File != k1.File {
		t.Errorf("set after retiring has %d keys", len(set.Keys))
	}

	// Exactly at the limit nothing goes: superseded 30 days ago is not "more than".
	if removed, _, err := Retire(dir, 30*day, testEpoch.Add(50*day)); err != nil || len(removed) != 0 {
		t.Errorf("at the limit: removed %d, %v", len(removed), err)
	}
	// Years later the current key still stays.
	removed, set, err = Retire(dir, 30*day, testEpoch.Add(3*365*day))
	if err != nil || len(removed) != 1 || removed[0].File != k1.File {
		t.Fatalf("later: removed %v, %v; want only %s", removed, err, k1.File)
	}
	if len(set.Keys) != 1 || set.Current().File != k2.File {
		t.Errorf("the current key was not kept")
	}
	if reloaded, err := Load(dir); err != nil || len(reloaded.Keys) != 1 {
		t.Errorf("reload: %v", err)
	}
}

func TestRetireECHKeysOnMissingDir(t *testing.T) {
	dir := testECHDir(t)
	removed, set, err := Retire(dir, DefaultRetireGrace, testEpoch)
	if err != nil || len(removed) != 0 || len(set.Keys) != 0 {
		t.Errorf("Retire(missing) = %v, %v, %v", removed, set, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Retire created %s", dir)
	}
}

func TestECHDirLockExcludesOthers(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockECHDir(dir, 0)
	if err != nil {
		t.Fatalf("lockECHDir: %v", err)
	}
	if _, err := lockECHDir(dir, 0); err == nil || !strings.Contains(err.Error(), "held by another process") {
		t.Errorf("second lock while held: %v", err)
	}
	unlock()
	again, err := lockECHDir(dir, 0)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	again()
}
