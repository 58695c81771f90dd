package web

import (
	"sync"
	"time"
)

// maxRateLimitEntries bounds the limiter's memory; nginx's 10 MB zone holds
// about 160,000 addresses.
const maxRateLimitEntries = 100000

// rateLimiter is nginx's limit_req with burst and nodelay, per client
// address: a bucket of burst+1 requests that refills at rate per second;
// a request finding it empty is refused.
type rateLimiter struct {
	rate, capacity float64
	mu             sync.Mutex
	buckets        map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(ratePerSecond, burst int) *rateLimiter {
	return &rateLimiter{rate: float64(ratePerSecond), capacity: float64(burst + 1), buckets: make(map[string]*bucket)}
}

func (l *rateLimiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxRateLimitEntries {
			l.dropFull(now)
		}
		b = &bucket{tokens: l.capacity, last: now}
		l.buckets[key] = b
	}
	if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
		b.tokens = min(l.capacity, b.tokens+elapsed*l.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// dropFull forgets the addresses whose buckets have refilled: they are in
// the state a new entry starts in. If none has, the map is cleared rather
// than allowed to grow.
func (l *rateLimiter) dropFull(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.capacity {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) >= maxRateLimitEntries {
		clear(l.buckets)
	}
}
