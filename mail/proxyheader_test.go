package mail

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
)

// parsedHeader is what go-proxyproto reads back from a header, in the terms
// of ClientInfo.
type parsedHeader struct {
	command             proxyproto.ProtocolVersionAndCommand
	family              proxyproto.AddressFamilyAndProtocol
	source, destination netip.AddrPort
	alpn, authority     string
	hasALPN, hasAuth    bool
	ssl                 *tlvparse.PP2SSL
}

// parseProxyV2 reads b with go-proxyproto and fails the test unless b is
// exactly one header.
func parseProxyV2(t testing.TB, b []byte) parsedHeader {
	t.Helper()
	r := bufio.NewReader(bytes.NewReader(b))
	h, err := proxyproto.Read(r)
	if err != nil {
		t.Fatalf("go-proxyproto cannot read %x: %v", b, err)
	}
	if r.Buffered() != 0 {
		t.Fatalf("%d bytes after the header", r.Buffered())
	}
	return headerFields(t, h)
}

func headerFields(t testing.TB, h *proxyproto.Header) parsedHeader {
	t.Helper()
	p := parsedHeader{command: h.Command, family: h.TransportProtocol}
	if src, dst, ok := h.TCPAddrs(); ok {
		p.source, p.destination = src.AddrPort(), dst.AddrPort()
	}
	tlvs, err := h.TLVs()
	if err != nil {
		t.Fatalf("TLVs: %v", err)
	}
	for _, tlv := range tlvs {
		switch tlv.Type {
		case proxyproto.PP2_TYPE_ALPN:
			p.alpn, p.hasALPN = string(tlv.Value), true
		case proxyproto.PP2_TYPE_AUTHORITY:
			p.authority, p.hasAuth = string(tlv.Value), true
		case proxyproto.PP2_TYPE_SSL:
			ssl, err := tlvparse.SSL(tlv)
			if err != nil {
				t.Fatalf("SSL TLV %x: %v", tlv.Value, err)
			}
			p.ssl = &ssl
		default:
			t.Fatalf("unexpected TLV type %#x", tlv.Type)
		}
	}
	return p
}

func sslFields(ssl *tlvparse.PP2SSL) (version, cipher string, hasCipher bool) {
	version, _ = ssl.SSLVersion()
	cipher, hasCipher = ssl.SSLCipher()
	return version, cipher, hasCipher
}

func TestAppendProxyV2(t *testing.T) {
	v4 := netip.MustParseAddrPort("203.0.113.7:50123")
	v4Edge := netip.MustParseAddrPort("192.0.2.1:993")
	v6 := netip.MustParseAddrPort("[2001:db8::7]:50123")
	v6Edge := netip.MustParseAddrPort("[2001:db8::1]:443")
	mapped := netip.AddrPortFrom(netip.AddrFrom16(v4.Addr().As16()), 50123)
	mappedEdge := netip.AddrPortFrom(netip.AddrFrom16(v4Edge.Addr().As16()), 993)

	tests := []struct {
		name     string
		src, dst netip.AddrPort
		family   proxyproto.AddressFamilyAndProtocol
		wantSrc  netip.AddrPort
		wantDst  netip.AddrPort
	}{
		{"ipv4", v4, v4Edge, proxyproto.TCPv4, v4, v4Edge},
		{"ipv6", v6, v6Edge, proxyproto.TCPv6, v6, v6Edge},
		{"mapped", mapped, mappedEdge, proxyproto.TCPv4, v4, v4Edge},
		{"ipv4 client, ipv6 edge", v4, v6Edge, proxyproto.TCPv6, mapped, v6Edge},
		{"mapped client, ipv6 edge", mapped, v6Edge, proxyproto.TCPv6, mapped, v6Edge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := ClientInfo{
				Source: tt.src, Destination: tt.dst,
				TLSVersion: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256,
				ServerName: "mail.example.org", ALPN: "imap",
			}
			got := parseProxyV2(t, AppendProxyV2(nil, info))
			if got.command != proxyproto.PROXY || got.family != tt.family {
				t.Errorf("command %v family %#x, want PROXY %#x", got.command, got.family, tt.family)
			}
			if got.source != tt.wantSrc || got.destination != tt.wantDst {
				t.Errorf("addresses %v -> %v, want %v -> %v", got.source, got.destination, tt.wantSrc, tt.wantDst)
			}
			if got.alpn != "imap" || got.authority != "mail.example.org" {
				t.Errorf("ALPN %q authority %q", got.alpn, got.authority)
			}
			if got.ssl == nil || !got.ssl.ClientSSL() || !got.ssl.Verified() || got.ssl.Client != tlvparse.PP2_BITFIELD_CLIENT_SSL {
				t.Fatalf("SSL TLV %+v, want client=PP2_CLIENT_SSL verify=0", got.ssl)
			}
			if version, cipher, _ := sslFields(got.ssl); version != "TLSv1.3" || cipher != "TLS_AES_128_GCM_SHA256" {
				t.Errorf("SSL version %q cipher %q", version, cipher)
			}
		})
	}
}

