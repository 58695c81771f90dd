package config

import (
	"path/filepath"
	"strings"

	"chatmail-edge/acme"
)

// ACME is the ACME manager's part of the settings.
func (s *Settings) ACME() acme.Config {
	names := []string{s.MailDomain, "mta-sts." + s.MailDomain, "www." + s.MailDomain}
	if s.ECHPublicName != "" {
		names = append(names, s.ECHPublicName)
	}
	storage := s.Certs.Storage
	if storage == "" {
		storage = filepath.Join(s.StateDir, "acme")
	}
	cfg := acme.Config{
		Domain: s.MailDomain, Names: names,
		CA: s.Certs.CA, CARootFile: s.Certs.CARoot, Email: s.Certs.Email,
		FallbackCA: s.Certs.FallbackCA, StorageDir: storage, Challenges: s.Certs.Challenges,
		AcmetoolDir: s.Certs.AcmetoolDir,
		ExportCert:  strings.ReplaceAll(s.Certs.ExportCert, MailDomainPlaceholder, s.MailDomain),
		ExportKey:   strings.ReplaceAll(s.Certs.ExportKey, MailDomainPlaceholder, s.MailDomain),
		Reload:      s.Certs.Reload,
		NewKey:      s.Certs.NewKey,
		Retry:       s.Certs.Retry, ExportRetry: s.Certs.Retry, RenewCheck: s.Certs.RenewCheck,
	}
	if s.Certs.FallbackEABKeyID != "" || s.Certs.FallbackEABHMAC != "" {
		cfg.FallbackEAB = &acme.EAB{KeyID: s.Certs.FallbackEABKeyID, MACKey: s.Certs.FallbackEABHMAC}
	}
	return cfg
}
