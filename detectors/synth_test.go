package detectors

import (
	"fmt"
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
		return cloneEv(ev)
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

// cloneEv gives an event strings of its own: a parser's point into its buffers.
func cloneEv(ev ingest.Event) ingest.Event {
	for _, f := range []*string{&ev.Source, &ev.ClientKey, &ev.TokenFP, &ev.Device, &ev.ClientIP, &ev.Country, &ev.Method,
		&ev.Host, &ev.Route, &ev.Path, &ev.Action, &ev.RuleID, &ev.UserAgent, &ev.RequestID} {
		*f = strings.Clone(*f)
	}
	return ev
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
		key := inj.AlertKey(clientKey, tokenFP)
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
