package detectors

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gonum.org/v1/gonum/stat/distuv"

	"github.com/gatewatch/gatewatch/ingest"
)

// hits returns n requests to method and route from distinct clients, one every step.
func hits(m, r string, n int, start time.Time, step time.Duration) []ingest.Event {
	return repeat(n, start, step, func(i int, ts time.Time) ingest.Event {
		return req(ts, route(m, r), client(fmt.Sprintf("c%d", i%3)), ip(fmt.Sprintf("203.0.113.%d", i%4)), reqID(fmt.Sprintf("r%d", i)))
	})
}

// learned is a snapshot in which the detector has seen a month of traffic and the
// given routes have the given rates, as of t0.
func learned(rates map[string]float64) *Baselines {
	b := &Baselines{TrafficSince: t0.Add(-30 * 24 * time.Hour)}
	for r, v := range rates {
		b.Routes = append(b.Routes, RouteBaseline{Route: r, RatePerMinute: v, AsOf: t0})
	}
	return b
}

func TestQuietEndpointSpike(t *testing.T) {
	const exp = "GET /v1/export"
	for _, tc := range []struct {
		name      string
		cfg       func(*Config)
		snap      *Baselines
		events    []ingest.Event
		incidents int
		count     int
	}{
		{"never seen, at min_count", nil, learned(nil), hits("GET", "/v1/export", 20, t0, 5*time.Second), 1, 20},
		{"never seen, below min_count", nil, learned(nil), hits("GET", "/v1/export", 19, t0, 5*time.Second), 0, 0},
		{"during the learning period", nil, &Baselines{TrafficSince: t0.Add(-23 * time.Hour)}, hits("GET", "/v1/export", 40, t0, time.Second), 0, 0},
		{"learning period ends during the spike", nil, &Baselines{TrafficSince: t0.Add(-24*time.Hour + 2*time.Minute)},
			hits("GET", "/v1/export", 40, t0, 2*time.Second), 1, 40},
		{"no snapshot: the detector's own traffic starts learning", nil, nil, hits("GET", "/v1/export", 40, t0, time.Second), 0, 0},
		{"quiet at 0.5 a minute", nil, learned(map[string]float64{exp: 0.5}), hits("GET", "/v1/export", 20, t0, 5*time.Second), 1, 20},
		{"just below quiet_rate", nil, learned(map[string]float64{exp: 0.99}), hits("GET", "/v1/export", 20, t0, 5*time.Second), 1, 20},
		{"above quiet_rate", nil, learned(map[string]float64{exp: 1.05}), hits("GET", "/v1/export", 40, t0, 5*time.Second), 0, 0},
		{"enough requests but not improbable", func(c *Config) { c.QuietEndpointSpike.MinCount = 10 },
			learned(map[string]float64{exp: 1}), hits("GET", "/v1/export", 10, t0, 5*time.Second), 0, 0},
		{"other method is another route", nil, learned(map[string]float64{exp: 0}), concat(
			hits("GET", "/v1/export", 10, t0, 5*time.Second), hits("POST", "/v1/export", 10, t0, 5*time.Second)), 0, 0},
		{"spread over the whole window", nil, learned(nil), concat(
			hits("GET", "/v1/export", 10, t0, time.Second), hits("GET", "/v1/export", 10, at(4*time.Minute+59*time.Second), 0)), 1, 20},
		{"one bucket past the window", nil, learned(nil), concat(
			hits("GET", "/v1/export", 10, t0, time.Second), hits("GET", "/v1/export", 10, at(5*time.Minute), 0)), 0, 0},
		{"reversed within allowed lateness", nil, learned(nil), reversed(hits("GET", "/v1/export", 20, t0, time.Second)), 1, 20},
		{"half beyond allowed lateness", nil, learned(nil), concat(
			hits("GET", "/v1/export", 10, at(2*time.Minute), time.Second),
			hits("GET", "/v1/other", 1, at(3*time.Minute), 0),
			hits("GET", "/v1/export", 10, t0, time.Second)), 0, 0},
		{"route prefix override", func(c *Config) {
			n := 5
			c.QuietEndpointSpike.Overrides = []QuietEndpointSpikeOverride{{Override: Override{RoutePrefix: "/admin"}, MinCount: &n}}
		}, learned(nil), hits("DELETE", "/admin/users/{id}", 5, t0, time.Second), 1, 5},
		{"key override disables", func(c *Config) {
			f := false
			c.QuietEndpointSpike.Overrides = []QuietEndpointSpikeOverride{{Override: Override{Key: exp, Enabled: &f}}}
		}, learned(nil), hits("GET", "/v1/export", 40, t0, time.Second), 0, 0},
		{"allowlisted monitor", func(c *Config) {
			c.QuietEndpointSpike.Allowlist = []ClientAllow{{CIDR: "203.0.113.0/24"}}
		}, learned(nil), hits("GET", "/v1/export", 40, t0, time.Second), 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := only(QuietEndpointSpike)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			for _, batch := range []int{0, 1} {
				res := run(t, cfg, tc.snap, batch, concat(tc.events, tail(2*time.Hour)))
				groups := incidentsOf(res.alerts)
				if len(groups) != tc.incidents {
					t.Fatalf("batch %d: %d incidents, want %d:\n%s", batch, len(groups), tc.incidents, describe(res.alerts))
				}
				if tc.incidents == 0 {
					continue
				}
				a := groups[0][0]
				if a.Evidence.ObservedCount != tc.count || *a.Evidence.PValue >= cfg.QuietEndpointSpike.PValue {
					t.Errorf("batch %d: observed %d p %v, want %d below %v", batch, a.Evidence.ObservedCount, *a.Evidence.PValue, tc.count, cfg.QuietEndpointSpike.PValue)
				}
			}
		})
	}
}