func TestAppendProxyV2Optional(t *testing.T) {
	base := ClientInfo{
		Source:      netip.MustParseAddrPort("198.51.100.2:4000"),
		Destination: netip.MustParseAddrPort("192.0.2.1:465"),
	}

	plain := parseProxyV2(t, AppendProxyV2(nil, base))
	if plain.ssl != nil || plain.hasALPN || plain.hasAuth {
		t.Errorf("a plaintext client without SNI or ALPN got TLVs: %+v", plain)
	}

	tls12 := base
	tls12.TLSVersion, tls12.CipherSuite = tls.VersionTLS12, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
	got := parseProxyV2(t, AppendProxyV2(nil, tls12))
	if version, cipher, _ := sslFields(got.ssl); version != "TLSv1.2" || cipher != "ECDHE-RSA-AES128-GCM-SHA256" {
		t.Errorf("TLS 1.2: version %q cipher %q, want OpenSSL's names", version, cipher)
	}

	odd := base
	odd.TLSVersion, odd.CipherSuite = 0x7f1c, 0xfefe
	odd.ServerName = "bad name\r\n"
	odd.ALPN = strings.Repeat("x", 256)
	got = parseProxyV2(t, AppendProxyV2(nil, odd))
	if version, _, hasCipher := sslFields(got.ssl); version != "unknown" || hasCipher {
		t.Errorf("unknown version/suite: version %q, cipher sent %v", version, hasCipher)
	}
	if got.hasAuth || got.hasALPN {
		t.Errorf("an invalid SNI or an over-long ALPN was sent: %+v", got)
	}

	noAddr := parseProxyV2(t, AppendProxyV2(nil, ClientInfo{Destination: netip.MustParseAddrPort("[2001:db8::1]:993")}))
	if noAddr.family != proxyproto.TCPv6 || noAddr.source.Addr() != netip.IPv6Unspecified() {
		t.Errorf("missing source: family %#x source %v, want :: in IPv6", noAddr.family, noAddr.source)
	}
}

func TestAppendProxyV2Local(t *testing.T) {
	got := parseProxyV2(t, AppendProxyV2Local([]byte{}))
	if got.command != proxyproto.LOCAL || got.family != proxyproto.UNSPEC {
		t.Errorf("command %v family %#x, want LOCAL UNSPEC", got.command, got.family)
	}
}

func TestAppendProxyV2AppendsAndDoesNotAllocate(t *testing.T) {
	longest := ClientInfo{
		Source:      netip.MustParseAddrPort("[2001:db8::7]:1"),
		Destination: netip.MustParseAddrPort("[2001:db8::1]:2"),
		TLSVersion:  tls.VersionTLS13, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		ServerName: strings.Repeat("a", maxTLVString), ALPN: strings.Repeat("b", maxTLVString),
	}
	buf := make([]byte, 0, 3+maxProxyV2Len)
	buf = append(buf, "abc"...)
	out := AppendProxyV2(buf, longest)
	if len(out) != 3+maxProxyV2Len || string(out[:3]) != "abc" {
		t.Fatalf("appended %d bytes after the prefix %q, want %d", len(out)-3, out[:3], maxProxyV2Len)
	}
	parseProxyV2(t, out[3:])
	allocs := testing.AllocsPerRun(100, func() { AppendProxyV2(buf[:0], longest) })
	if allocs != 0 {
		t.Errorf("%v allocations with room in dst, want 0", allocs)
	}
}

