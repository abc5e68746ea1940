package detectors

import (
	"slices"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// from is a request of client key k from country cc.
func from(k, cc string, ts time.Time, opts ...func(*ingest.Event)) ingest.Event {
	return req(ts, append([]func(*ingest.Event){client(k), country(cc), ip("192.0.2.1")}, opts...)...)
}

// known is a snapshot in which key k was first seen firstAgo before t0, with events
// events, from the countries given (each last seen an hour before t0).
func known(k string, firstAgo time.Duration, events uint64, countries ...string) *Baselines {
	kb := KeyBaseline{Key: k, FirstSeen: t0.Add(-firstAgo), Events: events}
	for _, c := range countries {
		kb.Countries = append(kb.Countries, CountryBaseline{Country: c, FirstSeen: t0.Add(-firstAgo), LastSeen: t0.Add(-time.Hour), Events: events})
	}
	return &Baselines{Keys: []KeyBaseline{kb}}
}

func TestNewCountry(t *testing.T) {
	month := 30 * 24 * time.Hour
	week := 7 * 24 * time.Hour
	type want struct {
		incidents int
		countries []string // new countries of the first incident, final version
		severity  Severity
	}
	for _, tc := range []struct {
		name   string
		cfg    func(*Config)
		snap   *Baselines
		events []ingest.Event
		want   want
	}{
		{"new country", nil, known("p", month, 100, "DE"), []ingest.Event{from("p", "FR", t0)},
			want{1, []string{"FR"}, SeverityHigh}},
		{"known country", nil, known("p", month, 100, "DE"), []ingest.Event{from("p", "DE", t0)}, want{}},
		{"country last seen beyond history", nil, &Baselines{Keys: []KeyBaseline{{
			Key: "p", FirstSeen: t0.Add(-2 * month), Events: 100,
			Countries: []CountryBaseline{{Country: "DE", LastSeen: t0.Add(-month)}, {Country: "FR", LastSeen: t0.Add(-31 * 24 * time.Hour)}},
		}}}, []ingest.Event{from("p", "FR", t0)}, want{1, []string{"FR"}, SeverityHigh}},
		{"established exactly at the learning period", nil, known("p", week, 100, "DE"), []ingest.Event{from("p", "FR", t0)},
			want{1, []string{"FR"}, SeverityHigh}},
		{"one millisecond short of the learning period", nil, known("p", week-time.Millisecond, 100, "DE"), []ingest.Event{from("p", "FR", t0)}, want{}},
		{"at min_events", nil, known("p", month, 20, "DE"), []ingest.Event{from("p", "FR", t0)}, want{1, []string{"FR"}, SeverityHigh}},
		{"below min_events", nil, known("p", month, 19, "DE"), []ingest.Event{from("p", "FR", t0)}, want{}},
		{"events in earlier slots count", nil, known("p", month, 19, "DE"), []ingest.Event{from("p", "DE", at(-time.Minute)), from("p", "FR", t0)},
			want{1, []string{"FR"}, SeverityHigh}},
		{"events in the new country's slot do not", nil, known("p", month, 19, "DE"), []ingest.Event{from("p", "DE", at(time.Second)), from("p", "FR", t0)}, want{}},
		{"new key learns silently", nil, nil, []ingest.Event{from("p", "DE", t0), from("p", "FR", at(time.Minute))}, want{}},
		{"a country learned while young stays known", func(c *Config) {
			c.NewCountry.LearningPeriod, c.NewCountry.MinEvents = time.Hour, 2
		}, nil, []ingest.Event{
			from("p", "DE", t0), from("p", "FR", at(time.Minute)), from("p", "DE", at(30*time.Minute)),
			from("p", "FR", at(2*time.Hour)), from("p", "BR", at(3*time.Hour)),
		}, want{1, []string{"BR"}, SeverityHigh}},
		{"allowlisted country", func(c *Config) {
			c.NewCountry.Allowlist = []CountryAllow{{Key: "p", Countries: []string{"FR"}}}
		}, known("p", month, 100, "DE"), []ingest.Event{from("p", "FR", t0), from("p", "BR", at(2*time.Hour))},
			want{1, []string{"BR"}, SeverityHigh}},
		{"override raises min_events", func(c *Config) {
			n := 1000
			c.NewCountry.Overrides = []NewCountryOverride{{Override: Override{Key: "p"}, MinEvents: &n}}
		}, known("p", month, 100, "DE"), []ingest.Event{from("p", "FR", t0)}, want{}},
		{"route prefix ignored", func(c *Config) {
			f := false
			c.NewCountry.Overrides = []NewCountryOverride{{Override: Override{RoutePrefix: "/v1/items", Enabled: &f}}}
		}, known("p", month, 100, "DE"), []ingest.Event{from("p", "FR", t0)}, want{}},
		{"empty country and empty key are skipped", nil, known("p", month, 100, "DE"), []ingest.Event{from("p", "", t0), from("", "FR", t0)}, want{}},
		{"two new countries within an hour escalate", nil, known("p", month, 100, "DE"), []ingest.Event{
			from("p", "FR", t0), from("p", "FR", at(time.Minute)), from("p", "BR", at(50*time.Minute)),
		}, want{1, []string{"FR", "BR"}, SeverityCritical}},
		{"two new countries two hours apart", nil, known("p", month, 100, "DE"), []ingest.Event{
			from("p", "FR", t0), from("p", "BR", at(2*time.Hour)),
		}, want{2, []string{"FR"}, SeverityHigh}},
		{"out of order within allowed lateness", nil, known("p", month, 100, "DE"), []ingest.Event{
			from("p", "FR", at(20*time.Second)), from("p", "FR", at(10*time.Second)),
		}, want{1, []string{"FR"}, SeverityHigh}},
		{"beyond allowed lateness still checked", nil, known("p", month, 100, "DE"), []ingest.Event{
			from("q", "DE", at(5*time.Minute)), from("p", "FR", t0),
		}, want{1, []string{"FR"}, SeverityHigh}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := only(NewCountry)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			for _, batch := range []int{0, 1} {
				res := run(t, cfg, tc.snap, batch, tc.events)
				groups := incidentsOf(res.alerts)
				if len(groups) != tc.want.incidents {
					t.Fatalf("batch %d: %d incidents, want %d:\n%s", batch, len(groups), tc.want.incidents, describe(res.alerts))
				}
				if tc.want.incidents == 0 {
					continue
				}
				a := final(groups[0])
				var got []string
				for _, c := range a.Evidence.NewCountries {
					got = append(got, c.Country)
				}
				if !slices.Equal(got, tc.want.countries) || a.Severity != tc.want.severity || a.Evidence.NewCountry != tc.want.countries[0] {
					t.Errorf("batch %d: new countries %v severity %s, want %v %s:\n%s", batch, got, a.Severity, tc.want.countries, tc.want.severity, describe(groups[0]))
				}
			}
		})
	}
}

