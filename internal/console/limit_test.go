package console

import (
	"net/http"
	"net/netip"
	"net/url"
	"testing"
	"time"
)

func addr(s string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(s), 32) }

// TestFailLimits: each address has its own allowance; the table keeps at most its cap,
// making room by evicting the idlest address, sharing the overflow allowance among new
// addresses only while every remembered one is hot, and forgetting an address once its
// allowance is full again. The clock is the test's.
func TestFailLimits(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	refill := time.Duration(loginFailBurst/loginFailRate) * time.Second
	// hammer spends every attempt of a at t.
	hammer := func(f *failLimits, a netip.Prefix, t time.Time) {
		for range loginFailBurst {
			f.fail(a, t)
		}
	}
	for _, c := range []struct {
		name string
		run  func(t *testing.T, f *failLimits)
	}{
		{"one address hammering does not limit another", func(t *testing.T, f *failLimits) {
			hammer(f, addr("192.0.2.1"), t0)
			if got := f.wait(addr("192.0.2.1"), t0); got != time.Second {
				t.Errorf("the hammering address waits %v, want 1s", got)
			}
			if got := f.wait(addr("192.0.2.2"), t0); got != 0 {
				t.Errorf("another address waits %v, want 0", got)
			}
		}},
		{"full table: the idlest address makes room", func(t *testing.T, f *failLimits) {
			hammer(f, addr("192.0.2.1"), t0)
			f.fail(addr("192.0.2.2"), t0) // four attempts left: the idlest
			hammer(f, addr("192.0.2.3"), t0)
			f.fail(addr("192.0.2.4"), t0)
			if got := f.tracked(); got != 3 {
				t.Errorf("%d addresses tracked, want the cap, 3", got)
			}
			if got := f.wait(addr("192.0.2.1"), t0); got == 0 {
				t.Error("a hot address was evicted: its guesser may go on")
			}
			for range loginFailBurst - 1 {
				f.fail(addr("192.0.2.4"), t0)
			}
			if got := f.wait(addr("192.0.2.4"), t0); got == 0 {
				t.Error("the address that took the idlest's place is not limited")
			}
		}},
		{"full table, every address hot: new ones share the overflow", func(t *testing.T, f *failLimits) {
			for _, a := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
				hammer(f, addr(a), t0)
			}
			if got := f.wait(addr("198.51.100.1"), t0); got != 0 {
				t.Errorf("a new address waits %v before the overflow is spent, want 0", got)
			}
			hammer(f, addr("198.51.100.1"), t0)
			if got := f.tracked(); got != 3 {
				t.Errorf("%d addresses tracked, want the cap, 3", got)
			}
			if got := f.wait(addr("198.51.100.2"), t0); got == 0 {
				t.Error("another new address is not limited once the overflow is spent")
			}
			if got := f.wait(addr("192.0.2.1"), t0.Add(time.Second)); got != 0 {
				t.Errorf("a remembered address waits %v after a second, want 0: the overflow is not its", got)
			}
		}},
		{"forgotten once the allowance refilled", func(t *testing.T, f *failLimits) {
			hammer(f, addr("192.0.2.1"), t0)
			f.fail(addr("192.0.2.2"), t0)
			later := t0.Add(refill)
			f.fail(addr("198.51.100.1"), later)
			if got := f.tracked(); got != 1 {
				t.Errorf("%d addresses tracked after the refill and one failure, want 1", got)
			}
		}},
		{"the overflow ends once an address cools", func(t *testing.T, f *failLimits) {
			for _, a := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
				hammer(f, addr(a), t0)
			}
			hammer(f, addr("198.51.100.1"), t0.Add(time.Second/2)) // the overflow, spent
			later := t0.Add(time.Second)                           // the first addresses cool
			if got := f.wait(addr("198.51.100.2"), later); got != 0 {
				t.Errorf("a new address waits %v once the table cooled, want 0", got)
			}
			f.fail(addr("198.51.100.2"), later)
			if got := f.wait(addr("198.51.100.2"), later); got != 0 {
				t.Errorf("after one failure a new address waits %v, want 0: it has its own allowance", got)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, newFailLimits(loginFailRate, loginFailBurst, 3)) })
	}
}

// TestFailuresArePerClient: a client that spends its failed authentications is refused
// (429), while the right credentials from another client pass, whether they came
// straight or through the trusted proxy; what a client writes in X-Forwarded-For is
// believed only as the trusted proxy passed it on.
func TestFailuresArePerClient(t *testing.T) {
	wrong, right := "wrong-token-000000000", testToken
	fwd := func(remote, xff string) req {
		return req{method: "GET", path: "/incidents", remote: remote, header: map[string]string{"X-Forwarded-For": xff}}
	}
	for _, c := range []struct {
		name    string
		hammer  func(i int) req // the i-th failing request, without its token
		limited req             // the hammering client, with the right token: 429
		other   req             // another client with the right token: 200
	}{
		{"straight", func(int) req { return req{method: "GET", path: "/incidents", remote: "192.0.2.10:4000"} },
			req{method: "GET", path: "/incidents", remote: "192.0.2.10:4001"},
			req{method: "GET", path: "/incidents", remote: "192.0.2.11:4000"}},
		{"through the trusted proxy", func(int) req { return fwd("10.1.2.3:5555", "198.51.100.7") },
			fwd("10.1.2.3:5556", "198.51.100.7"), fwd("10.1.2.3:5555", "198.51.100.8")},
		{"through two trusted proxies, the client's own entries not believed",
			func(i int) req {
				return fwd("10.1.2.3:5555", "203.0.113."+string(rune('1'+i))+", 198.51.100.7, 10.9.9.9")
			},
			fwd("10.1.2.3:5555", "203.0.113.99, 198.51.100.7, 10.9.9.9"), fwd("10.1.2.3:5555", "198.51.100.7, 198.51.100.8, 10.9.9.9")},
		{"X-Forwarded-For from elsewhere is not believed",
			func(i int) req { return fwd("192.0.2.20:4000", "203.0.113."+string(rune('1'+i))) },
			fwd("192.0.2.20:4000", "203.0.113.99"), fwd("192.0.2.21:4000", "203.0.113.1")},
		{"IPv6 by its /64", func(i int) req {
			return req{method: "GET", path: "/incidents", remote: "[2001:db8::" + string(rune('1'+i)) + "]:4000"}
		},
			req{method: "GET", path: "/incidents", remote: "[2001:db8::99]:4000"},
			req{method: "GET", path: "/incidents", remote: "[2001:db8:0:1::1]:4000"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				c.TrustedProxy = &TrustedProxy{Header: "X-Forwarded-User", From: []string{"10.0.0.0/8"}}
			})
			now := e.now
			e.s.auth.now = func() time.Time { return now }
			for i := range loginFailBurst {
				r := c.hammer(i)
				r.bearer = wrong
				if code := e.do(r).Code; code != http.StatusUnauthorized {
					t.Fatalf("failure %d: %d, want 401", i+1, code)
				}
			}
			c.limited.bearer, c.other.bearer = right, right
			if w := e.do(c.limited); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
				t.Errorf("the hammering client, right token: %d (Retry-After %q), want 429, Retry-After 1", w.Code, w.Header().Get("Retry-After"))
			}
			if code := e.do(c.other).Code; code != http.StatusOK {
				t.Errorf("another client's right token: %d, want 200", code)
			}
			login := c.other
			login.method, login.path, login.bearer = "POST", "/login", ""
			login.form = url.Values{"secret": {right}}
			if code := e.do(login).Code; code != http.StatusSeeOther {
				t.Errorf("another client's login: %d, want 303", code)
			}
		})
	}
}
