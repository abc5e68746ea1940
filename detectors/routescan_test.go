package detectors

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// probe is a scanner's request for a route that does not exist, from a.
func probe(a string, i int, ts time.Time, opts ...func(*ingest.Event)) ingest.Event {
	p := fmt.Sprintf("/wp-%d/setup.php", i)
	base := []func(*ingest.Event){ip(a), route("GET", p), status(404), reqID(fmt.Sprintf("%s-p%d", a, i))}
	return req(ts, append(base, opts...)...)
}

// scan returns n probes of distinct routes from a, one every step.
func scan(a string, n int, start time.Time, step time.Duration) []ingest.Event {
	return repeat(n, start, step, func(i int, ts time.Time) ingest.Event { return probe(a, i, ts) })
}

func TestRouteScan(t *testing.T) {
	const scanner = "203.0.113.50"
	sameRoute := func(a string, n int, start time.Time, step time.Duration) []ingest.Event {
		return repeat(n, start, step, func(i int, ts time.Time) ingest.Event {
			return req(ts, ip(a), route("GET", "/v1/legacy/export"), status(404))
		})
	}
	runEdges(t, RouteScan, []edgeCase{
		{name: "below min_routes", events: scan(scanner, 19, t0, time.Second)},
		{name: "at min_routes", events: scan(scanner, 20, t0, time.Second), incidents: 1, key: scanner,
			check: func(t *testing.T, a Alert) {
				if a.Evidence.DistinctRoutes != 20 || a.Evidence.FailureCount != 20 || a.Evidence.TotalCount != 20 {
					t.Errorf("evidence %+v", a.Evidence)
				}
			}},
		{name: "a scanner rotating through its IPv6 /64", events: repeat(20, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return probe(fmt.Sprintf("2001:db8:5:6::%x", 0x1000+i*13), i, ts)
		}), incidents: 1, key: "2001:db8:5:6::/64", check: func(t *testing.T, a Alert) {
			if len(a.Evidence.ClientIPs) == 0 || a.Evidence.ClientIPs[0] == "2001:db8:5:6::/64" {
				t.Errorf("evidence client IPs %v, want the addresses", a.Evidence.ClientIPs)
			}
		}},
		{name: "405 counts as 404", events: repeat(20, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return probe(scanner, i, ts, status(405))
		}), incidents: 1, key: scanner},
		{name: "blocked by the WAF", events: repeat(20, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return probe(scanner, i, ts, status(403), func(e *ingest.Event) { e.Action = "block" })
		}), incidents: 1, key: scanner, check: func(t *testing.T, a Alert) {
			if a.Evidence.BlockedCount != 20 || len(a.Evidence.StatusCounts) != 0 {
				t.Errorf("blocked %d status counts %v", a.Evidence.BlockedCount, a.Evidence.StatusCounts)
			}
		}},
		{name: "403 without a WAF block is forbidden_burst's", events: repeat(30, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return probe(scanner, i, ts, status(403))
		})},
		{name: "one missing route hit by many clients (a deploy)", events: repeat(500, t0, 100*time.Millisecond, func(i int, ts time.Time) ingest.Event {
			return req(ts, ip(fmt.Sprintf("198.51.100.%d", i%200)), route("GET", "/v1/removed"), status(404))
		})},
		{name: "one app hitting one missing endpoint all day", events: sameRoute("198.51.100.9", 2000, t0, 30*time.Second)},
		{name: "an id walk on one route template", events: repeat(100, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, ip(scanner), route("GET", "/v1/invoices/{id}"), path(fmt.Sprintf("/v1/invoices/%d", i)), status(404))
		})},
		{name: "mostly successful requests (a busy NAT)", events: inOrder(scan(scanner, 25, t0, time.Second),
			repeat(26, t0, time.Second, func(i int, ts time.Time) ingest.Event { return req(ts, ip(scanner)) }))},
		{name: "half of its requests", events: inOrder(scan(scanner, 25, t0, time.Second),
			repeat(25, t0, time.Second, func(i int, ts time.Time) ingest.Event { return req(ts, ip(scanner)) })),
			incidents: 1, key: scanner},
		{name: "spread over the whole window", events: concat(scan(scanner, 19, t0, 15*time.Second),
			[]ingest.Event{probe(scanner, 99, at(4*time.Minute+59*time.Second))}), incidents: 1, key: scanner},
		{name: "one bucket past the window", events: concat(scan(scanner, 19, t0, time.Second),
			[]ingest.Event{probe(scanner, 99, at(5*time.Minute))})},
		{name: "reversed within allowed lateness", events: reversed(scan(scanner, 20, t0, time.Second)), incidents: 1, key: scanner},
		{name: "half beyond allowed lateness", events: concat(
			scan(scanner, 10, at(2*time.Minute), time.Second),
			[]ingest.Event{req(at(3*time.Minute), ip("192.0.2.77"))},
			repeat(10, t0, time.Second, func(i int, ts time.Time) ingest.Event { return probe(scanner, 50+i, ts) }))},
		{name: "keyed by client key without an IP", events: repeat(20, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return probe("", i, ts, client("k-scan"))
		}), incidents: 1, key: "k-scan"},
		{name: "override lowers min_routes", cfg: func(c *Config) {
			n := 5
			c.RouteScan.Overrides = []RouteScanOverride{{Override: Override{Key: scanner}, MinRoutes: &n}}
		}, events: scan(scanner, 5, t0, time.Second), incidents: 1, key: scanner},
		{name: "override disables", cfg: func(c *Config) {
			f := false
			c.RouteScan.Overrides = []RouteScanOverride{{Override: Override{Key: scanner, Enabled: &f}}}
		}, events: scan(scanner, 40, t0, time.Second)},
		{name: "route prefix ignored", cfg: func(c *Config) {
			f := false
			c.RouteScan.Overrides = []RouteScanOverride{{Override: Override{RoutePrefix: "/wp-", Enabled: &f}}}
		}, events: scan(scanner, 40, t0, time.Second)},
		{name: "allowlisted scanner range", cfg: func(c *Config) {
			c.RouteScan.Allowlist = []ClientAllow{{CIDR: "203.0.113.0/24"}}
		}, events: scan(scanner, 40, t0, time.Second)},
		{name: "quiet for longer than cooldown: two incidents", events: concat(
			scan(scanner, 20, t0, time.Second), scan(scanner, 20, at(time.Hour), time.Second)), incidents: 2, key: scanner},
	})
}

