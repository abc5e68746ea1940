package detectors

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// tryKey is a login attempt from address a with key k, refused with 401.
func tryKey(a, k string, ts time.Time, opts ...func(*ingest.Event)) ingest.Event {
	base := []func(*ingest.Event){ip(a), client(k), route("POST", "/v1/sessions"), status(401), reqID("r-" + k)}
	return req(ts, append(base, opts...)...)
}

// spray returns n refused attempts from a, each with another key, one every step.
func spray(a string, n int, start time.Time, step time.Duration) []ingest.Event {
	return repeat(n, start, step, func(i int, ts time.Time) ingest.Event { return tryKey(a, fmt.Sprintf("guess-%03d", i), ts) })
}

func TestAuthFailureSpray(t *testing.T) {
	const attacker = "203.0.113.66"
	runEdges(t, AuthFailureSpray, []edgeCase{
		{name: "below min_credentials", events: spray(attacker, 9, t0, time.Second)},
		{name: "at min_credentials", events: spray(attacker, 10, t0, time.Second), incidents: 1, key: attacker,
			check: func(t *testing.T, a Alert) {
				if a.Evidence.DistinctCredentials != 10 || a.Evidence.FailureCount != 10 || a.Evidence.TotalCount != 10 {
					t.Errorf("evidence %+v", a.Evidence)
				}
			}},
		{name: "tokens count as credentials", events: repeat(10, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, ip(attacker), token(fmt.Sprintf("%032x", i)), status(401))
		}), incidents: 1, key: attacker},
		{name: "one client retrying its expired token", events: repeat(300, t0, 2*time.Second, func(i int, ts time.Time) ingest.Event {
			return tryKey("198.51.100.20", "k-app", ts, token("expired-token"))
		})},
		{name: "a NAT address shared by many healthy keys", events: inOrder(
			spray("198.51.100.1", 15, t0, 20*time.Second),
			repeat(600, t0, time.Second, func(i int, ts time.Time) ingest.Event {
				return req(ts, ip("198.51.100.1"), client(fmt.Sprintf("user-%03d", i%300)))
			}))},
		{name: "half of its requests", events: inOrder(spray(attacker, 12, t0, time.Second),
			repeat(12, t0, time.Second, func(i int, ts time.Time) ingest.Event { return req(ts, ip(attacker), client("k")) })),
			incidents: 1, key: attacker},
		{name: "status 0 is no failure", events: repeat(20, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return tryKey(attacker, fmt.Sprintf("k%d", i), ts, status(0))
		})},
		{name: "403 counts when configured", cfg: func(c *Config) { c.AuthFailureSpray.Statuses = []int{401, 403} },
			events: repeat(10, t0, time.Second, func(i int, ts time.Time) ingest.Event {
				return tryKey(attacker, fmt.Sprintf("k%d", i), ts, status(401+2*(i%2)))
			}), incidents: 1, key: attacker},
		{name: "spread over the whole window", events: concat(spray(attacker, 9, t0, time.Minute),
			[]ingest.Event{tryKey(attacker, "last", at(9*time.Minute+59*time.Second))}), incidents: 1, key: attacker},
		{name: "one bucket past the window", events: concat(spray(attacker, 9, t0, time.Second),
			[]ingest.Event{tryKey(attacker, "last", at(10*time.Minute))})},
		{name: "reversed within allowed lateness", events: reversed(spray(attacker, 10, t0, 2*time.Second)), incidents: 1, key: attacker},
		{name: "half beyond allowed lateness", events: concat(
			spray(attacker, 5, at(5*time.Minute), time.Second),
			[]ingest.Event{req(at(6*time.Minute), ip("192.0.2.77"))},
			repeat(5, at(4*time.Minute), time.Second, func(i int, ts time.Time) ingest.Event {
				return tryKey(attacker, fmt.Sprintf("late-%d", i), ts)
			}))},
		// IPv6: a /64 is one client, however many of its addresses the requests use.
		{name: "IPv6 addresses of one /64", events: repeat(10, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return tryKey(fmt.Sprintf("2001:db8:1:2::%x", 0x100+i*7), fmt.Sprintf("guess-%03d", i), ts)
		}), incidents: 1, key: "2001:db8:1:2::/64", check: func(t *testing.T, a Alert) {
			if len(a.Evidence.ClientIPs) == 0 || !strings.HasPrefix(a.Evidence.ClientIPs[0], "2001:db8:1:2::") || strings.Contains(a.Evidence.ClientIPs[0], "/") {
				t.Errorf("evidence client IPs %v, want addresses of the /64", a.Evidence.ClientIPs)
			}
		}},
		{name: "IPv6 /64s apart", events: repeat(10, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return tryKey(fmt.Sprintf("2001:db8:1:%x::1", i), fmt.Sprintf("guess-%03d", i), ts)
		})},
		{name: "override of an IPv6 address holds for its /64", cfg: func(c *Config) {
			n := 50
			c.AuthFailureSpray.Overrides = []AuthFailureSprayOverride{{Override: Override{Key: "2001:db8:1:2::1"}, MinCredentials: &n}}
		}, events: repeat(40, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return tryKey(fmt.Sprintf("2001:db8:1:2::%x", 0x100+i), fmt.Sprintf("guess-%03d", i), ts)
		})},
		{name: "no client IP: not keyed", events: repeat(20, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return tryKey("", fmt.Sprintf("k%d", i), ts)
		})},
		{name: "override raises min_credentials", cfg: func(c *Config) {
			n := 50
			c.AuthFailureSpray.Overrides = []AuthFailureSprayOverride{{Override: Override{Key: attacker}, MinCredentials: &n}}
		}, events: spray(attacker, 40, t0, time.Second)},
		{name: "allowlisted test rig", cfg: func(c *Config) {
			c.AuthFailureSpray.Allowlist = []ClientAllow{{Key: attacker}}
		}, events: spray(attacker, 40, t0, time.Second)},
		{name: "route prefix ignored", cfg: func(c *Config) {
			f := false
			c.AuthFailureSpray.Overrides = []AuthFailureSprayOverride{{Override: Override{RoutePrefix: "/v1/sessions", Enabled: &f}}}
		}, events: spray(attacker, 40, t0, time.Second)},
		{name: "quiet for longer than cooldown: two incidents", events: concat(
			spray(attacker, 10, t0, time.Second), spray(attacker, 10, at(time.Hour), time.Second)), incidents: 2, key: attacker},
	})
}

