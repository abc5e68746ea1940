package detectors

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// admin is a successful admin request of key k.
func admin(k string, ts time.Time, opts ...func(*ingest.Event)) ingest.Event {
	base := []func(*ingest.Event){client(k), ip("198.51.100.30"), route("DELETE", "/v1/admin/users/{id}"),
		path("/v1/admin/users/77"), reqID(fmt.Sprintf("%s-%d", k, ts.UnixMilli()))}
	return req(ts, append(base, opts...)...)
}

// admins returns n admin requests of key k, one every step.
func admins(k string, n int, start time.Time, step time.Duration, opts ...func(*ingest.Event)) []ingest.Event {
	return repeat(n, start, step, func(i int, ts time.Time) ingest.Event { return admin(k, ts, opts...) })
}

// privileged is a snapshot of a month of traffic in which key k last did privileged
// work ago before t0.
func privileged(k string, ago time.Duration) *Baselines {
	b := established()
	b.Privileged = []PrivilegeBaseline{{Key: k, FirstSeen: t0.Add(-60 * 24 * time.Hour), LastSeen: t0.Add(-ago), Events: 40}}
	return b
}

func TestPrivilegeAnomaly(t *testing.T) {
	runEdges(t, PrivilegeAnomaly, []edgeCase{
		{name: "below min_count", snap: established(), events: admins("k", 2, t0, time.Minute)},
		{name: "at min_count", snap: established(), events: admins("k", 3, t0, time.Minute), incidents: 1, key: "k",
			check: func(t *testing.T, a Alert) {
				if a.Evidence.PrivilegedCount != 3 || a.Evidence.LastPrivileged != "" || a.Evidence.History != "720h0m0s" ||
					a.Evidence.UnloggedStatusCount != 0 || !strings.Contains(a.Summary, "made 3 successful privileged requests within") {
					t.Errorf("evidence %+v", a.Evidence)
				}
			}},
		{name: "refused requests do not count", snap: established(), events: admins("k", 10, t0, time.Minute, status(403))},
		{name: "status 0 went through", snap: established(), events: admins("k", 3, t0, time.Minute, status(0)), incidents: 1, key: "k",
			check: func(t *testing.T, a Alert) {
				// The log does not say the origin took them: the alert says so.
				if a.Evidence.UnloggedStatusCount != 3 || !strings.Contains(a.Summary, "3 privileged requests that went through to the origin (no response status logged)") {
					t.Errorf("unlogged_status_count %d, summary %q", a.Evidence.UnloggedStatusCount, a.Summary)
				}
			}},
		{name: "some with status 0", snap: established(), events: concat(admins("k", 2, t0, time.Minute), admins("k", 1, at(3*time.Minute), time.Minute, status(0))),
			incidents: 1, key: "k", check: func(t *testing.T, a Alert) {
				if a.Evidence.UnloggedStatusCount != 1 || !strings.Contains(a.Summary, "3 privileged requests that succeeded or went through to the origin (1 with no response status logged)") {
					t.Errorf("unlogged_status_count %d, summary %q", a.Evidence.UnloggedStatusCount, a.Summary)
				}
			}},
		{name: "a redirect went through", snap: established(), events: admins("k", 3, t0, time.Minute, status(302)), incidents: 1, key: "k"},
		{name: "reading roles is no change", snap: established(), events: repeat(10, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("GET", "/v1/users/{id}/roles"))
		})},
		{name: "changing roles is", snap: established(), events: repeat(3, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("PUT", "/v1/users/{id}/Roles"))
		}), incidents: 1, key: "k"},
		{name: "changing a role, singular", snap: established(), events: repeat(3, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("PUT", "/api/v2/users/{id}/role"))
		}), incidents: 1, key: "k"},
		{name: "internal routes", snap: established(), events: repeat(3, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("GET", "/internal/metrics"))
		}), incidents: 1, key: "k"},
		{name: "a gateway that logs route names (Kong): the path decides", snap: established(), events: repeat(3, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("POST", "post-v1-admin-users-id-roles"), path(fmt.Sprintf("/v1/admin/users/%d/roles", i)))
		}), incidents: 1, key: "k"},
		{name: "a route name whose path is not privileged", snap: established(), events: repeat(3, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("POST", "post-v1-admins-guide"), path("/v1/admins-guide"))
		})},
		{name: "a word that only contains admin", snap: established(), events: repeat(10, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("GET", "/v1/administrators-guide"))
		})},
		{name: "no client key", snap: established(), events: admins("", 10, t0, time.Minute)},
		{name: "during the learning period", snap: &Baselines{TrafficSince: t0.Add(-23 * time.Hour)}, events: admins("k", 10, t0, time.Minute)},
		{name: "a key that does admin work", snap: privileged("k", 2*24*time.Hour), events: admins("k", 30, t0, time.Minute)},
		{name: "a key whose admin work is older than history", snap: privileged("k", 31*24*time.Hour), events: admins("k", 3, t0, time.Minute),
			incidents: 1, key: "k", check: func(t *testing.T, a Alert) {
				if a.Evidence.LastPrivileged != formatTime(t0.Add(-31*24*time.Hour)) {
					t.Errorf("last_privileged %q", a.Evidence.LastPrivileged)
				}
			}},
		{name: "yesterday's work in the stream is history", snap: established(), events: concat(
			admins("k", 5, t0.Add(-24*time.Hour), time.Minute), admins("k", 5, t0, time.Minute)),
			incidents: 1, key: "k", check: func(t *testing.T, a Alert) {
				if !a.FirstSeen.Equal(t0.Add(-24 * time.Hour)) {
					t.Errorf("the first day fires, not the second: first_seen %s", a.FirstSeen)
				}
			}},
		{name: "spread over the whole window", snap: established(), events: concat(admins("k", 2, t0, time.Minute),
			[]ingest.Event{admin("k", at(9*time.Minute+59*time.Second))}), incidents: 1, key: "k"},
		{name: "one bucket past the window", snap: established(), events: concat(admins("k", 2, t0, time.Second),
			[]ingest.Event{admin("k", at(10*time.Minute))})},
		{name: "reversed within allowed lateness", snap: established(), events: reversed(admins("k", 3, t0, 10*time.Second)), incidents: 1, key: "k"},
		{name: "beyond allowed lateness: history, not a window", snap: established(), events: concat(
			admins("k", 2, at(2*time.Minute), time.Second),
			[]ingest.Event{req(at(3*time.Minute), client("other"))},
			admins("k", 1, t0, time.Second))},
		{name: "override raises min_count", snap: established(), cfg: func(c *Config) {
			n := 10
			c.PrivilegeAnomaly.Overrides = []PrivilegeAnomalyOverride{{Override: Override{Key: "k"}, MinCount: &n}}
		}, events: admins("k", 9, t0, time.Second)},
		{name: "allowlisted admin console", snap: established(), cfg: func(c *Config) {
			c.PrivilegeAnomaly.Allowlist = []ClientAllow{{CIDR: "198.51.100.0/24"}}
		}, events: admins("k", 9, t0, time.Second)},
		{name: "own rules", snap: established(), cfg: func(c *Config) {
			c.PrivilegeAnomaly.Privileged = []PrivilegeRule{{RoutePrefix: "/v1/billing/refunds", Methods: []string{"post"}}}
		}, events: concat(admins("k", 5, t0, time.Second), repeat(3, at(time.Minute), time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("POST", "/v1/billing/refunds/{id}"))
		})), incidents: 1, key: "k"},
	})
}

