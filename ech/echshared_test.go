package ech

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// Two nodes on one store (certmagic's FileStorage on one folder, with its
// file locks): the first start makes the first key, the other loads it; a
// rotation on one and a retirement on the other are what both load next.
func TestSharedKeySet(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	a := InStorage(&certmagic.FileStorage{Path: dir})
	b := InStorage(&certmagic.FileStorage{Path: dir})
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	first, created, err := EnsureIn(ctx, a, "chat.example", 32, t0)
	if err != nil || !created || len(first.Keys) != 1 {
		t.Fatalf("first start: %v, created %v", err, created)
	}
	if !strings.HasPrefix(first.Current().File, SharedKeysPrefix+"/") {
		t.Fatalf("the key is stored at %q", first.Current().File)
	}
	other, created, err := EnsureIn(ctx, b, "chat.example", 32, t0.Add(time.Minute))
	if err != nil || created || !bytes.Equal(other.ConfigList(), first.ConfigList()) || !bytes.Equal(other.Current().PrivateKey, first.Current().PrivateKey) {
		t.Fatalf("second node: %v, created %v; want the first node's key", err, created)
	}

	k, rotated, err := RotateLikeIn(ctx, b, "", t0.Add(time.Hour))
	if err != nil || len(rotated.Keys) != 2 || rotated.Current() != k {
		t.Fatalf("rotate on the second node: %v", err)
	}
	if k.ConfigID() == first.Current().ConfigID() || k.Parsed().MaxNameLen != 32 || k.PublicName() != "chat.example" {
		t.Fatalf("rotated key: id %d (first %d), %+v", k.ConfigID(), first.Current().ConfigID(), k.Parsed())
	}
	seen, err := LoadFrom(ctx, a)
	if err != nil || len(seen.Keys) != 2 || !bytes.Equal(seen.ConfigList(), rotated.ConfigList()) || !seen.Keys[0].Created.Equal(k.Created) {
		t.Fatalf("the first node after the rotation: %v, %d keys", err, len(seen.Keys))
	}

	removed, kept, err := RetireIn(ctx, a, time.Hour, t0.Add(3*time.Hour))
	if err != nil || len(removed) != 1 || removed[0].ConfigID() != first.Current().ConfigID() || len(kept.Keys) != 1 {
		t.Fatalf("retire on the first node: %v, removed %d", err, len(removed))
	}
	seen, err = LoadFrom(ctx, b)
	if err != nil || len(seen.Keys) != 1 || !bytes.Equal(seen.ConfigList(), rotated.ConfigList()) {
		t.Fatalf("the second node after the retirement: %v, %d keys", err, len(seen.Keys))
	}
}

// A value that is no key, or larger than any key, stops the load with the
// key's name: a key is never dropped silently.
func TestSharedKeySetRefusesBadValues(t *testing.T) {
	ctx := context.Background()
	for name, value := range map[string][]byte{
		"not a key": []byte("-----BEGIN NOTHING-----\n"),
		"too large": bytes.Repeat([]byte("#"), maxECHKeyFileSize+1),
	} {
		st := &certmagic.FileStorage{Path: t.TempDir()}
		p := InStorage(st)
		if _, _, err := EnsureIn(ctx, p, "chat.example", 32, time.Now()); err != nil {
			t.Fatal(err)
		}
		bad := SharedKeysPrefix + "/20260101T000000Z-00.pem"
		st.Store(ctx, bad, value)
		if _, err := LoadFrom(ctx, p); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("%s: %v, want an error naming %s", name, err, bad)
		}
		if _, _, err := RotateLikeIn(ctx, p, "", time.Now()); err == nil {
			t.Errorf("%s: rotation over a bad key went on", name)
		}
	}
	// An empty store is an empty set, not an error.
	set, err := LoadFrom(ctx, InStorage(&certmagic.FileStorage{Path: t.TempDir()}))
	if err != nil || len(set.Keys) != 0 {
		t.Fatalf("empty store: %v, %d keys", err, len(set.Keys))
	}
	if _, _, err := RotateLikeIn(ctx, InStorage(&certmagic.FileStorage{Path: t.TempDir()}), "", time.Now()); err == nil || errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "no ECH keys") {
		t.Fatalf("rotate in an empty store: %v", err)
	}
}
