package detectors

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
)

// invoices returns n requests of key k for invoices from+0, from+1, ..., one every step.
func invoices(k string, from, n int, start time.Time, step time.Duration) []ingest.Event {
	return repeat(n, start, step, func(i int, ts time.Time) ingest.Event {
		return req(ts, client(k), ip("198.51.100.60"), route("GET", "/v1/invoices/{id}"),
			path(fmt.Sprintf("/v1/invoices/%d", from+i)), reqID(fmt.Sprintf("%s-%d", k, i)))
	})
}

// bulkSync is a snapshot of a month of traffic in which key k read up to peak invoices
// in a window yesterday.
func bulkSync(k string, peak float64) *Baselines {
	b := established()
	b.Objects = []ObjectBaseline{{Client: k, Route: "GET /v1/invoices/{id}", Peak: peak, PeakAt: t0.Add(-24 * time.Hour)}}
	return b
}

func TestObjectEnumeration(t *testing.T) {
	const key = "k GET /v1/invoices/{id}"
	runEdges(t, ObjectEnumeration, []edgeCase{
		{name: "a new client walks invoice ids", snap: established(), events: invoices("k", 1000, 80, t0, 3*time.Second),
			incidents: 1, key: key, check: func(t *testing.T, a Alert) {
				ev := a.Evidence
				if ev.DistinctObjects < 50 || ev.MinDistinct != 50 || *ev.RecentPeak != 0 || ev.Route != "/v1/invoices/{id}" ||
					ev.Method != "GET" || a.Labels["client"] != "k" || a.Labels["key_type"] != "client_key" {
					t.Errorf("alert %+v", a)
				}
			}},
		{name: "well below min_distinct", snap: established(), events: invoices("k", 1000, 35, t0, 3*time.Second)},
		{name: "many requests, few objects", snap: established(), events: repeat(400, t0, 500*time.Millisecond, func(i int, ts time.Time) ingest.Event {
			return invoices("k", i%10, 1, ts, 0)[0]
		})},
		{name: "a route without ids", snap: established(), events: repeat(400, t0, 500*time.Millisecond, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("k"), route("GET", "/v1/search"))
		})},
		{name: "two routes are two pairs", snap: established(), events: concat(invoices("k", 0, 30, t0, 5*time.Second),
			repeat(30, t0, 5*time.Second, func(i int, ts time.Time) ingest.Event {
				return req(ts, client("k"), route("GET", "/v1/orders/{id}"), path(fmt.Sprintf("/v1/orders/%d", i)))
			}))},
		{name: "an established bulk-sync client", snap: bulkSync("k", 1400), events: invoices("k", 0, 3000, t0, 100*time.Millisecond)},
		{name: "four times a small peak", snap: bulkSync("k", 20), events: invoices("k", 0, 200, t0, time.Second), incidents: 1, key: key},
		{name: "during the learning period", snap: &Baselines{TrafficSince: t0.Add(-23 * time.Hour)}, events: invoices("k", 0, 200, t0, time.Second)},
		{name: "keyed by IP without a client key", snap: established(), events: repeat(80, t0, 3*time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, ip("203.0.113.8"), route("GET", "/v1/invoices/{id}"), path(fmt.Sprintf("/v1/invoices/%d", i)))
		}), incidents: 1, key: "203.0.113.8 GET /v1/invoices/{id}"},
		{name: "reversed within allowed lateness", snap: established(), events: reversed(invoices("k", 0, 80, t0, 300*time.Millisecond)),
			incidents: 1, key: key},
		{name: "beyond allowed lateness", snap: established(), events: concat(
			invoices("k", 0, 40, at(2*time.Minute), time.Second),
			[]ingest.Event{req(at(3*time.Minute), client("other"))},
			invoices("k", 100, 40, t0, time.Second))},
		{name: "override lowers min_distinct", snap: established(), cfg: func(c *Config) {
			n := 10
			c.ObjectEnumeration.Overrides = []ObjectEnumerationOverride{{Override: Override{Key: "k"}, MinDistinct: &n}}
		}, events: invoices("k", 0, 20, t0, time.Second), incidents: 1, key: key},
		{name: "allowlisted partner", snap: established(), cfg: func(c *Config) {
			c.ObjectEnumeration.Allowlist = []ClientAllow{{Key: "k"}}
		}, events: invoices("k", 0, 500, t0, 200*time.Millisecond)},
		{name: "route prefix ignored", snap: established(), cfg: func(c *Config) {
			f := false
			c.ObjectEnumeration.Overrides = []ObjectEnumerationOverride{{Override: Override{RoutePrefix: "/v1/invoices", Enabled: &f}}}
		}, events: invoices("k", 0, 500, t0, 200*time.Millisecond)},
	})
}