func TestQuietEndpointSpikeEvidence(t *testing.T) {
	events := hits("GET", "/v1/export", 30, at(10*time.Second), 4*time.Second)
	for i := range events {
		if i%5 == 0 {
			events[i].Status = 403
		}
	}
	res := run(t, only(QuietEndpointSpike), learned(map[string]float64{"GET /v1/export": 0.5}), 0, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents:\n%s", len(groups), describe(res.alerts))
	}
	a := final(groups[0])
	ev := a.Evidence
	if a.Key != "GET /v1/export" || ev.Method != "GET" || ev.Route != "/v1/export" || ev.ObservedCount != 30 || ev.MinCount != 20 ||
		*ev.QuietRate != 1 || ev.MaxPValue != 1e-6 || ev.Window != "5m0s" {
		t.Errorf("alert %s evidence %+v", a.Key, ev)
	}
	ws, err := time.Parse(time.RFC3339, ev.WindowStart)
	if err != nil {
		t.Fatal(err)
	}
	rate := 0.5 * math.Exp(-float64(ws.Sub(t0))/float64(24*time.Hour)) // as of the window start
	if math.Abs(*ev.BaselineRatePerMin-rate) > 1e-4 || math.Abs(*ev.Expected-5*rate) > 1e-4 {
		t.Errorf("baseline %v expected %v, want %v and %v", *ev.BaselineRatePerMin, *ev.Expected, rate, 5*rate)
	}
	if want := poissonTail(30, *ev.Expected); math.Abs(*ev.PValue-want)/want > 1e-4 {
		t.Errorf("p_value %v, want %v", *ev.PValue, want)
	}
	if ev.DistinctClients != 3 || !slices.Equal(ev.ClientKeys, []string{"c0", "c1", "c2"}) || len(ev.ClientIPs) != 4 ||
		len(ev.SampleRequestIDs) != 5 || !slices.Equal(ev.SamplePaths, []string{"/v1/export"}) {
		t.Errorf("samples: distinct %d keys %v ips %v ids %v paths %v", ev.DistinctClients, ev.ClientKeys, ev.ClientIPs, ev.SampleRequestIDs, ev.SamplePaths)
	}
	// How the endpoint answered: 24 went through, 6 were refused.
	if want := []ClassCount{{"2xx", 24}, {"4xx", 6}}; !slices.Equal(ev.StatusClasses, want) {
		t.Errorf("status_classes %v, want %v", ev.StatusClasses, want)
	}
	if !a.FirstSeen.Equal(at(10*time.Second)) || !a.LastSeen.Equal(at(126*time.Second)) { // the first and last requests
		t.Errorf("first_seen %s last_seen %s", a.FirstSeen, a.LastSeen)
	}
	if a.Labels["route"] != "/v1/export" || a.Labels["method"] != "GET" || a.Labels["key_type"] != "route" {
		t.Errorf("labels %v", a.Labels)
	}
}

