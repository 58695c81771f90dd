package edge

import (
	"crypto/tls"
	"net"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

func threadCPU() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// BenchmarkServerHandshake measures full TLS 1.3 handshakes with the edge's
// own server configuration: without ECH, with ECH as the edge does it (its
// front opens the ClientHello, echfront.go), and with ECH left to crypto/tls
// alone. The client runs in the same process, so ns/op covers both sides;
// server-cpu-µs/op is the CPU time of the server's thread alone (its
// goroutine is locked to it), which is the figure docs/BENCHMARKS.md
// compares.
func BenchmarkServerHandshake(b *testing.B) {
	for _, v := range []struct {
		name           string
		withECH, front bool
	}{{"plain", false, false}, {"ech", true, true}, {"ech-crypto-tls-alone", true, false}} {
		withECH := v.withECH
		b.Run(v.name, func(b *testing.B) {
			e, err := New(Config{Listeners: []ListenerConfig{{Name: "https", Address: "127.0.0.1:0"}}}, zap.NewNop(), func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return testLeaf, nil })
			if err != nil {
				b.Fatal(err)
			}
			set := testKeySet(b, 1)
			e.SetECHKeys(set.TLSKeys(), 1)
			serverConfig := e.listeners[0].tlsConfig
			clientConfig := &tls.Config{
				ServerName: "chat.example", RootCAs: testRoots,
				// Fixed curve so both runs do the same key exchange (X25519
				// only, as OpenSSL 3.0 baselines can).
				CurvePreferences: []tls.CurveID{tls.X25519},
			}
			if withECH {
				clientConfig.EncryptedClientHelloConfigList = set.ConfigList()
			}
			conns := make(chan net.Conn)
			var serverCPU time.Duration
			done := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				defer close(done)
				for c := range conns {
					start := threadCPU()
					var front *echFront
					if v.front {
						front = newECHFront(e.echFront.Load(), nil)
						c = &frontConn{Conn: c, front: front}
					}
					srv := tls.Server(c, serverConfig)
					if err := srv.Handshake(); err != nil {
						b.Error(err)
					}
					serverCPU += threadCPU() - start
					if withECH && !srv.ConnectionState().ECHAccepted && (front == nil || !front.accepted) {
						b.Error("ECH not accepted")
					}
					c.Close()
				}
			}()
			b.ResetTimer()
			for range b.N {
				cc, sc := net.Pipe()
				conns <- sc
				client := tls.Client(cc, clientConfig)
				if err := client.Handshake(); err != nil {
					b.Fatal(err)
				}
				cc.Close()
			}
			close(conns)
			<-done
			b.ReportMetric(float64(serverCPU.Microseconds())/float64(b.N), "server-cpu-µs/op")
		})
	}
}

// BenchmarkECHOpen opens one real ClientHelloOuter: as the edge's front does
// (key parsed once), and as crypto/tls does on every handshake (key parsed
// again, which costs an X25519 scalar multiplication), without the rest of
// the handshake around it.
func BenchmarkECHOpen(b *testing.B) {
	set := testKeySet(b, 1)
	record := clientHelloRecord(b, frontClientConfig(set.ConfigList()))
	keys := newECHFrontKeys(set.TLSKeys())
	b.Run("front", func(b *testing.B) {
		for b.Loop() {
			f := newECHFront(keys, nil)
			f.hellos = 1
			if _, ok := f.openHello(record[recordHeaderLen:], [2]byte(record[1:3])); !ok {
				b.Fatal("not opened")
			}
		}
	})
	b.Run("key-parsed-each-time", func(b *testing.B) {
		raw := set.TLSKeys()
		for b.Loop() {
			f := newECHFront(newECHFrontKeys(raw), nil)
			f.hellos = 1
			if _, ok := f.openHello(record[recordHeaderLen:], [2]byte(record[1:3])); !ok {
				b.Fatal("not opened")
			}
		}
	})
}
