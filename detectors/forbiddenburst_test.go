package detectors

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// forbidden returns n 403s for client key k, one every step from start.
func forbidden(k string, n int, start time.Time, step time.Duration) []ingest.Event {
	return repeat(n, start, step, func(i int, ts time.Time) ingest.Event {
		return req(ts, client(k), ip("198.51.100.7"), status(403), reqID(fmt.Sprintf("%s-f%d", k, i)),
			path(fmt.Sprintf("/admin/users/%d", i%7)))
	})
}

// ok returns n 200s for client key k.
func ok(k string, n int, start time.Time, step time.Duration) []ingest.Event {
	return repeat(n, start, step, func(i int, ts time.Time) ingest.Event {
		return req(ts, client(k), ip("198.51.100.7"), reqID(fmt.Sprintf("%s-o%d", k, i)))
	})
}

// tail pushes the watermark far past everything before it with one unrelated event.
func tail(d time.Duration) []ingest.Event {
	return []ingest.Event{req(at(d), client("bystander"), ip("192.0.2.1"))}
}

func TestForbiddenBurst(t *testing.T) {
	type want struct {
		incidents int
		key       string
		first     time.Duration // of the first incident
		forbidden int
		total     int
	}
	for _, tc := range []struct {
		name   string
		cfg    func(*Config)
		events []ingest.Event
		want   want
	}{
		{"below threshold", nil, forbidden("a", 19, t0, 500*time.Millisecond), want{}},
		{"at threshold", nil, forbidden("a", 20, t0, 500*time.Millisecond),
			want{1, "a", 0, 20, 20}},
		{"ratio just below", nil, concat(forbidden("a", 20, t0, time.Second), ok("a", 21, t0, 900*time.Millisecond)), want{}},
		{"ratio at min_ratio", nil, concat(forbidden("a", 20, t0, time.Second), ok("a", 20, t0, time.Second)),
			want{1, "a", 0, 20, 40}},
		{"spread over the whole window", nil, concat(forbidden("a", 19, t0, 3*time.Second), forbidden("a", 1, at(59900*time.Millisecond), 0)),
			want{1, "a", 0, 20, 20}},
		{"one bucket past the window", nil, concat(forbidden("a", 10, t0, 100*time.Millisecond), forbidden("a", 10, at(time.Minute), 100*time.Millisecond)),
			want{}},
		{"reversed within allowed lateness", nil, reversed(forbidden("a", 20, t0, time.Second)),
			want{1, "a", 0, 20, 20}},
		{"half arrives beyond allowed lateness", nil, concat(
			forbidden("a", 10, at(5*time.Second), 100*time.Millisecond),
			ok("b", 1, at(40*time.Second), 0), // watermark 10s: the next ten are late
			forbidden("a", 10, t0, 100*time.Millisecond)),
			want{}},
		{"keyed by IP without a client key", nil, repeat(20, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, ip("203.0.113.9"), status(403))
		}), want{1, "203.0.113.9", 0, 20, 20}},
		{"other statuses", func(c *Config) { c.ForbiddenBurst.Statuses = []int{401, 403} }, concat(
			forbidden("a", 10, t0, time.Second),
			repeat(10, t0, time.Second, func(i int, ts time.Time) ingest.Event { return req(ts, client("a"), status(401)) })),
			want{1, "a", 0, 20, 20}},
		{"key override lowers threshold", func(c *Config) {
			n := 5
			c.ForbiddenBurst.Overrides = []ForbiddenBurstOverride{{Override: Override{Key: "a"}, Threshold: &n}}
		}, forbidden("a", 5, t0, time.Second), want{1, "a", 0, 5, 5}},
		{"key override disables", func(c *Config) {
			f := false
			c.ForbiddenBurst.Overrides = []ForbiddenBurstOverride{{Override: Override{Key: "a", Enabled: &f}}}
		}, forbidden("a", 40, t0, time.Second), want{}},
		{"route prefix ignored", func(c *Config) {
			f := false
			c.ForbiddenBurst.Overrides = []ForbiddenBurstOverride{{Override: Override{RoutePrefix: "/v1/items", Enabled: &f}}}
		}, forbidden("a", 40, t0, time.Second), want{}},
		{"allowlisted range", func(c *Config) {
			c.ForbiddenBurst.Allowlist = []ClientAllow{{CIDR: "198.51.100.0/24"}}
		}, forbidden("a", 40, t0, time.Second), want{}},
		{"allowlisted key", func(c *Config) {
			c.ForbiddenBurst.Allowlist = []ClientAllow{{Key: "a"}}
		}, forbidden("a", 40, t0, time.Second), want{}},
		{"quiet for less than cooldown: one incident", nil, concat(
			forbidden("a", 20, t0, time.Second), forbidden("a", 20, at(20*time.Minute), time.Second)),
			want{1, "a", 0, 20, 20}},
		{"quiet for longer than cooldown: two incidents", nil, concat(
			forbidden("a", 20, t0, time.Second), forbidden("a", 20, at(40*time.Minute), time.Second)),
			want{2, "a", 0, 20, 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := only(ForbiddenBurst)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			for _, batch := range []int{0, 1, 7} {
				res := run(t, cfg, nil, batch, concat(tc.events, tail(2*time.Hour)))
				groups := incidentsOf(res.alerts)
				if len(groups) != tc.want.incidents {
					t.Fatalf("batch %d: %d incidents, want %d:\n%s", batch, len(groups), tc.want.incidents, describe(res.alerts))
				}
				if tc.want.incidents == 0 {
					continue
				}
				a := groups[0][0]
				if a.Key != tc.want.key || !a.FirstSeen.Equal(at(tc.want.first)) ||
					a.Evidence.ForbiddenCount != tc.want.forbidden || a.Evidence.TotalCount != tc.want.total {
					t.Errorf("batch %d: first alert %s first_seen %s forbidden %d/%d, want %s %s %d/%d",
						batch, a.Key, a.FirstSeen, a.Evidence.ForbiddenCount, a.Evidence.TotalCount,
						tc.want.key, at(tc.want.first), tc.want.forbidden, tc.want.total)
				}
				if a.ID != AlertID(ForbiddenBurst, a.Key, a.FirstSeen) || a.Severity != SeverityMedium ||
					a.RunbookURL != "https://runbooks.example.com/gatewatch/forbidden_burst.md" {
					t.Errorf("batch %d: alert %+v", batch, a)
				}
			}
		})
	}
}

