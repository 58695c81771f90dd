package mail

import (
	"bytes"
	"errors"
	"time"

	"github.com/emersion/go-imap/v2"
	"go.uber.org/zap"
)

// ErrNoLocalRecipient is DeliverInbound's answer when no recipient has an
// account here.
var ErrNoLocalRecipient = errors.New("no recipient has an account here")

// DeliverInbound delivers mail that came from another relay, as chatmail's
// filtermail does with what arrives over HTTPS at /mxdeliv (the demo's
// stand-in for it): msg goes unchanged into the INBOX of every recipient
// with an account; the others are skipped. It returns the recipients it
// delivered to.
func (d *LocalDelivery) DeliverInbound(from string, rcpts []string, msg []byte) ([]string, error) {
	var delivered []string
	seen := map[*account]bool{}
	received := time.Now()
	for _, rcpt := range rcpts {
		acct := d.lookupAccount(rcpt)
		if acct == nil || seen[acct] {
			continue
		}
		seen[acct] = true
		if err := d.appendToInbox(acct, msg, received); err != nil {
			d.log.Error("inbound delivery failed", zap.String("from", from), zap.String("rcpt", rcpt), zap.Error(err))
			return delivered, errDeliveryFailed
		}
		delivered = append(delivered, rcpt)
	}
	if len(delivered) == 0 {
		return nil, ErrNoLocalRecipient
	}
	d.log.Info("delivered inbound", zap.String("from", from), zap.Strings("rcpts", delivered), zap.Int("size", len(msg)))
	return delivered, nil
}

// appendToInbox puts msg into acct's INBOX and wakes the account's IDLE
// sessions (RFC 2177).
func (d *LocalDelivery) appendToInbox(acct *account, msg []byte, received time.Time) error {
	if _, err := acct.mailbox.Append("INBOX", bytes.NewReader(msg), &imap.AppendOptions{Time: received}); err != nil {
		return err
	}
	d.signalDelivery(acct)
	return nil
}