func TestRouteScanEvidence(t *testing.T) {
	const scanner = "203.0.113.50"
	events := concat(
		[]ingest.Event{req(at(time.Second), ip(scanner))},
		repeat(30, at(3*time.Second), 2*time.Second, func(i int, ts time.Time) ingest.Event {
			return probe(scanner, i, ts, client(fmt.Sprintf("k%d", i%2)), func(e *ingest.Event) { e.UserAgent = "Nuclei" })
		}))
	res := run(t, only(RouteScan), nil, 0, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents:\n%s", len(groups), describe(res.alerts))
	}
	a := final(groups[0])
	ev := a.Evidence
	if ev.DistinctRoutes != 30 || ev.FailureCount != 30 || ev.TotalCount != 31 || ev.MinRoutes != 20 || ev.MinRatio != 0.5 ||
		!slices.Equal(ev.StatusCounts, []StatusCount{{404, 30}}) || ev.Window != "5m0s" {
		t.Errorf("evidence %+v", ev)
	}
	// Four from each 30s bucket of probes, but one from the last, which holds one.
	if len(ev.SamplePaths) != 9 || !slices.IsSorted(ev.SamplePaths) || len(ev.SampleRequestIDs) != 5 ||
		!slices.Equal(ev.ClientKeys, []string{"k0", "k1"}) || !slices.Equal(ev.UserAgents, []string{"Nuclei"}) {
		t.Errorf("samples %v %v %v %v", ev.SamplePaths, ev.SampleRequestIDs, ev.ClientKeys, ev.UserAgents)
	}
	// The first and last probes, not the 200 before them nor their buckets' edges.
	if !a.FirstSeen.Equal(at(3*time.Second)) || !a.LastSeen.Equal(at(61*time.Second)) {
		t.Errorf("first_seen %s last_seen %s", a.FirstSeen, a.LastSeen)
	}
	if a.Labels["key_type"] != "client_ip" {
		t.Errorf("labels %v", a.Labels)
	}
	want := "Client IP 203.0.113.50 requested 30 distinct routes that do not exist or were blocked (30 of its 31 requests) within 5m0s."
	if a.Summary != want {
		t.Errorf("summary %q, want %q", a.Summary, want)
	}
}

// TestDistinctCountsAtMostRequests: past exactLimit members a distinct count is an
// estimate, which can overshoot (these routes gave 96 of 80, these invoices 82 of 80
// and 158 of 150); what an alert reports, and judges, is never more than the requests
// it counts: routes a scanner probed, objects a client read.
func TestDistinctCountsAtMostRequests(t *testing.T) {
	probes := repeat(80, t0, 100*time.Millisecond, func(i int, ts time.Time) ingest.Event {
		return req(ts, ip("203.0.113.50"), route("GET", fmt.Sprintf("/x4/probe-%d", i)), status(404))
	})
	res := run(t, only(RouteScan), nil, 64, probes)
	if len(res.alerts) == 0 {
		t.Fatal("route_scan raised nothing")
	}
	for _, a := range res.alerts {
		if ev := a.Evidence; ev.DistinctRoutes > ev.FailureCount {
			t.Errorf("route_scan: %d distinct routes of %d probes", ev.DistinctRoutes, ev.FailureCount)
		}
	}
	for _, n := range []int{80, 150} {
		res := run(t, only(ObjectEnumeration), established(), 64, invoices("k", 0, n, t0, time.Second))
		if len(res.alerts) == 0 {
			t.Fatalf("object_enumeration raised nothing for %d reads", n)
		}
		for _, a := range res.alerts {
			if ev := a.Evidence; ev.DistinctObjects > ev.TotalCount {
				t.Errorf("object_enumeration: %d distinct objects of %d requests", ev.DistinctObjects, ev.TotalCount)
			}
		}
	}
}