func TestAuthFailureSprayEvidence(t *testing.T) {
	const attacker = "203.0.113.66"
	events := concat(
		[]ingest.Event{req(t0, ip(attacker), client("k-real"))},
		repeat(24, at(5*time.Second), 7*time.Second, func(i int, ts time.Time) ingest.Event {
			return tryKey(attacker, fmt.Sprintf("guess-%02d", i), ts, func(e *ingest.Event) { e.UserAgent = "hydra" })
		}))
	res := run(t, only(AuthFailureSpray), nil, 0, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents:\n%s", len(groups), describe(res.alerts))
	}
	a := final(groups[0])
	ev := a.Evidence
	if ev.DistinctCredentials != 24 || ev.FailureCount != 24 || ev.TotalCount != 25 || ev.Ratio != 0.96 ||
		ev.MinCredentials != 10 || !slices.Equal(ev.StatusCounts, []StatusCount{{401, 24}}) || ev.Window != "10m0s" {
		t.Errorf("evidence %+v", ev)
	}
	if len(ev.ClientKeys) != 10 || !slices.IsSorted(ev.ClientKeys) || slices.Contains(ev.ClientKeys, "k-real") ||
		!slices.Equal(ev.SamplePaths, []string{"/v1/sessions"}) || !slices.Equal(ev.UserAgents, []string{"hydra"}) {
		t.Errorf("samples %v %v %v", ev.ClientKeys, ev.SamplePaths, ev.UserAgents)
	}
	if !a.FirstSeen.Equal(at(5*time.Second)) || !a.LastSeen.Equal(at(166*time.Second)) {
		t.Errorf("first_seen %s last_seen %s", a.FirstSeen, a.LastSeen)
	}
	want := "Client IP 203.0.113.66 failed authentication with 24 distinct credentials (24 of its 25 requests answered 401) within 10m0s."
	if a.Summary != want {
		t.Errorf("summary %q, want %q", a.Summary, want)
	}
}
