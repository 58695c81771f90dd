package edge

import (
	"net"
	"testing"

	proxyproto "github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// TestBackendGetsProxyHeader: in proxy mode the backend learns the client's
// address, that it used TLS (version, cipher), and its inner SNI and ALPN.
func TestBackendGetsProxyHeader(t *testing.T) {
	te, imapB, _ := startEdgeWithBackends(t, nil)
	set := testKeySet(t, 5)
	te.useKeys(set)
	conn, err := te.dial(t, "https", []string{"imap"}, set.ConfigList())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readLine(t, conn)
	h := <-imapB.headers

	src, dst, ok := h.TCPAddrs()
	if !ok || h.Command != proxyproto.PROXY {
		t.Fatalf("header %+v is not a PROXY over TCP", h)
	}
	client := conn.LocalAddr().(*net.TCPAddr)
	if !src.IP.Equal(client.IP) || src.Port != client.Port {
		t.Fatalf("source %v, want the client's address %v", src, client)
	}
	if dst.String() != te.addr("https") {
		t.Fatalf("destination %v, want the edge's listener %v", dst, te.addr("https"))
	}
	tlvs, err := h.TLVs()
	if err != nil {
		t.Fatal(err)
	}
	var ssl *tlvparse.PP2SSL
	var authority, alpn string
	for _, tlv := range tlvs {
		switch tlv.Type {
		case proxyproto.PP2_TYPE_SSL:
			s, err := tlvparse.SSL(tlv)
			if err != nil {
				t.Fatal(err)
			}
			ssl = &s
		case proxyproto.PP2_TYPE_AUTHORITY:
			authority = string(tlv.Value)
		case proxyproto.PP2_TYPE_ALPN:
			alpn = string(tlv.Value)
		}
	}
	if ssl == nil || !ssl.ClientSSL() {
		t.Fatal("no SSL TLV with the client-SSL bit")
	}
	if v, _ := ssl.SSLVersion(); v != "TLSv1.3" {
		t.Errorf("SSL version %q", v)
	}
	if c, _ := ssl.SSLCipher(); c != "TLS_AES_128_GCM_SHA256" && c != "TLS_AES_256_GCM_SHA384" && c != "TLS_CHACHA20_POLY1305_SHA256" {
		t.Errorf("SSL cipher %q", c)
	}
	if authority != "chat.example" || alpn != "imap" {
		t.Errorf("authority %q, ALPN %q; want the inner SNI and ALPN", authority, alpn)
	}
}
