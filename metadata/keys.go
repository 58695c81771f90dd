// Package metadata delivers the relay's ECH config list over IMAP METADATA
// (RFC 5464): a small proxy for Dovecot's dict protocol that answers the
// server entry ECHEntry from the file the edge publishes and passes every
// other request unchanged to chatmail's metadata service
// (chatmaild/src/chatmaild/metadata.py). The proxy runs as its own unit
// (`chatmail-edge metadata-proxy`), so METADATA keeps working whether or
// not the edge's main process runs. docs/METADATA.md describes the key, the
// file and how Dovecot is pointed at the proxy.
package metadata

import "strings"

// ECHEntry is the IMAP METADATA server entry that holds the ECHConfigList
// (RFC 9849 §4), standard base64 on one line: `GETMETADATA ""
// (/shared/vendor/deltachat/ech)`. It sits beside chatmail's own server
// entries (irohrelay, turn, ...) under Delta Chat's vendor token (RFC 5464
// §3.2).
const ECHEntry = "/shared/" + echVendorPath

const echVendorPath = "vendor/deltachat/ech"

// Where things are on a relay.
const (
	// DefaultSocket is where the proxy listens for Dovecot, in the
	// runtime folder of its unit.
	DefaultSocket = "/run/chatmail-edge-metadata/metadata.socket"
	// ChatmailSocket is chatmail's metadata service (chatmail's
	// chatmail-metadata.service and dovecot.conf.j2).
	ChatmailSocket = "/run/chatmail-metadata/metadata.socket"
	// DefaultECHFile is the edge's `[ech] metadata_file`.
	DefaultECHFile = "/run/chatmail-edge/ech-config-list"
	// DictName is the dict name chatmail's mail_attribute_dict gives
	// (the part after the socket); Dovecot sends it in its hello.
	DictName = "metadata"
)

// DovecotAttributeDict is the Dovecot setting (mail_attribute_dict,
// doc.dovecot.org 2.3 "Mailbox attributes") that sends every METADATA
// request to the proxy on socket. chatmail's dovecot.conf sets the same
// setting to ChatmailSocket; a later assignment, in a drop-in included at
// the end of dovecot.conf, takes its place.
func DovecotAttributeDict(socket string) string {
	return "mail_attribute_dict = proxy:" + socket + ":" + DictName
}

// Dovecot stores a server entry (mailbox "") as an attribute of the user's
// INBOX under the private prefix for server attributes, and keys its dict by
// type and mailbox GUID (lib-storage/mailbox-attribute.h,
// MAILBOX_ATTRIBUTE_PREFIX_DOVECOT_PVT_SERVER; index-attribute.c,
// key_get_prefixed). Entry names are lowercased first (imap-metadata.c,
// imap_metadata_entry2key). So ECHEntry arrives as
//
//	shared/<INBOX GUID>/vendor/vendor.dovecot/pvt/server/vendor/deltachat/ech
const (
	sharedDictPrefix = "shared/"
	serverAttrPrefix = "vendor/vendor.dovecot/pvt/server/"
	echDictSuffix    = "/" + serverAttrPrefix + echVendorPath
)

// isECHKey tells whether a lookup's dict key is ECHEntry of some user.
func isECHKey(key string) bool {
	guid, ok := strings.CutPrefix(key, sharedDictPrefix)
	if !ok {
		return false
	}
	guid, ok = strings.CutSuffix(guid, echDictSuffix)
	return ok && guid != "" && !strings.Contains(guid, "/")
}