// FuzzAppendProxyV2 checks that go-proxyproto reads back every ClientInfo as
// AppendProxyV2 documents it.
func FuzzAppendProxyV2(f *testing.F) {
	f.Add([]byte{203, 0, 113, 7}, uint16(50000), []byte{192, 0, 2, 1}, uint16(993), uint16(tls.VersionTLS13), uint16(tls.TLS_AES_128_GCM_SHA256), "mail.example.org", "imap")
	f.Add([]byte(net.ParseIP("2001:db8::7")), uint16(1), []byte(net.ParseIP("::ffff:192.0.2.1")), uint16(465), uint16(0), uint16(0), "", "")
	f.Add([]byte{}, uint16(0), []byte{1, 2, 3}, uint16(0), uint16(0x0300), uint16(0xffff), "é", "h2")
	f.Fuzz(func(t *testing.T, src []byte, srcPort uint16, dst []byte, dstPort uint16, version, suite uint16, sni, alpn string) {
		srcAddr, _ := netip.AddrFromSlice(src)
		dstAddr, _ := netip.AddrFromSlice(dst)
		info := ClientInfo{
			Source:      netip.AddrPortFrom(srcAddr, srcPort),
			Destination: netip.AddrPortFrom(dstAddr, dstPort),
			TLSVersion:  version, CipherSuite: suite, ServerName: sni, ALPN: alpn,
		}
		got := parseProxyV2(t, AppendProxyV2(nil, info))

		wantSrc, wantDst, family := expectedAddrs(srcAddr, dstAddr)
		if got.command != proxyproto.PROXY || got.family != family {
			t.Errorf("command %v family %#x, want PROXY %#x", got.command, got.family, family)
		}
		if got.source != netip.AddrPortFrom(wantSrc, srcPort) || got.destination != netip.AddrPortFrom(wantDst, dstPort) {
			t.Errorf("addresses %v -> %v, want %v:%d -> %v:%d", got.source, got.destination, wantSrc, srcPort, wantDst, dstPort)
		}
		wantALPN := alpn != "" && len(alpn) <= maxTLVString
		if got.hasALPN != wantALPN || (wantALPN && got.alpn != alpn) {
			t.Errorf("ALPN %q (sent %v), from %q", got.alpn, got.hasALPN, alpn)
		}
		if got.hasAuth != isHostText(sni) || (got.hasAuth && got.authority != sni) {
			t.Errorf("authority %q (sent %v), from %q", got.authority, got.hasAuth, sni)
		}
		if (got.ssl != nil) != (version != 0) {
			t.Fatalf("SSL TLV present %v for TLS version %#x", got.ssl != nil, version)
		}
		if got.ssl != nil {
			gotVersion, gotCipher, hasCipher := sslFields(got.ssl)
			if !got.ssl.ClientSSL() || gotVersion != tlsVersionName(version) {
				t.Errorf("SSL client %#x version %q, want SSL bit and %q", got.ssl.Client, gotVersion, tlsVersionName(version))
			}
			if want := cipherSuiteName(suite); gotCipher != want || hasCipher != (want != "") {
				t.Errorf("cipher %q (sent %v), want %q", gotCipher, hasCipher, want)
			}
		}
	})
}

// expectedAddrs is the documented address rule, written independently of
// AppendProxyV2.
func expectedAddrs(src, dst netip.Addr) (netip.Addr, netip.Addr, proxyproto.AddressFamilyAndProtocol) {
	src, dst = src.Unmap(), dst.Unmap()
	switch {
	case !src.IsValid() && !dst.IsValid():
		return netip.IPv4Unspecified(), netip.IPv4Unspecified(), proxyproto.TCPv4
	case !src.IsValid():
		src = unspecifiedLike(dst)
	case !dst.IsValid():
		dst = unspecifiedLike(src)
	}
	if src.Is4() && dst.Is4() {
		return src, dst, proxyproto.TCPv4
	}
	return netip.AddrFrom16(src.As16()), netip.AddrFrom16(dst.As16()), proxyproto.TCPv6
}
