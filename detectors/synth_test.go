package detectors

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
)

// synthEvents renders generated requests as AWS WAF records and parses them back, as
// the pipeline reads them, and returns the events with the functions that give the
// client_key and token_fp of a raw API key and token under the same secret.
func synthEvents(t testing.TB, reqs []synth.Request) (events []ingest.Event, clientKey, tokenFP func(string) string) {
	t.Helper()
	secret, err := ingest.NewTokenSecret([]byte("scenario-secret-0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ingest.NewParser(ingest.FormatAWSWAF, ingest.ParserOptions{Secret: secret, Now: func() time.Time { return reqs[len(reqs)-1].Time }})
	if err != nil {
		t.Fatal(err)
	}
	parse := func(r *synth.Request) ingest.Event {
		line, err := synth.AppendRecord(nil, ingest.FormatAWSWAF, r)
		if err != nil {
			t.Fatal(err)
		}
		var ev ingest.Event
		if err := p.Parse(&ev, line); err != nil {
			t.Fatalf("%v\n%s", err, line)
		}
		return ev.Clone()
	}
	events = make([]ingest.Event, len(reqs))
	for i := range reqs {
		events[i] = parse(&reqs[i])
	}
	probe := func(apiKey, token string) ingest.Event {
		return parse(&synth.Request{Time: reqs[0].Time, ClientIP: "192.0.2.1", Method: "GET", Host: "api.example.com", Path: "/",
			Route: "/", Status: 200, Action: "ALLOW", APIKey: apiKey, Token: token, RequestID: "req-probe-0000000000000000"})
	}
	return events, func(k string) string { return probe(k, "").ClientKey }, func(tok string) string { return probe("", tok).TokenFP }
}

// TestScenarioDayAndAHalf runs thirty hours of generated traffic (a daily rhythm, and
// the decoys: an export job every half hour, a partner's bulk syncs, a batch client's
// hourly run, an admin console, expired-token retries, a NAT address, a deploy's 404s,
// an app polling a removed endpoint) through every detector with its default settings
// (new_country's learning period shortened to a day, so that it too can judge), every
// attack injected after the learning periods. Each attack raises exactly one incident,
// of its detector, on its key, while it goes on; nothing else raises any. Reordered
// within allowed lateness, the events raise the same alerts.
func TestScenarioDayAndAHalf(t *testing.T) {
	if testing.Short() {
		t.Skip("thirty hours of traffic")
	}
	start := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	reqs, injected, err := synth.Generate(synth.Config{Start: start, Duration: 30 * time.Hour, Rate: 4, Seed: 21,
		Attacks: synth.Attacks, AttacksFrom: 25 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	events, clientKey, tokenFP := synthEvents(t, reqs)
	cfg := DefaultConfig()
	cfg.NewCountry.LearningPeriod = 24 * time.Hour
	res := run(t, cfg, nil, 500, events)
	groups := incidentsOf(res.alerts)
	found := make([]bool, len(groups))
	for _, inj := range injected {
		key := inj.AlertKey(clientKey, tokenFP, sameRoute)
		n := 0
		for i, g := range groups {
			a := g[0]
			if a.Detector != inj.Kind || a.Key != key {
				continue
			}
			n++
			found[i] = true
			if a.FirstSeen.Before(inj.Start.Add(-10*time.Minute)) || a.FirstSeen.After(inj.End) {
				t.Errorf("%s on %s: incident from %s, the attack ran %s..%s", inj.Kind, key, a.FirstSeen, inj.Start, inj.End)
			}
		}
		if n != 1 {
			t.Errorf("%s on %s: %d incidents, want 1", inj.Kind, key, n)
		}
	}
	for i, g := range groups {
		if !found[i] {
			t.Errorf("an incident no attack explains:\n%s", describe(g[:1]))
		}
	}
	if t.Failed() {
		t.Logf("all alerts:\n%s", describe(res.alerts))
	}
	if late := counterValue(t, res.reg, "gatewatch_detectors_late_events_total"); late != 0 {
		t.Errorf("%v late events in an ordered input", late)
	}

	// Reordered within allowed lateness (30s): the same alerts, as a set.
	shuffled := run(t, cfg, nil, 333, jitter(events, 25*time.Second, 5))
	if late := counterValue(t, shuffled.reg, "gatewatch_detectors_late_events_total"); late != 0 {
		t.Fatalf("%v late events: the jitter exceeds allowed lateness", late)
	}
	if got, want := sortedLines(alertsJSON(t, shuffled.alerts)), sortedLines(alertsJSON(t, res.alerts)); got != want {
		t.Errorf("reordered input gave other alerts:\n%s", lineDiff(want, got))
	}
	// Every detector saw the attack it exists for.
	var kinds []string
	for _, g := range groups {
		kinds = append(kinds, g[0].Detector)
	}
	slices.Sort(kinds)
	if want := slices.Sorted(slices.Values(Names)); !slices.Equal(kinds, want) {
		t.Errorf("incidents of %v, want one of each of %v", kinds, fmt.Sprint(want))
	}
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

// twoHourConfig is the detectors section of cmd/gatewatch's end-to-end tests: two hours
// of traffic, so the learning periods are half an hour.
func twoHourConfig() Config {
	cfg := DefaultConfig()
	cfg.AllowedLateness = 30 * time.Second
	cfg.NewCountry.LearningPeriod, cfg.NewCountry.MinEvents = 30*time.Minute, 20
	cfg.QuietEndpointSpike.LearningPeriod = 30 * time.Minute
	cfg.ObjectEnumeration.LearningPeriod = 30 * time.Minute
	cfg.PrivilegeAnomaly.LearningPeriod = 30 * time.Minute
	cfg.ClientVolumeSpike.LearningPeriod = 30 * time.Minute
	return cfg
}

// TestTwoHoursAtAnyHour: the end-to-end tests run two hours of traffic ending at the
// wall clock, so they see every hour of the day's rhythm and a different draw each
// time. Across the day and ten seeds, every attack raises its incident and nothing
// else raises any: an extra incident in those tests is a bug, not bad luck.
func TestTwoHoursAtAnyHour(t *testing.T) {
	if testing.Short() {
		t.Skip("twenty-four runs of two hours of traffic")
	}
	cfg := twoHourConfig()
	for k := range 24 {
		start := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC).Add(time.Duration(k) * 61 * time.Minute)
		seed := uint64(20 + k%10)
		reqs, injected, err := synth.Generate(synth.Config{Start: start, Duration: 2 * time.Hour, Rate: 3, Seed: seed, Attacks: synth.Attacks})
		if err != nil {
			t.Fatal(err)
		}
		events, clientKey, tokenFP := synthEvents(t, reqs)
		want := map[string]bool{}
		for _, inj := range injected {
			want[inj.Kind+" "+inj.AlertKey(clientKey, tokenFP, sameRoute)] = true
		}
		got := map[string]bool{}
		for _, g := range incidentsOf(run(t, cfg, nil, 500, events).alerts) {
			k := g[0].Detector + " " + g[0].Key
			if !want[k] || got[k] {
				t.Errorf("from %s, seed %d: an incident no attack explains:\n%s", start.Format("15:04"), seed, describe(g[len(g)-1:]))
			}
			got[k] = true
		}
		for k := range want {
			if !got[k] {
				t.Errorf("from %s, seed %d: no incident for %s", start.Format("15:04"), seed, k)
			}
		}
	}
}

// TestPartitionsInterleaved: two hours of traffic spread over four partitions, read
// side by side as a consumer group would (each partition running up to 100s of event
// time ahead of the others, in batches of any size), raise the alerts the same traffic
// raises read in order from one stream.
func TestPartitionsInterleaved(t *testing.T) {
	if testing.Short() {
		t.Skip("two hours of traffic, six times")
	}
	reqs, _, err := synth.Generate(synth.Config{Start: time.Date(2026, 12, 6, 6, 40, 0, 0, time.UTC), Duration: 2 * time.Hour,
		Rate: 3, Seed: 29, Attacks: synth.Attacks})
	if err != nil {
		t.Fatal(err)
	}
	events, _, _ := synthEvents(t, reqs)
	cfg := twoHourConfig()
	inOrder, _, _ := runBatches(t, cfg, nil, interleave(500, partRun{partA, events}))
	want := sortedLines(alertsJSON(t, inOrder))
	const parts = 4
	for seed := uint64(1); seed <= 6; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		var skew [parts]time.Duration
		var pos [parts]int
		var batches []*ingest.Batch
		b := &ingest.Batch{}
		for p := range parts {
			b.Opened = append(b.Opened, ingest.Partition{Source: "waf-logs", ID: int32(p)})
		}
		for size := 1 + rng.IntN(700); ; {
			// The partition whose next event, delayed by its reader's current lag, comes first.
			next := -1
			var nextAt time.Time
			for p := range parts {
				i := pos[p]*parts + p
				if i >= len(events) {
					continue
				}
				if rng.IntN(50) == 0 {
					skew[p] = time.Duration(rng.Int64N(int64(100 * time.Second)))
				}
				if at := events[i].Time.Add(skew[p]); next < 0 || at.Before(nextAt) {
					next, nextAt = p, at
				}
			}
			if next < 0 {
				break
			}
			b.Events = append(b.Events, events[pos[next]*parts+next])
			pos[next]++
			if r := len(b.Runs) - 1; r >= 0 && b.Runs[r].Partition.ID == int32(next) {
				b.Runs[r].N++
			} else {
				b.Runs = append(b.Runs, ingest.Run{Partition: ingest.Partition{Source: "waf-logs", ID: int32(next)}, N: 1})
			}
			if len(b.Events) == size {
				batches, b, size = append(batches, b), &ingest.Batch{}, 1+rng.IntN(700)
			}
		}
		alerts, _, reg := runBatches(t, cfg, nil, append(batches, b))
		if late := counterValue(t, reg, "gatewatch_detectors_late_events_total"); late != 0 {
			t.Errorf("seed %d: %v late events", seed, late)
		}
		if got := sortedLines(alertsJSON(t, alerts)); got != want {
			t.Errorf("seed %d: interleaved, other alerts than in order:\n%s", seed, lineDiff(want, got))
		}
	}
}

// sameRoute is AlertKey's route for records whose parser keeps the route template.
func sameRoute(methodRoute string) string { return methodRoute }
