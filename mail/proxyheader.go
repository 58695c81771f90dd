package mail

import (
	"net/netip"
)

// ClientInfo describes a client connection the edge forwards to a backend.
type ClientInfo struct {
	Source, Destination netip.AddrPort // client address as seen by the edge, and the edge's local address
	TLSVersion          uint16         // tls.VersionTLS13 ...; 0 = not TLS
	CipherSuite         uint16
	ServerName          string // inner SNI
	ALPN                string
}

// PROXY protocol version 2, haproxy's proxy-protocol.txt §2.2.
const (
	pp2Signature = "\r\n\r\n\x00\r\nQUIT\n" // the 12-byte signature
	pp2CmdLocal  = 0x20                     // version 2, LOCAL
	pp2CmdProxy  = 0x21                     // version 2, PROXY
	pp2Unspec    = 0x00                     // AF_UNSPEC, UNSPEC
	pp2TCP4      = 0x11                     // TCP over IPv4
	pp2TCP6      = 0x21                     // TCP over IPv6
	pp2AddrLen4  = 4 + 4 + 2 + 2            // src, dst, src port, dst port
	pp2AddrLen6  = 16 + 16 + 2 + 2
	pp2TLVHeader = 3 // type, length_hi, length_lo

	pp2TypeALPN       = 0x01 // §2.2.1
	pp2TypeAuthority  = 0x02 // §2.2.2
	pp2TypeSSL        = 0x20 // §2.2.6
	pp2SubtypeVersion = 0x21
	pp2SubtypeCipher  = 0x23
	pp2ClientSSL      = 0x01
	pp2SSLFixedLen    = 1 + 4 // client, verify

	// ALPN protocol names (RFC 7301 §3.1) and host names are at most 255
	// bytes; longer values are not what a TLS stack hands us, and dropping
	// them keeps the header far below receivers' limits (go-proxyproto
	// accepts 4 KiB).
	maxTLVString = 255

	// maxProxyV2Len is the longest header AppendProxyV2 writes: IPv6, both
	// strings at their limit, "TLSv1.3" and the longest cipher name.
	maxProxyV2Len = 16 + pp2AddrLen6 + 2*(pp2TLVHeader+maxTLVString) +
		pp2TLVHeader + pp2SSLFixedLen + pp2TLVHeader + len("TLSv1.3") + pp2TLVHeader + len("ECDHE-ECDSA-CHACHA20-POLY1305")
)

// AppendProxyV2Local appends a PROXY v2 header with the LOCAL command and no
// address (proxy-protocol.txt §2.2: the receiver uses the real connection
// endpoints). Postfix and Dovecot accept it for health checks.
func AppendProxyV2Local(dst []byte) []byte {
	dst = append(dst, pp2Signature...)
	return append(dst, pp2CmdLocal, pp2Unspec, 0, 0)
}

// AppendProxyV2 appends a PROXY v2 header (proxy-protocol.txt §2.2) that
// tells the backend who the client is: the PROXY command for TCP, the
// addresses, and the TLVs PP2_TYPE_ALPN (§2.2.1), PP2_TYPE_AUTHORITY (§2.2.2,
// the SNI) and, for a TLS client, PP2_TYPE_SSL (§2.2.6). Dovecot treats a
// connection with PP2_CLIENT_SSL set as secured, so that LOGIN works on the
// plaintext loopback port.
//
// Addresses: 4-in-6 mapped addresses are sent as IPv4; when the two families
// still differ both are sent as IPv6, the IPv4 one mapped. An invalid address
// is sent as the unspecified address of the other's family. An ALPN value
// longer than 255 bytes, and a ServerName that is not 1 to 255 bytes of
// printable ASCII, are left out.
//
// The cipher sub-TLV is left out for a suite crypto/tls does not implement.
//
// It allocates nothing when dst has room for the header (maxProxyV2Len).
func AppendProxyV2(dst []byte, info ClientInfo) []byte {
	src, dstAddr := info.Source.Addr().Unmap(), info.Destination.Addr().Unmap()
	if !src.IsValid() {
		src = unspecifiedLike(dstAddr)
	}
	if !dstAddr.IsValid() {
		dstAddr = unspecifiedLike(src)
	}
	family, addrLen := byte(pp2TCP4), pp2AddrLen4
	if !src.Is4() || !dstAddr.Is4() {
		family, addrLen = pp2TCP6, pp2AddrLen6
	}

	alpn, authority := info.ALPN, info.ServerName
	if len(alpn) > maxTLVString {
		alpn = ""
	}
	if !isHostText(authority) {
		authority = ""
	}
	version, cipher := tlsVersionName(info.TLSVersion), cipherSuiteName(info.CipherSuite)

	length := addrLen + tlvLen(alpn) + tlvLen(authority)
	if info.TLSVersion != 0 {
		length += pp2TLVHeader + sslTLVLen(version, cipher)
	}

	dst = append(dst, pp2Signature...)
	dst = append(dst, pp2CmdProxy, family, byte(length>>8), byte(length))
	// Address block: source, destination, source port, destination port,
	// all in network byte order (§2.2).
	if family == pp2TCP4 {
		s, d := src.As4(), dstAddr.As4()
		dst = append(dst, s[:]...)
		dst = append(dst, d[:]...)
	} else {
		s, d := src.As16(), dstAddr.As16()
		dst = append(dst, s[:]...)
		dst = append(dst, d[:]...)
	}
	dst = appendUint16(dst, info.Source.Port())
	dst = appendUint16(dst, info.Destination.Port())

	dst = appendTLV(dst, pp2TypeALPN, alpn)
	dst = appendTLV(dst, pp2TypeAuthority, authority)
	if info.TLSVersion != 0 {
		// struct pp2_tlv_ssl: client bit field, verify (0: no client
		// certificate to fail, as haproxy sends), then sub-TLVs (§2.2.6).
		dst = append(dst, pp2TypeSSL)
		dst = appendUint16(dst, uint16(sslTLVLen(version, cipher)))
		dst = append(dst, pp2ClientSSL, 0, 0, 0, 0)
		dst = appendTLV(dst, pp2SubtypeVersion, version)
		dst = appendTLV(dst, pp2SubtypeCipher, cipher)
	}
	return dst
}

func unspecifiedLike(a netip.Addr) netip.Addr {
	if a.Is6() {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// isHostText reports whether s can go into PP2_TYPE_AUTHORITY: an SNI host
// name (RFC 6066 §3) is a DNS name, so 1 to 255 bytes of printable ASCII.
func isHostText(s string) bool {
	if len(s) == 0 || len(s) > maxTLVString {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

func sslTLVLen(version, cipher string) int {
	return pp2SSLFixedLen + tlvLen(version) + tlvLen(cipher)
}

// tlvLen is the encoded size of a TLV holding value, 0 for an empty value
// (which is not sent).
func tlvLen(value string) int {
	if value == "" {
		return 0
	}
	return pp2TLVHeader + len(value)
}

// appendTLV appends struct pp2_tlv {type, length_hi, length_lo, value}
// (§2.2), or nothing for an empty value.
func appendTLV(dst []byte, typ byte, value string) []byte {
	if value == "" {
		return dst
	}
	dst = append(dst, typ)
	dst = appendUint16(dst, uint16(len(value)))
	return append(dst, value...)
}

func appendUint16(dst []byte, v uint16) []byte {
	return append(dst, byte(v>>8), byte(v))
}
