package mail

import (
	"io"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
)

// Replies of the submission server, with the codes Postfix gives.
var (
	// RFC 4954 §6: 530 5.7.0 before AUTH.
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	// RFC 6409 §6.1: the submission server may refuse a sender the user
	// does not own (Postfix reject_sender_login_mismatch).
	errSenderMismatch = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender address rejected: not owned by user"}
	// RFC 3463 §3.2: X.1.1 bad destination mailbox address.
	errUnknownRecipient = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "Recipient address rejected: User unknown"}
	errDeliveryFailed   = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Local delivery failed, try again later"}
)

func (d *LocalDelivery) newSMTPServer() (*smtp.Server, error) {
	log := d.log.Named("smtp")
	errorLog, err := zap.NewStdLogAt(log, zap.WarnLevel)
	if err != nil {
		return nil, err
	}
	server := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		s := &submission{
			delivery: d,
			log:      log.With(zap.Uint64("conn", d.connID.Add(1)), zap.Stringer("client", c.Conn().RemoteAddr())),
		}
		s.log.Debug("session", zap.String("helo", c.Hostname()))
		return s, nil
	}))
	server.Domain = d.domain
	server.MaxMessageBytes = maxMessageBytes
	server.MaxRecipients = maxRecipients
	// Plaintext AUTH is fine: the edge terminated TLS and this port is on
	// loopback (chatmail's proxied Postfix port needs smtpd_tls_auth_only=no
	// for the same reason).
	server.AllowInsecureAuth = true
	server.ReadTimeout = smtpReadTimeout
	server.WriteTimeout = smtpWriteTimeout
	server.ErrorLog = errorLog
	return server, nil
}

// submission is one SMTP session with message submission semantics
// (RFC 6409): AUTH first, then mail from the authenticated address to local
// accounts, delivered at DATA into each recipient's INBOX.
type submission struct {
	delivery *LocalDelivery
	log      *zap.Logger
	user     string // the authenticated address
	from     string
	rcpts    []*account
	rcptAddr []string
}

var _ smtp.AuthSession = (*submission)(nil)

func (s *submission) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *submission) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(identity, username, password string) error {
		// RFC 4616 §2: an authorization identity other than the user's
		// own would mean acting for someone else.
		if identity != "" && identity != username || !s.delivery.authenticate(username, password) {
			s.log.Info("authentication failed", zap.String("user", username))
			return smtp.ErrAuthFailed
		}
		s.user = strings.ToLower(username)
		return nil
	}), nil
}

func (s *submission) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return errAuthRequired
	}
	if !strings.EqualFold(from, s.user) {
		return errSenderMismatch
	}
	s.from = from
	return nil
}

func (s *submission) Rcpt(to string, _ *smtp.RcptOptions) error {
	if s.user == "" {
		return errAuthRequired
	}
	acct := s.delivery.lookupAccount(to)
	if acct == nil {
		return errUnknownRecipient
	}
	for _, known := range s.rcpts {
		if known == acct {
			return nil // deliver once per mailbox
		}
	}
	s.rcpts = append(s.rcpts, acct)
	s.rcptAddr = append(s.rcptAddr, to)
	return nil
}

// Data appends the message unchanged to every recipient's INBOX and wakes
// the recipient's IDLE clients (RFC 2177).
func (s *submission) Data(r io.Reader) error {
	if s.user == "" {
		return errAuthRequired
	}
	// go-smtp stops the reader at MaxMessageBytes with 552 5.3.4.
	msg, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	received := time.Now()
	for i, acct := range s.rcpts {
		if err := s.delivery.appendToInbox(acct, msg, received); err != nil {
			s.log.Error("delivery failed", zap.String("from", s.from), zap.String("rcpt", s.rcptAddr[i]), zap.Error(err))
			return errDeliveryFailed
		}
	}
	s.log.Info("delivered", zap.String("from", s.from), zap.Strings("rcpts", s.rcptAddr), zap.Int("size", len(msg)))
	return nil
}

func (s *submission) Reset() {
	s.from, s.rcpts, s.rcptAddr = "", nil, nil
}

func (s *submission) Logout() error { return nil }
