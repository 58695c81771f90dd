package acme

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/certmagic"
	acmeapi "github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// caConfig is one CA the Manager may ask.
type caConfig struct {
	url         string
	eab         *EAB
	eabEndpoint string // hands out EAB credentials for an e-mail address (ZeroSSL)
}

const zeroSSLEABEndpoint = "https://api.zerossl.com/acme/eab-credentials-email"

// account is an ACME account that is registered and filed where certmagic
// looks for it.
type account struct {
	acct     acmeapi.Account
	keyPEM   []byte
	location string
}

// accountLock serialises the making of the edge's account at a CA, also
// across nodes on one storage.
func accountLock(ik string) string { return "edge_account_" + ik }

// ensureAccount returns the account at ca: the one the edge has, else
// acmetool's (taken over so that the relay's CAA record, RFC 8659, with its
// accounturi, RFC 8657 §3, stays true), else a new one. Registering is
// "newAccount" with the key (RFC 8555 §7.3), which for a key the CA knows
// returns the existing account's URL. certmagic calls it (through its
// NewAccountFunc hook) the first time it needs an account at a CA, so the
// fallback CA's account is only made when the first CA fails.
func (m *Manager) ensureAccount(ctx context.Context, ca caConfig, client *http.Client) (*account, error) {
	ik := issuerKey(ca.url)
	unlock, err := m.store.lock(ctx, accountLock(ik))
	if err != nil {
		return nil, err
	}
	defer unlock()
	keyPEM, key, _, err := m.accountKey(ctx, ca)
	if err != nil {
		return nil, err
	}
	info, err := m.store.loadAccountInfo(ctx, ik)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	acct := acmeapi.Account{
		Status: acmeapi.StatusValid, Contact: info.Contact, Location: info.Location,
		TermsOfServiceAgreed: true, PrivateKey: key,
	}
	if info.Location == "" {
		acct.Status = ""
		if m.cfg.Email != "" {
			acct.Contact = []string{"mailto:" + m.cfg.Email}
		}
		if acct, err = m.register(ctx, ca, client, acct); err != nil {
			return nil, err
		}
		if err := m.store.saveAccountInfo(ctx, ik, accountInfo{Location: acct.Location, Contact: acct.Contact}); err != nil {
			return nil, fmt.Errorf("save ACME account: %w", err)
		}
		m.log.Info("ACME account ready", zap.String("ca", ca.url), zap.String("account", acct.Location))
	}
	if err := m.store.certmagicAccount(ctx, ik, m.certmagicEmail(), acct, keyPEM); err != nil {
		return nil, err
	}
	return &account{acct: acct, keyPEM: keyPEM, location: acct.Location}, nil
}

// certmagicEmail is the address the issuers are given (see
// certmagicNoEmail).
func (m *Manager) certmagicEmail() string {
	if m.cfg.Email == "" {
		return certmagicNoEmail
	}
	return strings.ToLower(m.cfg.Email)
}

// accountKey loads the edge's key for ca, taking over acmetool's (from
// names its file) or making one on first use. A key that cannot be used is
// an error naming it, never replaced. The caller holds the account lock.
func (m *Manager) accountKey(ctx context.Context, ca caConfig) (keyPEM []byte, key crypto.Signer, from string, err error) {
	ik := issuerKey(ca.url)
	keyPEM, err = m.store.s.Load(ctx, accountKeyKey(ik))
	if err == nil {
		key, err := certmagic.PEMDecodePrivateKey(keyPEM)
		if err != nil {
			return nil, nil, "", fmt.Errorf("ACME account key %s: %w", accountKeyKey(ik), err)
		}
		return keyPEM, key, "", nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, "", fmt.Errorf("read ACME account key: %w", err)
	}
	if m.cfg.AcmetoolDir != "" {
		keyPEM, key, from, err = acmetoolAccountKey(m.cfg.AcmetoolDir, ca.url)
		switch {
		case err == nil:
			m.log.Info("took over acmetool's ACME account key", zap.String("file", from), zap.String("ca", ca.url))
		case !errors.Is(err, fs.ErrNotExist):
			return nil, nil, "", err
		}
	}
	if key == nil {
		ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, "", err
		}
		if keyPEM, err = certmagic.PEMEncodePrivateKey(ec); err != nil {
			return nil, nil, "", err
		}
		key = ec
	}
	if err := m.store.saveAccountKey(ctx, ik, keyPEM); err != nil {
		return nil, nil, "", fmt.Errorf("save ACME account key: %w", err)
	}
	return keyPEM, key, from, nil
}

// register finds or creates the account for acct's key at ca.
func (m *Manager) register(ctx context.Context, ca caConfig, client *http.Client, acct acmeapi.Account) (acmeapi.Account, error) {
	c := &acmeapi.Client{Directory: ca.url, HTTPClient: client}
	dir, err := c.GetDirectory(ctx)
	if err != nil {
		return acct, fmt.Errorf("read directory: %w", err)
	}
	eab := ca.eab
	if eab == nil && dir.Meta != nil && dir.Meta.ExternalAccountRequired {
		if ca.eabEndpoint == "" || m.cfg.Email == "" {
			return acct, errors.New("the CA requires external account binding: configure its key id and HMAC key (or, for ZeroSSL, an e-mail address)")
		}
		if eab, err = fetchEmailEAB(ctx, client, ca.eabEndpoint, m.cfg.Email); err != nil {
			return acct, err
		}
	}
	if eab != nil {
		if err := acct.SetExternalAccountBinding(ctx, c, acmeapi.EAB{KeyID: eab.KeyID, MACKey: eab.MACKey}); err != nil {
			return acct, fmt.Errorf("external account binding: %w", err)
		}
	}
	acct, err = c.NewAccount(ctx, acct)
	if err != nil {
		return acct, fmt.Errorf("register: %w", err)
	}
	if acct.Location == "" {
		return acct, errors.New("register: the CA sent no account URL")
	}
	return acct, nil
}

// fetchEmailEAB asks ZeroSSL for EAB credentials for an e-mail address, as
// its documentation for ACME clients describes.
func fetchEmailEAB(ctx context.Context, client *http.Client, endpoint, email string) (*EAB, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(url.Values{"email": {email}}.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get EAB credentials: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var r struct {
		Success bool   `json:"success"`
		KeyID   string `json:"eab_kid"`
		MACKey  string `json:"eab_hmac_key"`
	}
	if err := json.Unmarshal(body, &r); err != nil || !r.Success || r.KeyID == "" || r.MACKey == "" {
		return nil, fmt.Errorf("get EAB credentials from %s: HTTP %d: %.200s", endpoint, resp.StatusCode, body)
	}
	return &EAB{KeyID: r.KeyID, MACKey: r.MACKey}, nil
}

// AccountURL returns the URL of the edge's account at the (first) CA,
// taking over acmetool's or registering one if there is none yet. It is
// what a CAA record's accounturi names (RFC 8657 §3).
func (m *Manager) AccountURL(ctx context.Context) (string, error) {
	ca := m.cas[0]
	if info, err := m.store.loadAccountInfo(ctx, issuerKey(ca.url)); err == nil && info.Location != "" {
		return info.Location, nil
	}
	roots, _, err := m.roots()
	if err != nil {
		return "", err
	}
	acct, err := m.ensureAccount(ctx, ca, caHTTPClient(roots))
	if err != nil {
		return "", fmt.Errorf("%s: %w", ca.url, err)
	}
	return acct.location, nil
}
