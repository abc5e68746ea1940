package detectors

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// A scenario is a few hours of generated gateway traffic with known attacks in it, and
// the baseline snapshot a month of the same traffic would have left.
type scenario struct {
	events  []ingest.Event // in time order
	snap    Baselines
	attacks []attack
}

// attack is what one injected attack must raise: exactly one incident.
type attack struct {
	detector, key string
}

type scenarioClient struct {
	key       string
	homes     []string // one country, two for roaming users
	ips       []string // per home
	tokens    []string // one per device: users with two devices have two tokens
	devices   []string
	userAgent string
}

type scenarioRoute struct {
	method, route string
	rate          float64 // requests a minute
	admin         bool    // only a few clients call it
}

// genScenario builds the scenario for seed: hundreds of clients (some roaming between two
// home countries, some with two devices each with its own token), dozens of routes from
// busy to quiet, a trickle of 403s and 404s, a busy endpoint whose traffic doubles half
// way, and four attacks, one per detector.
func genScenario(seed uint64, hours int, withAttacks bool) scenario {
	rng := rand.New(rand.NewPCG(seed, seed))
	start := t0
	end := start.Add(time.Duration(hours) * time.Hour)
	countries := []string{"DE", "FR", "US", "GB", "NL", "ES", "IT", "SE", "PL", "CA"}

	clients := make([]scenarioClient, 300)
	for i := range clients {
		c := &clients[i]
		c.key = fmt.Sprintf("client-%03d", i)
		c.homes = []string{countries[rng.IntN(len(countries))]}
		if i%10 == 3 { // roaming: two home countries
			for {
				if h := countries[rng.IntN(len(countries))]; h != c.homes[0] {
					c.homes = append(c.homes, h)
					break
				}
			}
		}
		for j := range c.homes {
			c.ips = append(c.ips, fmt.Sprintf("10.%d.%d.%d", j, i/250, i%250+1))
		}
		devices := 1
		if i%4 == 1 { // two devices, each with its own token
			devices = 2
		}
		for j := range devices {
			c.tokens = append(c.tokens, fmt.Sprintf("%016x%016x", uint64(i), uint64(j)+0xabc0))
			c.devices = append(c.devices, fmt.Sprintf("dev-%03d-%d", i, j))
		}
		c.userAgent = fmt.Sprintf("app/%d.%d", 1+i%3, i%7)
	}

	routes := []scenarioRoute{
		{"GET", "/v1/search", 20, false}, // doubles half way
		{"GET", "/v1/items/{id}", 15, false},
		{"GET", "/v1/accounts/{id}", 10, false},
		{"POST", "/v1/orders", 8, false},
	}
	for i := 0; i < 10; i++ {
		routes = append(routes, scenarioRoute{"GET", fmt.Sprintf("/v1/catalog/%d/{id}", i), 2 + float64(i%4), false})
	}
	for i := 0; i < 14; i++ {
		routes = append(routes, scenarioRoute{[]string{"GET", "PUT", "DELETE"}[i%3], fmt.Sprintf("/v1/settings/%d", i), 0.05 + 0.03*float64(i), false})
	}
	routes = append(routes,
		scenarioRoute{"POST", "/v1/admin/export", 0.05, true},
		scenarioRoute{"DELETE", "/v1/admin/users/{id}", 0.02, true},
	)

	s := scenario{snap: Baselines{TrafficSince: start.Add(-30 * 24 * time.Hour)}}
	for _, c := range clients {
		kb := KeyBaseline{Key: c.key, FirstSeen: start.Add(-60 * 24 * time.Hour), Events: 5000}
		for _, h := range c.homes {
			kb.Countries = append(kb.Countries, CountryBaseline{Country: h, FirstSeen: kb.FirstSeen, LastSeen: start.Add(-time.Hour), Events: 2500})
		}
		slices.SortFunc(kb.Countries, func(a, b CountryBaseline) int { return strings.Compare(a.Country, b.Country) })
		s.snap.Keys = append(s.snap.Keys, kb)
	}
	for _, r := range routes {
		s.snap.Routes = append(s.snap.Routes, RouteBaseline{Route: r.method + " " + r.route, RatePerMinute: r.rate, AsOf: start})
	}

	reqN := 0
	emit := func(ts time.Time, c *scenarioClient, r scenarioRoute, st int) {
		reqN++
		home := 0
		if len(c.homes) > 1 && (ts.Hour()+len(c.key))%3 == 0 {
			home = 1
		}
		tok := rng.IntN(len(c.tokens))
		p := strings.ReplaceAll(r.route, "{id}", fmt.Sprint(rng.IntN(5000)))
		s.events = append(s.events, ingest.Event{
			Time: ts, Source: "envoy", ClientKey: c.key, TokenFP: c.tokens[tok], Device: c.devices[tok],
			ClientIP: c.ips[home], Country: c.homes[home], Method: r.method, Host: "api.example.com",
			Route: r.route, Path: p, Status: st, UserAgent: c.userAgent, RequestID: fmt.Sprintf("req-%07d", reqN),
		})
	}
	half := start.Add(end.Sub(start) / 2)
	for _, r := range routes {
		for ts := start; ; {
			rate := r.rate
			if r.route == "/v1/search" && !ts.Before(half) {
				rate *= 2
			}
			ts = ts.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Minute)))
			if !ts.Before(end) {
				break
			}
			c := &clients[rng.IntN(len(clients))]
			if r.admin {
				c = &clients[rng.IntN(5)]
			}
			st := 200
			switch x := rng.Float64(); {
			case x < 0.01:
				st = 403
			case x < 0.02:
				st = 404
			}
			emit(ts.Truncate(time.Millisecond), c, r, st)
		}
	}

	if !withAttacks {
		slices.SortStableFunc(s.events, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
		return s
	}

	// 1. new_country: client-042's API key (no bearer token, no device) from a country
	// it has never used, for ten minutes.
	victim := &clients[42]
	stranger := "BR"
	for i := 0; i < 30; i++ {
		ts := start.Add(time.Hour + time.Duration(i)*20*time.Second)
		reqN++
		s.events = append(s.events, ingest.Event{
			Time: ts, Source: "envoy", ClientKey: victim.key, ClientIP: "203.0.113.42", Country: stranger,
			Method: "GET", Host: "api.example.com", Route: "/v1/accounts/{id}", Path: fmt.Sprintf("/v1/accounts/%d", i),
			Status: 200, UserAgent: "curl/8.5", RequestID: fmt.Sprintf("req-%07d", reqN),
		})
	}
	s.attacks = append(s.attacks, attack{NewCountry, victim.key})

	// 2. token_reuse: client-077's token replayed from another device, through an exit
	// in the victim's own country.
	tv := &clients[77]
	for i := 0; i < 15; i++ {
		ts := start.Add(90*time.Minute + time.Duration(i)*30*time.Second)
		reqN++
		s.events = append(s.events, ingest.Event{
			Time: ts, Source: "envoy", ClientKey: tv.key, TokenFP: tv.tokens[0], Device: "dev-attacker",
			ClientIP: "198.51.100.77", Country: tv.homes[0], Method: "GET", Host: "api.example.com",
			Route: "/v1/items/{id}", Path: fmt.Sprintf("/v1/items/%d", 9000+i), Status: 200, UserAgent: "python-requests/2.31",
			RequestID: fmt.Sprintf("req-%07d", reqN),
		})
	}
	s.attacks = append(s.attacks, attack{TokenReuse, tv.tokens[0]})

	// 3. forbidden_burst: an unauthenticated client probes account ids, 60 403s in a minute.
	for i := 0; i < 60; i++ {
		ts := start.Add(2*time.Hour + time.Duration(i)*time.Second)
		reqN++
		s.events = append(s.events, ingest.Event{
			Time: ts, Source: "envoy", ClientIP: "192.0.2.200", Country: "NL", Method: "GET", Host: "api.example.com",
			Route: "/v1/accounts/{id}", Path: fmt.Sprintf("/v1/accounts/%d", 100+i), Status: 403, Action: "BLOCK",
			UserAgent: "sqlmap/1.7", RequestID: fmt.Sprintf("req-%07d", reqN),
		})
	}
	// It walks account ids: object enumeration too.
	s.attacks = append(s.attacks, attack{ForbiddenBurst, "192.0.2.200"}, attack{ObjectEnumeration, "192.0.2.200 GET /v1/accounts/{id}"})

	// 4. quiet_endpoint_spike: the admin export, called a few times a day, called 50
	// times in three minutes by a legitimate-looking client.
	ex := &clients[200]
	for i := 0; i < 50; i++ {
		ts := start.Add(3*time.Hour + time.Duration(i)*3600*time.Millisecond)
		emit(ts, ex, routes[len(routes)-2], 200)
	}
	// A key that never did admin work before: a privilege anomaly too.
	s.attacks = append(s.attacks, attack{QuietEndpointSpike, "POST /v1/admin/export"}, attack{PrivilegeAnomaly, ex.key})

	slices.SortStableFunc(s.events, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	return s
}

// jitter reorders events as a source might deliver them: each is held back by up to
// maxDelay, so none is later than the watermark when allowed lateness exceeds maxDelay.
func jitter(events []ingest.Event, maxDelay time.Duration, seed uint64) []ingest.Event {
	rng := rand.New(rand.NewPCG(seed, ^seed))
	type keyed struct {
		arrive time.Time
		ev     ingest.Event
	}
	ks := make([]keyed, len(events))
	for i, ev := range events {
		ks[i] = keyed{ev.Time.Add(time.Duration(rng.Int64N(int64(maxDelay)))), ev}
	}
	slices.SortStableFunc(ks, func(a, b keyed) int { return a.arrive.Compare(b.arrive) })
	out := make([]ingest.Event, len(ks))
	for i, k := range ks {
		out[i] = k.ev
	}
	return out
}

func TestScenarioOneIncidentPerAttack(t *testing.T) {
	s := genScenario(1, 4, true)
	if len(s.events) < 15000 {
		t.Fatalf("scenario has %d events, want a realistic few hours", len(s.events))
	}
	res := run(t, DefaultConfig(), &s.snap, 500, s.events)
	groups := incidentsOf(res.alerts)
	var got []attack
	for _, g := range groups {
		got = append(got, attack{g[0].Detector, g[0].Key})
	}
	want := slices.Clone(s.attacks)
	sortAttacks(got)
	sortAttacks(want)
	if !slices.Equal(got, want) {
		t.Fatalf("incidents %v, want exactly %v:\n%s", got, want, describe(res.alerts))
	}
	for _, g := range groups {
		a := final(g)
		if a.Summary == "" || a.RunbookURL == "" || a.ID != AlertID(a.Detector, a.Key, a.FirstSeen) {
			t.Errorf("incident %s: %+v", a.ID, a)
		}
	}
	if late := counterValue(t, res.reg, "gatewatch_detectors_late_events_total"); late != 0 {
		t.Errorf("late events = %v in an ordered input", late)
	}
	if n := counterValue(t, res.reg, "gatewatch_detectors_events_total"); n != float64(len(s.events)) {
		t.Errorf("events_total = %v, want %d", n, len(s.events))
	}
}

func sortAttacks(a []attack) {
	slices.SortFunc(a, func(x, y attack) int {
		return cmp.Or(strings.Compare(x.detector, y.detector), strings.Compare(x.key, y.key))
	})
}

func TestDeterminism(t *testing.T) {
	s := genScenario(7, 4, true)
	first := alertsJSON(t, run(t, DefaultConfig(), &s.snap, 500, s.events).alerts)
	if first == "" {
		t.Fatal("no alerts")
	}
	if again := alertsJSON(t, run(t, DefaultConfig(), &s.snap, 500, s.events).alerts); again != first {
		t.Errorf("the same input gave different alerts:\n%s\nthen\n%s", first, again)
	}
	if other := alertsJSON(t, run(t, DefaultConfig(), &s.snap, 1, s.events).alerts); other != first {
		t.Errorf("batches of one gave different alerts:\n%s\nthen\n%s", first, other)
	}
	// Reordered within allowed lateness (30s): the same alerts, byte for byte, as a set:
	// the batch an alert is emitted in may differ.
	shuffled := jitter(s.events, 25*time.Second, 99)
	res := run(t, DefaultConfig(), &s.snap, 333, shuffled)
	if late := counterValue(t, res.reg, "gatewatch_detectors_late_events_total"); late != 0 {
		t.Fatalf("%v late events: the jitter exceeds allowed lateness", late)
	}
	if got, want := sortedLines(alertsJSON(t, res.alerts)), sortedLines(first); got != want {
		t.Errorf("reordered input gave different alerts:\n%s\nwant\n%s", got, want)
	}
}

// TestLearningAsOfEachEvent: the engine hands a run of events to one detector after
// the other, and each judges a window with the traffic seen up to the event that closed
// it, as it would one event at a time. A late record stamped before the start of
// traffic, arriving after the window closed, does not end the learning period for that
// window, in batches of one or in one batch.
func TestLearningAsOfEachEvent(t *testing.T) {
	events := concat(admins("k", 3, t0, 10*time.Second),
		// Traffic on, five minutes apart (not far ahead), past every window of k.
		repeat(4, at(5*time.Minute), 5*time.Minute, func(_ int, ts time.Time) ingest.Event { return req(ts, client("other")) }),
		// Late, and before the start of traffic.
		[]ingest.Event{req(t0.Add(-25*time.Hour), client("early"))},
	)
	for _, tc := range []struct {
		name      string
		since     time.Time
		incidents int
	}{
		{"learnt by then", t0.Add(-24 * time.Hour), 1},
		{"learnt only once the late record came", t0.Add(-24*time.Hour + 30*time.Second), 0},
	} {
		for _, batch := range []int{1, len(events)} {
			res := run(t, only(PrivilegeAnomaly), &Baselines{TrafficSince: tc.since}, batch, events)
			if got := len(incidentsOf(res.alerts)); got != tc.incidents {
				t.Errorf("%s, batches of %d: %d incidents, want %d:\n%s", tc.name, batch, got, tc.incidents, describe(res.alerts))
			}
		}
	}
}

func sortedLines(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestScenarioWithoutSnapshot runs long enough for the detectors to learn by
// themselves: a day and a half, so that quiet_endpoint_spike is past its learning
// period. new_country cannot learn a week in that time and stays silent.
func TestScenarioWithoutSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("generates a day and a half of traffic")
	}
	s := genScenario(3, 36, true)
	// Move the attacks past the learning period: they were injected in the first hours.
	shift := 30 * time.Hour
	for i := range s.events {
		ev := &s.events[i]
		isAttack := ev.RequestID != "" && (ev.UserAgent == "curl/8.5" || ev.Device == "dev-attacker" || ev.UserAgent == "sqlmap/1.7" ||
			(ev.Route == "/v1/admin/export" && ev.Time.After(t0.Add(3*time.Hour-time.Second)) && ev.Time.Before(t0.Add(3*time.Hour+3*time.Minute))))
		if isAttack {
			ev.Time = ev.Time.Add(shift)
		}
	}
	slices.SortStableFunc(s.events, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	res := run(t, DefaultConfig(), nil, 1000, s.events)
	var got []attack
	for _, g := range incidentsOf(res.alerts) {
		got = append(got, attack{g[0].Detector, g[0].Key})
	}
	want := []attack{}
	for _, a := range s.attacks {
		if a.detector != NewCountry {
			want = append(want, a)
		}
	}
	sortAttacks(got)
	sortAttacks(want)
	if !slices.Equal(got, want) {
		t.Errorf("incidents %v, want exactly %v:\n%s", got, want, describe(res.alerts))
	}
}
