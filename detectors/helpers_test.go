package detectors

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

// t0 is a whole hour, so that every detector's buckets start on it.
var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

// at returns t0 plus d.
func at(d time.Duration) time.Time { return t0.Add(d) }

// only returns the default config with every detector but those named disabled.
func only(names ...string) Config {
	c := DefaultConfig()
	for _, e := range c.enabled() {
		*e.on = slices.Contains(names, e.name)
	}
	return c
}

// req is a request event; options fill the rest.
func req(ts time.Time, opts ...func(*ingest.Event)) ingest.Event {
	ev := ingest.Event{
		Time: ts, Source: "envoy", Method: "GET", Host: "api.example.com",
		Route: "/v1/items/{id}", Path: "/v1/items/1", Status: 200,
	}
	for _, o := range opts {
		o(&ev)
	}
	return ev
}

func client(key string) func(*ingest.Event) { return func(e *ingest.Event) { e.ClientKey = key } }
func ip(a string) func(*ingest.Event)       { return func(e *ingest.Event) { e.ClientIP = a } }
func status(s int) func(*ingest.Event)      { return func(e *ingest.Event) { e.Status = s } }
func country(c string) func(*ingest.Event)  { return func(e *ingest.Event) { e.Country = c } }
func device(d string) func(*ingest.Event)   { return func(e *ingest.Event) { e.Device = d } }
func token(t string) func(*ingest.Event)    { return func(e *ingest.Event) { e.TokenFP = t } }
func reqID(id string) func(*ingest.Event)   { return func(e *ingest.Event) { e.RequestID = id } }
func path(p string) func(*ingest.Event)     { return func(e *ingest.Event) { e.Path = p } }
func route(m, r string) func(*ingest.Event) {
	return func(e *ingest.Event) { e.Method, e.Route, e.Path = m, r, r }
}

// repeat returns n events, one every step from start, each built by mk.
func repeat(n int, start time.Time, step time.Duration, mk func(i int, ts time.Time) ingest.Event) []ingest.Event {
	out := make([]ingest.Event, n)
	for i := range out {
		out[i] = mk(i, start.Add(time.Duration(i)*step))
	}
	return out
}

func concat(parts ...[]ingest.Event) []ingest.Event {
	var out []ingest.Event
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// result is what one engine run produced.
type result struct {
	alerts []Alert
	engine *Engine
	reg    *prometheus.Registry
}

// run feeds events to a new engine in batches of batch (all at once when 0), flushes,
// and returns every alert in order.
func run(t testing.TB, cfg Config, snap *Baselines, batch int, events []ingest.Event) result {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	opts := Options{Registerer: reg, RunbookBaseURL: "https://runbooks.example.com/gatewatch"}
	if snap != nil {
		opts.Baselines = NewMemoryBaselines(*snap, AllBaselines)
	}
	e, err := NewEngine(cfg, opts)
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	if err := e.LoadBaselines(context.Background()); err != nil {
		t.Fatal(err)
	}
	if batch <= 0 {
		batch = max(len(events), 1)
	}
	var alerts []Alert
	for i := 0; i < len(events); i += batch {
		alerts = append(alerts, e.Observe(events[i:min(i+batch, len(events))])...)
	}
	alerts = append(alerts, e.Flush()...)
	return result{alerts: alerts, engine: e, reg: reg}
}

// incidents groups alerts by id, in order of first appearance; each group's last
// alert is the incident's final state.
func incidentsOf(alerts []Alert) [][]Alert {
	idx := map[string]int{}
	var out [][]Alert
	for _, a := range alerts {
		i, ok := idx[a.ID]
		if !ok {
			i = len(out)
			idx[a.ID] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], a)
	}
	return out
}

func final(group []Alert) Alert { return group[len(group)-1] }