func TestPrivilegeAnomalyIncidentGoesOn(t *testing.T) {
	// A key that turns admin keeps doing admin work for half an hour: one incident,
	// updated to the last request; its own work is not history that ends it.
	events := admins("k", 31, t0, time.Minute)
	res := run(t, only(PrivilegeAnomaly), established(), 0, concat(events, tail(6*time.Hour)))
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents:\n%s", len(groups), describe(res.alerts))
	}
	f := final(groups[0])
	if !f.FirstSeen.Equal(t0) || !f.LastSeen.Equal(at(30*time.Minute)) || f.Severity != SeverityHigh {
		t.Errorf("final version %s..%s %s:\n%s", f.FirstSeen, f.LastSeen, f.Severity, describe(groups[0]))
	}
	if !slices.Equal(f.Evidence.PrivilegedRoutes, []string{"DELETE /v1/admin/users/{id}"}) || len(f.Evidence.SampleRequestIDs) == 0 ||
		!slices.Equal(f.Evidence.ClientIPs, []string{"198.51.100.30"}) || !slices.Equal(f.Evidence.SamplePaths, []string{"/v1/admin/users/77"}) {
		t.Errorf("evidence %+v", f.Evidence)
	}
	// Once the incident is over, the work is history: the key's baseline says so.
	if err := res.engine.SyncBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, err := res.engine.store.LoadBaselines(t.Context(), AllBaselines)
	if err != nil {
		t.Fatal(err)
	}
	want := PrivilegeBaseline{Key: "k", FirstSeen: t0, LastSeen: at(30 * time.Minute), Events: 31}
	if len(b.Privileged) != 1 || b.Privileged[0] != want {
		t.Errorf("privileged baselines %+v, want %+v", b.Privileged, want)
	}
}
