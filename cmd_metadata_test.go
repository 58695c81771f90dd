package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"chatmail-edge/internal/metadatatest"
	"chatmail-edge/metadata"
)

// TestMetadataProxyProcess runs `metadata-proxy` as its unit does: it
// tells systemd when it is ready, answers the ECH entry and passes the rest
// to chatmail's service, and stops cleanly on SIGTERM, removing its socket.
// No edge runs: the proxy needs only the published file.
func TestMetadataProxyProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	chatmail := metadatatest.Start(t, filepath.Join(dir, "chatmail.sock"))
	echFile := filepath.Join(dir, "ech-config-list")
	list := []byte{0, 3, 0xfe, 0x0d, 0}
	if _, err := metadata.PublishECHConfigList(echFile, list); err != nil {
		t.Fatal(err)
	}
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	socket := filepath.Join(dir, "proxy.sock")
	proxy := command(ctx, "metadata-proxy", "--socket", socket, "--upstream", chatmail.Socket, "--ech-file", echFile)
	proxy.Env = append(proxy.Env, "NOTIFY_SOCKET="+filepath.Join(dir, "notify"))
	var stderr bytes.Buffer
	proxy.Stderr = &stderr
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	defer proxy.Process.Kill()

	notify.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 4096)
	n, err := notify.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("no READY=1 from the proxy: %q, %v\n%s", buf[:n], err, stderr.String())
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != metadata.SocketMode {
		t.Fatalf("socket %v, %v", fi, err)
	}

	conn, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	serverKey := "shared/guid/vendor/vendor.dovecot/pvt/server/vendor/deltachat/"
	io.WriteString(conn, "H3\t2\t0\t\tmetadata\nL"+serverKey+"ech\tu\nL"+serverKey+"irohrelay\tu\n")
	r := bufio.NewReader(conn)
	for _, want := range []string{"O" + base64.StdEncoding.EncodeToString(list), "O" + metadatatest.IrohRelay} {
		if got, err := r.ReadString('\n'); err != nil || got != want+"\n" {
			t.Fatalf("reply %q, %v; want %q", got, err, want)
		}
	}

	proxy.Process.Signal(syscall.SIGTERM)
	if err := proxy.Wait(); err != nil {
		t.Fatalf("the proxy did not stop cleanly on SIGTERM: %v\n%s", err, stderr.String())
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
	for _, want := range []string{"serving IMAP METADATA for Dovecot", "stopping"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestMetadataProxyFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--max-connections", "0"},
		{"--upstream-timeout", "-1s"},
		{"--log-level", "loud"},
		{"extra"},
	} {
		var stderr bytes.Buffer
		if code := run(append([]string{"metadata-proxy"}, args...), io.Discard, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)\n%s", args, code, stderr.String())
		}
	}
	// A socket path where a file is in the way fails at once.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	var stderr bytes.Buffer
	if code := run([]string{"metadata-proxy", "--socket", file}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "not a socket") {
		t.Errorf("exit %d: %s", code, stderr.String())
	}
}