func reversed(evs []ingest.Event) []ingest.Event {
	out := slices.Clone(evs)
	slices.Reverse(out)
	return out
}

func TestForbiddenBurstEvidence(t *testing.T) {
	events := concat(forbidden("a", 25, at(2*time.Second), time.Second), ok("a", 5, t0, time.Second))
	res := run(t, only(ForbiddenBurst), nil, 0, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents, want 1:\n%s", len(groups), describe(res.alerts))
	}
	a := final(groups[0])
	ev := a.Evidence
	if ev.ForbiddenCount != 25 || ev.TotalCount != 30 || ev.Ratio != 0.8333 || ev.Threshold != 20 || ev.MinRatio != 0.5 ||
		ev.Window != "1m0s" || !slices.Equal(ev.Statuses, []int{403}) {
		t.Errorf("evidence %+v", ev)
	}
	if !slices.Equal(ev.StatusCounts, []StatusCount{{403, 25}}) || ev.DistinctPaths != 7 {
		t.Errorf("status counts %v, distinct paths %d", ev.StatusCounts, ev.DistinctPaths)
	}
	if len(ev.SamplePaths) != 5 || len(ev.SampleRequestIDs) != 5 || !slices.Equal(ev.ClientIPs, []string{"198.51.100.7"}) ||
		!slices.IsSorted(ev.SamplePaths) {
		t.Errorf("samples %v %v %v", ev.SamplePaths, ev.SampleRequestIDs, ev.ClientIPs)
	}
	if a.Labels["key_type"] != "client_key" {
		t.Errorf("labels %v", a.Labels)
	}
	// first_seen and last_seen are the times of the first and last 403, not the edges
	// of their buckets (0s and 30s): the 200s before them are not what the alert counts.
	if !a.FirstSeen.Equal(at(2*time.Second)) || !a.LastSeen.Equal(at(26*time.Second)) {
		t.Errorf("first_seen %s last_seen %s", a.FirstSeen, a.LastSeen)
	}
	want := "Client key a received 25 responses with status 403 out of 30 requests (83%) within 1m0s."
	if a.Summary != want {
		t.Errorf("summary %q, want %q", a.Summary, want)
	}
}

func TestForbiddenBurstUpdates(t *testing.T) {
	// Ten minutes of 403s: one incident, updated at most once a window, and a final
	// update when it ends.
	events := forbidden("a", 600, t0, time.Second)
	res := run(t, only(ForbiddenBurst), nil, 50, concat(events, tail(3*time.Hour)))
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents, want 1:\n%s", len(groups), describe(res.alerts))
	}
	g := groups[0]
	if len(g) < 3 || len(g) > 12 {
		t.Errorf("%d versions of the incident, want an alert, a few updates and an end:\n%s", len(g), describe(g))
	}
	for i := 1; i < len(g); i++ {
		if !g[i].LastSeen.After(g[i-1].LastSeen) && g[i].Severity == g[i-1].Severity {
			t.Errorf("update %d does not move last_seen: %s then %s", i, g[i-1].LastSeen, g[i].LastSeen)
		}
	}
	// The last 403 is at 599s.
	if f := final(g); !f.LastSeen.Equal(at(599*time.Second)) || !f.FirstSeen.Equal(t0) {
		t.Errorf("final version %s..%s, want %s..%s", f.FirstSeen, f.LastSeen, t0, at(599*time.Second))
	}
}

func TestForbiddenBurstEviction(t *testing.T) {
	cfg := only(ForbiddenBurst)
	cfg.ForbiddenBurst.MaxKeys = 2
	// a's 403s are split by b and c arriving: a is evicted as the coldest, and its
	// ten 403s before the eviction are lost.
	events := concat(
		forbidden("a", 10, t0, 100*time.Millisecond),
		ok("b", 1, at(2*time.Second), 0),
		ok("c", 1, at(3*time.Second), 0),
		forbidden("a", 10, at(4*time.Second), 100*time.Millisecond),
	)
	res := run(t, cfg, nil, 1, events)
	if len(res.alerts) != 0 {
		t.Errorf("alerts after eviction:\n%s", describe(res.alerts))
	}
	if got := counterValue(t, res.reg, "gatewatch_detectors_evictions_total", "detector", ForbiddenBurst); got < 1 {
		t.Errorf("evictions = %v, want at least 1", got)
	}
	// Without the cap the same events alert.
	if res := run(t, only(ForbiddenBurst), nil, 1, events); len(incidentsOf(res.alerts)) != 1 {
		t.Errorf("without max_keys: %d incidents, want 1", len(incidentsOf(res.alerts)))
	}
}