func alertsJSON(t testing.TB, alerts []Alert) string {
	t.Helper()
	var b strings.Builder
	for _, a := range alerts {
		j, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0 // over every series with the labels asked for
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := true
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				match = match && found
			}
			if !match {
				continue
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func describe(alerts []Alert) string {
	var b strings.Builder
	for _, a := range alerts {
		fmt.Fprintf(&b, "  %s %s %s %s..%s %s\n", a.ID[:8], a.Detector, a.Key,
			a.FirstSeen.Format("15:04:05.000"), a.LastSeen.Format("15:04:05.000"), a.Summary)
	}
	return b.String()
}

// enabled returns, per detector, its name and its enabled setting.
func (c *Config) enabled() []struct {
	name string
	on   *bool
} {
	return []struct {
		name string
		on   *bool
	}{
		{NewCountry, &c.NewCountry.Enabled}, {TokenReuse, &c.TokenReuse.Enabled},
		{ForbiddenBurst, &c.ForbiddenBurst.Enabled}, {QuietEndpointSpike, &c.QuietEndpointSpike.Enabled},
		{ObjectEnumeration, &c.ObjectEnumeration.Enabled}, {AuthFailureSpray, &c.AuthFailureSpray.Enabled},
		{PrivilegeAnomaly, &c.PrivilegeAnomaly.Enabled}, {ClientVolumeSpike, &c.ClientVolumeSpike.Enabled},
		{RouteScan, &c.RouteScan.Enabled},
	}
}

// An edgeCase is one row of a detector's edge table: events (followed by one far
// later, so that every window closes), and what they must raise.
type edgeCase struct {
	name      string
	cfg       func(*Config)
	snap      *Baselines
	events    []ingest.Event
	incidents int
	key       string                      // of the first incident
	check     func(t *testing.T, a Alert) // the first incident's first alert
}

// runEdges runs each case through detector det alone, in one batch, in batches of one
// and of seven: the alerts must not depend on how the events are batched.
func runEdges(t *testing.T, det string, cases []edgeCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := only(det)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			var first string
			for _, batch := range []int{0, 1, 7} {
				res := run(t, cfg, tc.snap, batch, concat(tc.events, tail(6*time.Hour)))
				got := alertsJSON(t, res.alerts)
				if batch == 0 {
					first = got
				} else if got != first {
					t.Errorf("batches of %d raised other alerts than one batch:\n%s\nwant\n%s", batch, got, first)
				}
				groups := incidentsOf(res.alerts)
				if len(groups) != tc.incidents {
					t.Fatalf("batch %d: %d incidents, want %d:\n%s", batch, len(groups), tc.incidents, describe(res.alerts))
				}
				if tc.incidents == 0 {
					continue
				}
				a := groups[0][0]
				if a.Detector != det || a.Key != tc.key || a.ID != AlertID(det, a.Key, a.FirstSeen) ||
					a.RunbookURL != "https://runbooks.example.com/gatewatch/"+det+".md" || a.Summary == "" ||
					a.LastSeen.Before(a.FirstSeen) {
					t.Errorf("batch %d: alert %+v, want one for %s", batch, a, tc.key)
				}
				if tc.check != nil && batch == 0 {
					tc.check(t, a)
				}
			}
		})
	}
}

// established is a snapshot in which the detectors have seen a month of traffic.
func established() *Baselines { return &Baselines{TrafficSince: t0.Add(-30 * 24 * time.Hour)} }

// inOrder returns events sorted by time (stably), as one partition delivers them.
func inOrder(parts ...[]ingest.Event) []ingest.Event {
	out := concat(parts...)
	slices.SortStableFunc(out, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	return out
}

// commons returns every detector's common settings.
func (c *Config) commons() []*Common {
	return []*Common{&c.NewCountry.Common, &c.TokenReuse.Common, &c.ForbiddenBurst.Common, &c.QuietEndpointSpike.Common,
		&c.ObjectEnumeration.Common, &c.AuthFailureSpray.Common, &c.PrivilegeAnomaly.Common, &c.ClientVolumeSpike.Common,
		&c.RouteScan.Common}
}
