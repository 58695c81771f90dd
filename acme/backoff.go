package acme

import "time"

// Backoff is the wait before the next try after consecutive failures:
// Initial after the first, doubling up to Max. A CA that refuses us or a
// rate limit (RFC 8555 §6.7, "rateLimited") is thus asked less and less
// often, but never given up on.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// The zero Backoff retries after 1 minute, then 2, 4, ... and at least
// hourly.
const (
	defaultRetryInitial = time.Minute
	defaultRetryMax     = time.Hour
)

// Delay is the wait after the given number of consecutive failures (>= 1).
func (b Backoff) Delay(failures int) time.Duration {
	if b.Initial <= 0 {
		b = Backoff{Initial: defaultRetryInitial, Max: defaultRetryMax}
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	d := b.Initial
	for i := 1; i < failures && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}
