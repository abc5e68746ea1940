package console

import (
	"math"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Failed authentications are limited per client address, so that one address guessing
// tokens or passwords locks out itself, not every analyst and API client.
const (
	loginFailRate  = 1 // failed authentications a second, per client address
	loginFailBurst = 5
	// maxFailClients bounds the addresses whose failures are remembered: the addresses
	// are the clients' choice. A limiter is a few dozen bytes.
	maxFailClients = 10_000
	// maxForwardedHops bounds how far X-Forwarded-For is walked from a trusted proxy.
	maxForwardedHops = 16
)

// failLimits are the allowances of failed authentications, one per client address
// (an IPv6 client by its /64). An address enters the table with its first failure and
// is forgotten once its allowance is full again. The table has a cap: a new address
// that fails when it is full takes the place of the idlest address (the one with the
// most allowance left); when every address in it is hot (its allowance spent, so
// forgetting it would free a guesser), new addresses share one overflow allowance
// instead, until one of them cools. Only then can a failure elsewhere refuse an
// address: under a guess spread over more addresses than the cap.
type failLimits struct {
	every rate.Limit
	burst int
	max   int

	mu       sync.Mutex
	clients  map[netip.Prefix]*rate.Limiter
	overflow *rate.Limiter
	// saturated is when the first hot address cools: until then new addresses share
	// the overflow allowance.
	saturated time.Time
	nextSweep time.Time
}

func newFailLimits(every rate.Limit, burst, max int) *failLimits {
	return &failLimits{every: every, burst: burst, max: max,
		clients: map[netip.Prefix]*rate.Limiter{}, overflow: rate.NewLimiter(every, burst)}
}

// wait returns how long client must wait before an attempt of it is read; 0 when it
// may try now.
func (f *failLimits) wait(client netip.Prefix, now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	lim, ok := f.clients[client]
	switch {
	case ok:
	case now.Before(f.saturated):
		lim = f.overflow
	default:
		return 0 // a new address, or one forgotten with its allowance full
	}
	t := lim.TokensAt(now)
	if t >= 1 {
		return 0
	}
	return time.Duration(math.Ceil((1 - t) / float64(f.every) * float64(time.Second)))
}

// fail spends one attempt of client's allowance.
func (f *failLimits) fail(client netip.Prefix, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !now.Before(f.nextSweep) {
		f.sweep(now)
	}
	if lim, ok := f.clients[client]; ok {
		lim.AllowN(now, 1)
		return
	}
	if len(f.clients) >= f.max && !f.evict(now) {
		f.overflow.AllowN(now, 1)
		return
	}
	lim := rate.NewLimiter(f.every, f.burst)
	lim.AllowN(now, 1)
	f.clients[client] = lim
}

// sweep forgets the addresses whose allowance is full again; f.mu is held. It runs
// once per refill time: an address is never kept much longer than that.
func (f *failLimits) sweep(now time.Time) {
	for c, lim := range f.clients {
		if lim.TokensAt(now) >= float64(f.burst) {
			delete(f.clients, c)
		}
	}
	f.nextSweep = now.Add(time.Duration(float64(f.burst) / float64(f.every) * float64(time.Second)))
}

// evict makes room in the full table for one address: the idlest address that is not
// hot goes. When every address is hot it returns false and notes when the first one
// cools. f.mu is held.
func (f *failLimits) evict(now time.Time) bool {
	f.sweep(now)
	if len(f.clients) < f.max {
		return true
	}
	var idlest netip.Prefix
	most, cools := -1.0, time.Duration(math.MaxInt64)
	for c, lim := range f.clients {
		t := lim.TokensAt(now)
		switch {
		case t >= 1 && t > most:
			idlest, most = c, t
		case t < 1:
			cools = min(cools, time.Duration((1-t)/float64(f.every)*float64(time.Second)))
		}
	}
	if most >= 1 {
		delete(f.clients, idlest)
		return true
	}
	f.saturated = now.Add(cools)
	return false
}

// tracked returns how many addresses are remembered.
func (f *failLimits) tracked() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.clients)
}

// client returns the address failed authentications of r count against: the remote
// address, or, for a request from a trusted proxy, the nearest address its
// X-Forwarded-For names that is not a trusted proxy (the proxy appends the address
// that reached it; what the client wrote further left is not believed). Without the
// header every client behind the proxy counts as the proxy. An IPv6 client counts by
// its /64: one host holds a whole /64 and could spread its guesses over it.
func (a *auth) client(r *http.Request) netip.Prefix {
	ip, ok := remoteIP(r)
	if !ok {
		return netip.Prefix{} // httptest or a unix socket: one shared address
	}
	if a.trusted(ip) {
		fwd := strings.Join(r.Header.Values("X-Forwarded-For"), ",")
		for hop := 0; hop < maxForwardedHops && fwd != ""; hop++ {
			i := strings.LastIndexByte(fwd, ',')
			next, err := netip.ParseAddr(strings.TrimSpace(fwd[i+1:]))
			if err != nil {
				break
			}
			ip, fwd = next.Unmap(), fwd[:max(i, 0)]
			if !a.trusted(ip) {
				break
			}
		}
	}
	bits := ip.BitLen()
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits) // bits is within the address's length
	return p
}
