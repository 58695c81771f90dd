package mail

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"strings"

	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"go.uber.org/zap"
)

// The alphabets and lengths of chatmail's /new (chatmaild newemail.py):
// username_max_length (9) characters of [a-z0-9], and password_min_length+3
// (12) of Python's string.ascii_letters + digits + punctuation.
const (
	userAlphabet     = "abcdefghijklmnopqrstuvwxyz0123456789"
	passwordAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" +
		"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
	userLength     = 9
	passwordLength = 12
	// createAttempts bounds the retries on an address already taken, which
	// with 36^9 names does not happen in practice.
	createAttempts = 8
)

// account is a mailbox owner of the local delivery.
type account struct {
	password  string
	mailbox   *imapmemserver.User
	delivered chan struct{} // closed and replaced at each delivery
}

// CreateAccount makes a new address as chatmail's /new does, and creates it
// at once in both the IMAP store and the SMTP auth table (chatmail creates
// it at the first login instead).
func (d *LocalDelivery) CreateAccount() (email, password string, err error) {
	for range createAttempts {
		email := randomString(userAlphabet, userLength) + "@" + d.domain
		password := randomString(passwordAlphabet, passwordLength)
		if d.addAccount(email, password) {
			d.log.Info("account created", zap.String("email", email))
			return email, password, nil
		}
	}
	return "", "", errors.New("create account: every random address was taken")
}

// addAccount adds email with an INBOX, unless it exists.
func (d *LocalDelivery) addAccount(email, password string) bool {
	d.accountsMu.Lock()
	defer d.accountsMu.Unlock()
	if _, taken := d.accounts[email]; taken {
		return false
	}
	mailbox := imapmemserver.NewUser(email, password)
	if err := mailbox.Create("INBOX", nil); err != nil {
		panic(err) // a new user has no mailbox that could clash
	}
	d.store.AddUser(mailbox)
	d.accounts[email] = &account{password: password, mailbox: mailbox, delivered: make(chan struct{})}
	return true
}

// lookupAccount finds the account of an address, ignoring case as Postfix
// does for its lookup tables.
func (d *LocalDelivery) lookupAccount(email string) *account {
	d.accountsMu.Lock()
	defer d.accountsMu.Unlock()
	return d.accounts[strings.ToLower(email)]
}

// deliverySignal returns a channel closed at the next delivery to email; nil
// (never ready) for an unknown address.
func (d *LocalDelivery) deliverySignal(email string) <-chan struct{} {
	d.accountsMu.Lock()
	defer d.accountsMu.Unlock()
	if acct := d.accounts[strings.ToLower(email)]; acct != nil {
		return acct.delivered
	}
	return nil
}

// signalDelivery wakes the IDLE sessions of acct.
func (d *LocalDelivery) signalDelivery(acct *account) {
	d.accountsMu.Lock()
	defer d.accountsMu.Unlock()
	close(acct.delivered)
	acct.delivered = make(chan struct{})
}

// authenticate checks a password in constant time.
func (d *LocalDelivery) authenticate(email, password string) bool {
	acct := d.lookupAccount(email)
	return acct != nil && subtle.ConstantTimeCompare([]byte(password), []byte(acct.password)) == 1
}

// randomString draws n characters uniformly from alphabet with crypto/rand,
// rejecting the bytes that would bias the draw. (rand.Read does not fail:
// since Go 1.24 it crashes the program rather than return weak randomness.)
func randomString(alphabet string, n int) string {
	limit := 256 - 256%len(alphabet)
	out := make([]byte, 0, n)
	var buf [32]byte
	for len(out) < n {
		rand.Read(buf[:])
		for _, b := range buf {
			if int(b) < limit && len(out) < n {
				out = append(out, alphabet[int(b)%len(alphabet)])
			}
		}
	}
	return string(out)
}