func TestNewCountryEvidence(t *testing.T) {
	snap := known("partner-123", 30*24*time.Hour, 100, "DE", "US")
	events := []ingest.Event{
		from("partner-123", "FR", at(2*time.Second), ip("203.0.113.5"), path("/v1/orders"), reqID("r-2")),
		from("partner-123", "FR", at(time.Second), ip("203.0.113.4"), path("/v1/users"), reqID("r-1")),
		from("partner-123", "DE", at(-time.Minute)),
	}
	res := run(t, only(NewCountry), snap, 0, events)
	if len(res.alerts) != 1 {
		t.Fatalf("alerts:\n%s", describe(res.alerts))
	}
	a := res.alerts[0]
	ev := a.Evidence
	if a.Key != "partner-123" || !a.FirstSeen.Equal(at(time.Second)) || !a.LastSeen.Equal(at(time.Second)) ||
		a.ID != AlertID(NewCountry, "partner-123", at(time.Second)) {
		t.Errorf("alert %s %s..%s id %s", a.Key, a.FirstSeen, a.LastSeen, a.ID)
	}
	if !slices.Equal(ev.KnownCountries, []string{"DE", "US"}) || ev.KeyEvents != 101 || ev.KeyFirstSeen != "2026-01-31T10:00:00.000Z" {
		t.Errorf("evidence %+v", ev)
	}
	// Samples are the events at the earliest time from the new country.
	if !slices.Equal(ev.SamplePaths, []string{"/v1/users"}) || !slices.Equal(ev.ClientIPs, []string{"203.0.113.4"}) ||
		!slices.Equal(ev.SampleRequestIDs, []string{"r-1"}) {
		t.Errorf("samples %v %v %v", ev.SamplePaths, ev.ClientIPs, ev.SampleRequestIDs)
	}
	want := "Client key partner-123 was used from FR, a country not seen for it within 720h0m0s (known: DE, US)."
	if a.Summary != want {
		t.Errorf("summary %q, want %q", a.Summary, want)
	}
	if err := res.engine.SyncBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, _ := res.engine.store.LoadBaselines(t.Context(), AllBaselines)
	if len(b.Keys) != 1 || len(b.Keys[0].Countries) != 3 || b.Keys[0].Events != 103 || b.Keys[0].Countries[1].Country != "FR" ||
		b.Keys[0].Countries[1].Events != 2 || !b.Keys[0].Countries[1].LastSeen.Equal(at(2*time.Second)) {
		t.Errorf("baseline after sync %+v", b.Keys)
	}
}

func TestNewCountryEscalationEvidence(t *testing.T) {
	res := run(t, only(NewCountry), known("p", 30*24*time.Hour, 100, "DE"), 0, []ingest.Event{
		from("p", "FR", t0), from("p", "BR", at(10*time.Minute)), from("p", "NG", at(20*time.Minute)),
	})
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 || len(groups[0]) != 3 {
		t.Fatalf("alerts:\n%s\nwant one incident in three versions", describe(res.alerts))
	}
	sev := []Severity{SeverityHigh, SeverityCritical, SeverityCritical}
	for i, a := range groups[0] {
		if a.Severity != sev[i] || len(a.Evidence.NewCountries) != i+1 {
			t.Errorf("version %d: %s with %d new countries, want %s with %d", i, a.Severity, len(a.Evidence.NewCountries), sev[i], i+1)
		}
	}
	f := final(groups[0])
	if !f.FirstSeen.Equal(t0) || !f.LastSeen.Equal(at(20*time.Minute)) ||
		f.Summary != "Client key p was used from 3 new countries within an hour: FR, BR, NG (known: DE)." {
		t.Errorf("final %s..%s %q", f.FirstSeen, f.LastSeen, f.Summary)
	}
}