func TestQuietEndpointSpikeLearnsRates(t *testing.T) {
	// A route with ten requests a minute for two days is busy, not quiet: hammering it
	// raises nothing. A route that appears only on the second day still alerts.
	cfg := only(QuietEndpointSpike)
	var events []ingest.Event
	start := t0.Add(-48 * time.Hour)
	for m := 0; m < 48*60; m++ {
		for j := 0; j < 10; j++ {
			events = append(events, req(start.Add(time.Duration(m)*time.Minute+time.Duration(j)*6*time.Second), route("GET", "/v1/busy")))
		}
	}
	events = append(events, hits("GET", "/v1/busy", 200, t0, time.Second)...)
	events = append(events, hits("GET", "/v1/fresh", 30, at(time.Hour), time.Second)...)
	res := run(t, cfg, nil, 1000, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 || groups[0][0].Key != "GET /v1/fresh" {
		t.Fatalf("incidents:\n%s\nwant one, for GET /v1/fresh", describe(res.alerts))
	}
	b, err := res.engine.store.LoadBaselines(t.Context(), AllBaselines)
	if err != nil {
		t.Fatal(err)
	}
	_ = b // written by Run only; Observe keeps them until SyncBaselines
	if err := res.engine.SyncBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, _ = res.engine.store.LoadBaselines(t.Context(), AllBaselines)
	var busy *RouteBaseline
	for i := range b.Routes {
		if b.Routes[i].Route == "GET /v1/busy" {
			busy = &b.Routes[i]
		}
	}
	if busy == nil || !b.TrafficSince.Equal(start) {
		t.Fatalf("baselines after sync: %+v", b)
	}
	// 10 a minute for 48h with a 24h time constant: 10 × (1 - e^-2) before correction.
	if want := 10 * (1 - math.Exp(-2)); math.Abs(busy.RatePerMinute-want) > 0.5 {
		t.Errorf("busy rate %v, want about %v", busy.RatePerMinute, want)
	}
}

func TestPoissonTail(t *testing.T) {
	// logTail sums the upper tail in log space, the slow and obviously right way.
	logTail := func(k int, lambda float64) float64 {
		p := distuv.Poisson{Lambda: lambda}
		sum := 0.0
		for x := k; x < k+2000; x++ {
			sum += math.Exp(p.LogProb(float64(x)))
		}
		return sum
	}
	for _, tc := range []struct {
		k      int
		lambda float64
	}{{20, 5}, {20, 0.5}, {20, 1e-9}, {5, 5}, {200, 10}, {1, 1e-12}, {50, 49}} {
		got, want := poissonTail(tc.k, tc.lambda), logTail(tc.k, tc.lambda)
		if math.Abs(got-want) > 1e-9*want && math.Abs(got-want) > 1e-300 {
			t.Errorf("poissonTail(%d, %g) = %g, want %g", tc.k, tc.lambda, got, want)
		}
	}
	if got := poissonTail(20, 0); got != 0 {
		t.Errorf("poissonTail(20, 0) = %g, want 0", got)
	}
	if got := poissonTail(0, 3); got != 1 {
		t.Errorf("poissonTail(0, 3) = %g, want 1", got)
	}
	// The tail the default config cares about is far below what 1-CDF can resolve.
	if got := poissonTail(20, 1e-3); got <= 0 || got > 1e-70 {
		t.Errorf("poissonTail(20, 1e-3) = %g, want a tiny positive number", got)
	}
}

// TestQuietEndpointSpikeLearnsPeriodicBursts: a download route hit by a cron job at the
// same minute every hour, thirty requests at once, is quiet on average (half a request
// a minute), and each burst is improbable under that rate; but each is no larger than
// the bursts before it, so none pages once the route's peak holds one. A burst four
// times as large does.
func TestQuietEndpointSpikeLearnsPeriodicBursts(t *testing.T) {
	var events []ingest.Event
	for h := range 48 {
		events = append(events, hits("GET", "/downloads/{id}", 30, t0.Add(time.Duration(h)*time.Hour), time.Second)...)
	}
	events = append(events, hits("GET", "/downloads/{id}", 120, t0.Add(48*time.Hour), 500*time.Millisecond)...)
	cfg := only(QuietEndpointSpike)
	res := run(t, cfg, &Baselines{TrafficSince: t0.Add(-24 * time.Hour)}, 200, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 2 || !groups[0][0].FirstSeen.Equal(t0) || !groups[1][0].FirstSeen.Equal(t0.Add(48*time.Hour)) {
		t.Fatalf("incidents:\n%s\nwant the first burst (no peak yet) and the big one", describe(res.alerts))
	}
	if ev := groups[1][0].Evidence; *ev.RecentPeak < 29 || ev.MinPeakRatio != 3 || ev.ObservedCount < 90 {
		t.Errorf("evidence %+v", ev)
	}
	// The peak is a baseline: a restart from it still knows the bursts.
	if err := res.engine.SyncBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, _ := res.engine.store.LoadBaselines(t.Context(), AllBaselines)
	if len(b.Routes) != 1 || b.Routes[0].Peak < 120 {
		t.Fatalf("routes %+v", b.Routes)
	}
	b.Routes[0].Peak, b.Routes[0].PeakAt = 30, t0.Add(47*time.Hour)
	res = run(t, cfg, &b, 0, hits("GET", "/downloads/{id}", 30, t0.Add(49*time.Hour), time.Second))
	if len(res.alerts) != 0 {
		t.Errorf("after a restart: %s", describe(res.alerts))
	}
}

func TestQuietEndpointSpikeIgnoresMissingRoutes(t *testing.T) {
	// A scanner hammering routes that do not exist is route_scan's, not a quiet
	// endpoint being hammered; nor is a walk over ids that do not exist.
	var events []ingest.Event
	for i := range 40 {
		events = append(events, req(at(time.Duration(i)*time.Second), route("GET", "/.env"), status(404)),
			req(at(time.Duration(i)*time.Second), route("POST", "/v1/export"), status(405)))
	}
	res := run(t, only(QuietEndpointSpike), learned(nil), 0, events)
	if len(res.alerts) != 0 {
		t.Errorf("alerts:\n%s", describe(res.alerts))
	}
	if n, _, _ := res.engine.dets[0].stats(); n != 0 {
		t.Errorf("%d routes tracked, want none", n)
	}
}

func TestQuietEndpointSpikeEvidenceNeverEmpty(t *testing.T) {
	// A route busy when its run of traffic began (so not sampled then) that has grown
	// quiet by the time of a spike still has samples in its alert.
	const r = "GET /v1/reports"
	snap := learned(map[string]float64{r: 50})
	snap.Routes[0].AsOf = t0.Add(-5 * 24 * time.Hour) // its rate has decayed since
	events := concat(hits("GET", "/v1/reports", 10, t0, time.Minute), hits("GET", "/v1/reports", 60, at(10*time.Minute), time.Second))
	res := run(t, only(QuietEndpointSpike), snap, 0, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("incidents:\n%s", describe(res.alerts))
	}
	if ev := final(groups[0]).Evidence; len(ev.ClientIPs) == 0 || len(ev.SamplePaths) == 0 || len(ev.SampleRequestIDs) == 0 || ev.DistinctClients == 0 {
		t.Errorf("evidence %+v", ev)
	}
}

// TestQuietEndpointSpikeSamplesQuietRoutesOnly: in a cold start (no baselines) every
// route's run of traffic starts quiet, so each gets a sampler. One that turns out busy
// lets it go, since a busy route cannot fire; one that stays quiet keeps it.
func TestQuietEndpointSpikeSamplesQuietRoutesOnly(t *testing.T) {
	e, err := NewEngine(only(QuietEndpointSpike), Options{Registerer: prometheus.NewPedanticRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	events := concat(hits("GET", "/v1/busy", 3600, t0, time.Second), hits("GET", "/v1/quiet", 12, t0, 5*time.Minute))
	slices.SortStableFunc(events, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	e.Observe(events)
	d := e.dets[0].(*quietSpike)
	for _, c := range []struct {
		route   string
		sampled bool
	}{{"GET /v1/busy", false}, {"GET /v1/quiet", true}} {
		slot := d.tab.find(c.route)
		if slot < 0 {
			t.Fatalf("%s is not tracked", c.route)
		}
		if got := d.tab.ents[slot].s.smp != nil; got != c.sampled {
			t.Errorf("%s: sampled %v, want %v", c.route, got, c.sampled)
		}
	}
}

func TestStatusClass(t *testing.T) {
	for status, want := range map[int]string{0: "none", 99: "none", 100: "1xx", 204: "2xx", 302: "3xx", 429: "4xx", 599: "5xx", 600: "none", -1: "none"} {
		if got := statusClasses[statusClass(status)]; got != want {
			t.Errorf("statusClass(%d) = %s, want %s", status, got, want)
		}
	}
}