// TestObjectEnumerationLearnsBulkSync: a partner syncs a thousand invoices every night;
// from the second night on that is its history, and only a walk far beyond it fires.
func TestObjectEnumerationLearnsBulkSync(t *testing.T) {
	var events []ingest.Event
	for d := 0; d < 3; d++ {
		events = append(events, invoices("partner", 0, 1000, t0.Add(time.Duration(d)*24*time.Hour), 250*time.Millisecond)...)
	}
	cfg := only(ObjectEnumeration)
	res := run(t, cfg, &Baselines{TrafficSince: t0.Add(-12 * time.Hour)}, 1000, events)
	groups := incidentsOf(res.alerts)
	// The first night, after twelve hours of traffic, is still the learning period.
	if len(groups) != 0 {
		t.Fatalf("incidents:\n%s\nwant none", describe(res.alerts))
	}
	if err := res.engine.SyncBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, _ := res.engine.store.LoadBaselines(t.Context(), AllBaselines)
	if len(b.Objects) != 1 || b.Objects[0].Client != "partner" || b.Objects[0].Route != "GET /v1/invoices/{id}" || b.Objects[0].Peak < 600 {
		t.Fatalf("object baselines %+v", b.Objects)
	}
	// A restart from that baseline still knows the partner.
	res = run(t, cfg, &b, 0, invoices("partner", 0, 1000, t0.Add(4*24*time.Hour), 250*time.Millisecond))
	if len(res.alerts) != 0 {
		t.Errorf("after a restart: %s", describe(res.alerts))
	}
}

func TestObjectEnumerationEvidence(t *testing.T) {
	events := concat(
		[]ingest.Event{req(t0, client("k"), route("GET", "/v1/invoices/{id}"), path("/v1/invoices/1"))},
		invoices("k", 5000, 120, at(10*time.Second), 2*time.Second))
	res := run(t, only(ObjectEnumeration), established(), 0, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents:\n%s", len(groups), describe(res.alerts))
	}
	a := final(groups[0])
	ev := a.Evidence
	// Linear counting estimates 121 objects within a few.
	if ev.DistinctObjects < 110 || ev.DistinctObjects > 132 || ev.TotalCount != 121 || ev.Window != "5m0s" ||
		len(ev.SamplePaths) != 5 || !slices.IsSorted(ev.SamplePaths) {
		t.Errorf("evidence %+v", ev)
	}
	if !a.FirstSeen.Equal(t0) || !a.LastSeen.Equal(at(248*time.Second)) {
		t.Errorf("first_seen %s last_seen %s", a.FirstSeen, a.LastSeen)
	}
}

// TestObjectEnumerationLearnsShortBurstsLive: a partner syncs a thousand invoices in a
// minute every night, and the engine runs on without a flush, as live. The first night
// (a new client, past the learning period) fires; its windows then reach the peak
// although no request follows them for a day, so the next nights are its history.
func TestObjectEnumerationLearnsShortBurstsLive(t *testing.T) {
	e, err := NewEngine(only(ObjectEnumeration), Options{Registerer: prometheus.NewRegistry(), Baselines: NewMemoryBaselines(*established(), AllBaselines)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	for night := range 4 {
		start := t0.Add(time.Duration(night) * 24 * time.Hour)
		evs := invoices("partner", 0, 1000, start, 60*time.Millisecond)
		for m := 1; m < 24*60; m++ { // another client's requests move the watermark on
			evs = append(evs, req(start.Add(time.Duration(m)*time.Minute), client("other")))
		}
		alerts := e.Observe(evs)
		if want := map[bool]int{true: 1}[night == 0]; len(alerts) != want {
			t.Errorf("night %d: %d alerts, want %d:\n%s", night, len(alerts), want, describe(alerts))
		}
		if err := e.SyncBaselines(t.Context()); err != nil {
			t.Fatal(err)
		}
		b, _ := e.store.LoadBaselines(t.Context(), AllBaselines)
		if len(b.Objects) != 1 || b.Objects[0].Peak < 600 {
			t.Fatalf("night %d: object baselines %+v, want the partner's peak", night, b.Objects)
		}
	}
}
