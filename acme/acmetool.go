package acme

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"chatmail-edge/internal/filelimit"

	"github.com/caddyserver/certmagic"
	acmeapi "github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// acmetool's state folder (its storage/storage-fdb.go), as chatmail's
// cmdeploy leaves it in /var/lib/acme:
//
//	accounts/<directory URL, query-escaped, without scheme>/<key id>/privkey
//	live/<name> -> ../certs/<cert id>/  with fullchain, privkey, url
//
// Postfix and Dovecot read live/<mail domain>/{fullchain,privkey}.

// acmetoolAccountKey returns the key of acmetool's account at the CA with
// directoryURL and the file it came from; fs.ErrNotExist if acmetool has
// none there. A key file that exists but cannot be used is an error naming
// it: the relay's CAA record may pin that account (RFC 8657 §3), so it must
// never be silently replaced by a new one.
func acmetoolAccountKey(dir, directoryURL string) ([]byte, crypto.Signer, string, error) {
	want, err := normalURL(directoryURL)
	if err != nil {
		return nil, nil, "", err
	}
	servers, err := os.ReadDir(filepath.Join(dir, "accounts"))
	if err != nil {
		return nil, nil, "", err
	}
	for _, server := range servers {
		got, err := decodeAcmetoolURLPart(server.Name())
		if err != nil || got != want {
			continue
		}
		keys, err := os.ReadDir(filepath.Join(dir, "accounts", server.Name()))
		if err != nil {
			return nil, nil, "", fmt.Errorf("read acmetool accounts: %w", err)
		}
		for _, k := range keys {
			file := filepath.Join(dir, "accounts", server.Name(), k.Name(), "privkey")
			keyPEM, err := filelimit.ReadFile(file, filelimit.Small)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, nil, file, fmt.Errorf("read acmetool account key: %w", err)
			}
			key, err := certmagic.PEMDecodePrivateKey(keyPEM)
			if err != nil {
				return nil, nil, file, fmt.Errorf("acmetool account key %s: %w", file, err)
			}
			return keyPEM, key, file, nil
		}
	}
	return nil, nil, "", fs.ErrNotExist
}

// decodeAcmetoolURLPart undoes acmetool's accountURLPart.
func decodeAcmetoolURLPart(part string) (string, error) {
	scheme := "https"
	if rest, ok := strings.CutPrefix(part, "http:"); ok {
		scheme, part = "http", rest
	}
	unescaped, err := url.QueryUnescape(part)
	if err != nil {
		return "", err
	}
	return normalURL(scheme + "://" + unescaped)
}

func normalURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("not a URL: %q", s)
	}
	if u.Path == "" {
		u.Path = "/"
	}
	u.Host = strings.ToLower(u.Host)
	return u.String(), nil
}

// acmetoolLive is the certificate acmetool serves for a name.
type acmetoolLive struct {
	chainPEM, keyPEM []byte
	certURL          string
	certFile         string
}

func readAcmetoolLive(dir, name string) (*acmetoolLive, error) {
	live := filepath.Join(dir, "live", name)
	l := &acmetoolLive{certFile: filepath.Join(live, "fullchain")}
	var err error
	if l.chainPEM, err = filelimit.ReadFile(l.certFile, filelimit.PEM); err != nil {
		return nil, err
	}
	keyFile := filepath.Join(live, "privkey")
	if l.keyPEM, err = filelimit.ReadFile(keyFile, filelimit.Small); err != nil {
		return nil, fmt.Errorf("read acmetool certificate key: %w", err)
	}
	if u, err := filelimit.ReadFile(filepath.Join(live, "url"), filelimit.Small); err == nil {
		l.certURL = strings.TrimSpace(string(u))
	}
	return l, nil
}

// importAcmetoolCert files acmetool's live certificate for the mail domain
// in the storage, so that nothing is issued again needlessly. It returns
// the imported certificate, or nil when there is nothing to import.
func (m *Manager) importAcmetoolCert(ctx context.Context) (*storedCert, error) {
	dir := m.cfg.AcmetoolDir
	if dir == "" {
		return nil, nil
	}
	live, err := readAcmetoolLive(dir, m.cfg.Domain)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	pair, err := keyPair(live.chainPEM, live.keyPEM)
	if err != nil {
		return nil, fmt.Errorf("acmetool certificate %s: %w", live.certFile, err)
	}
	if err := pair.Leaf.VerifyHostname(m.cfg.Domain); err != nil {
		return nil, fmt.Errorf("acmetool certificate %s: %w", live.certFile, err)
	}
	if time.Now().After(pair.Leaf.NotAfter) {
		m.log.Info("acmetool's certificate has expired; not taking it over", zap.String("file", live.certFile))
		return nil, nil
	}
	primary := m.cas[0]
	data := acmeapi.Certificate{URL: live.certURL}
	// Renewals announce the certificate they replace (RFC 9773 §5) only to
	// the CA that issued it, which is the one acmetool has an account at.
	if _, _, _, err := acmetoolAccountKey(dir, primary.url); err == nil {
		data.CA = primary.url
	}
	ik := issuerKey(primary.url)
	if err := m.store.saveCert(ctx, m.cfg.Domain, ik, chainPEM(pair), live.keyPEM, data); err != nil {
		return nil, fmt.Errorf("take over acmetool certificate: %w", err)
	}
	// The other names it covers get their own certificates later (certmagic
	// keeps one name per certificate); filed beside them, acmetool's key is
	// the one those certificates get (ReusePrivateKeys), so that every name
	// keeps the key clients may have pinned.
	for _, name := range m.names[1:] {
		if pair.Leaf.VerifyHostname(name) != nil {
			continue
		}
		if _, err := m.store.loadCert(ctx, name, m.issuerKeys()); !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := m.store.saveKey(ctx, name, ik, live.keyPEM); err != nil {
			return nil, fmt.Errorf("take over acmetool certificate key: %w", err)
		}
	}
	m.importedCert = live.certFile
	m.log.Info("took over acmetool's certificate", zap.String("file", live.certFile),
		zap.Strings("names", pair.Leaf.DNSNames), zap.Time("not_after", pair.Leaf.NotAfter))
	return &storedCert{issuerKey: ik, chainPEM: chainPEM(pair), keyPEM: live.keyPEM, data: data, cert: pair}, nil
}

// Imported says what ImportAcmetool took over; "" for nothing new.
type Imported struct {
	AccountKey  string // acmetool's account key file
	Certificate string // acmetool's live certificate file
}

// ImportAcmetool takes over acmetool's account key at cfg.CA and the mail
// domain's live certificate into cfg.StorageDir, without contacting any
// CA. Running it again changes nothing. serve does the same by itself; the
// installer uses it to say what it took over.
func ImportAcmetool(cfg Config, log *zap.Logger) (Imported, error) {
	var imp Imported
	if cfg.AcmetoolDir == "" {
		return imp, errors.New("no acmetool folder given")
	}
	m, err := NewManager(cfg, log)
	if err != nil {
		return imp, err
	}
	defer m.Stop()
	imp.Certificate = m.importedCert
	if err := m.states[m.cfg.Domain].lastErr; err != nil {
		return imp, err
	}
	ctx := context.Background()
	ik := issuerKey(m.cas[0].url)
	unlock, err := m.store.lock(ctx, accountLock(ik))
	if err != nil {
		return imp, err
	}
	defer unlock()
	_, _, imp.AccountKey, err = m.accountKey(ctx, m.cas[0])
	return imp, err
}
