package detectors

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
)

// countingStore counts the loads of the store it wraps, and the partial ones among
// them; with whole, it hides what the store can tell of its changes (BaselineChanges),
// so that every load is whole.
type countingStore struct {
	BaselineStore
	whole          bool
	loads, partial atomic.Int64
}

func (c *countingStore) LoadBaselines(ctx context.Context, lim BaselineLimits) (Baselines, error) {
	c.loads.Add(1)
	return c.BaselineStore.LoadBaselines(ctx, lim)
}

func (c *countingStore) LoadBaselinesSince(ctx context.Context, lim BaselineLimits, since uint64) (Baselines, uint64, error) {
	bc, ok := c.BaselineStore.(BaselineChanges)
	if c.whole || !ok {
		b, err := c.LoadBaselines(ctx, lim)
		return b, 0, err
	}
	c.loads.Add(1)
	if since != 0 {
		c.partial.Add(1)
	}
	return bc.LoadBaselinesSince(ctx, lim, since)
}

// hookSource is a sliceSource that runs before[i], when set, before it hands out batch i.
type hookSource struct {
	sliceSource
	before map[int]func()
	n      int
}

func (h *hookSource) Next(ctx context.Context) (*ingest.Batch, error) {
	if f := h.before[h.n]; f != nil {
		f()
	}
	h.n++
	return h.sliceSource.Next(ctx)
}

func batchesOf(parts ...[]ingest.Event) []*ingest.Batch {
	var out []*ingest.Batch
	for _, p := range parts {
		out = append(out, ingest.NewBatch(p, nil))
	}
	return out
}

// engineState describes every baseline the engine holds, sorted, to compare states.
func engineState(e *Engine) string {
	var lines []string
	for _, d := range e.dets {
		switch d := d.(type) {
		case *volumeSpike:
			for slot := range d.tab.ents {
				if d.tab.ents[slot].live {
					lines = append(lines, fmt.Sprintf("client %+v", d.baseline(int32(slot))))
				}
			}
		case *objectEnum:
			for slot := range d.tab.ents {
				if d.tab.ents[slot].live && d.tab.ents[slot].s.names != nil {
					lines = append(lines, fmt.Sprintf("object %+v", d.baseline(int32(slot))))
				}
			}
		case *privilegeAnomaly:
			for slot := range d.tab.ents {
				if d.tab.ents[slot].live {
					lines = append(lines, fmt.Sprintf("privileged %+v", d.baseline(int32(slot))))
				}
			}
		}
	}
	if d := e.nc; d != nil {
		for slot := range d.tab.ents {
			if d.tab.ents[slot].live {
				k := &d.tab.ents[slot].s
				lines = append(lines, fmt.Sprintf("key %+v settled=%d", d.baseline(int32(slot)), k.settled))
			}
		}
	}
	if d := e.qs; d != nil {
		lines = append(lines, fmt.Sprintf("since %d", d.since.since))
		for slot := range d.tab.ents {
			if d.tab.ents[slot].live {
				lines = append(lines, fmt.Sprintf("route %+v", d.baseline(int32(slot))))
			}
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestRefreshAdoptsOtherInstancesBaselines: after a rebalance, another instance of the
// consumer group wrote what it learned about two keys. Once the watermark has moved
// baseline_refresh past the last load, this engine reloads the store: k-stale, which
// it tracked with an old baseline, learns the country the other instance saw, and
// k-moved, which it never saw, is adopted, established, with that instance's countries.
func TestRefreshAdoptsOtherInstancesBaselines(t *testing.T) {
	month := 30 * 24 * time.Hour
	other := Baselines{Keys: []KeyBaseline{
		{Key: "k-moved", FirstSeen: t0.Add(-month), Events: 200, Countries: []CountryBaseline{
			{Country: "DE", FirstSeen: t0.Add(-month), LastSeen: t0.Add(-time.Hour), Events: 150},
			{Country: "FR", FirstSeen: t0.Add(-20 * 24 * time.Hour), LastSeen: t0.Add(2 * time.Minute), Events: 50},
		}},
		{Key: "k-stale", FirstSeen: t0.Add(-month), Events: 150, Countries: []CountryBaseline{
			{Country: "DE", FirstSeen: t0.Add(-month), LastSeen: t0.Add(-time.Hour), Events: 100},
			{Country: "FR", FirstSeen: t0.Add(-20 * 24 * time.Hour), LastSeen: t0.Add(2 * time.Minute), Events: 50},
		}},
	}}
	runWith := func(t *testing.T, refresh time.Duration) ([]Alert, *MemoryBaselines, int64) {
		cfg := only(NewCountry)
		cfg.BaselineRefresh = refresh
		mem := NewMemoryBaselines(*known("k-stale", month, 100, "DE"), AllBaselines)
		store := &countingStore{BaselineStore: mem}
		e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry(), Baselines: store})
		if err != nil {
			t.Fatal(err)
		}
		src := &hookSource{
			sliceSource: sliceSource{batches: batchesOf(
				[]ingest.Event{from("f", "DE", t0), from("f", "DE", at(time.Minute))},
				[]ingest.Event{from("f", "DE", at(7*time.Minute))},
				[]ingest.Event{
					from("k-stale", "FR", at(8*time.Minute)),
					from("k-moved", "FR", at(8*time.Minute)),
					from("k-moved", "JP", at(8*time.Minute+time.Second)),
					from("f", "DE", at(10*time.Minute)),
				},
			)},
			// The other instance writes after this engine's first load.
			before: map[int]func(){1: func() {
				if err := mem.UpdateBaselines(t.Context(), other); err != nil {
					t.Fatal(err)
				}
			}},
		}
		sink := &recordingSink{}
		if err := e.Run(t.Context(), src, sink); err != nil {
			t.Fatal(err)
		}
		return sink.alerts, mem, store.loads.Load()
	}
	keyCountries := func(alerts []Alert) []string {
		var out []string
		for _, a := range alerts {
			out = append(out, a.Key+" "+a.Evidence.NewCountry)
		}
		return slices.Compact(out)
	}

	t.Run("refresh", func(t *testing.T) {
		alerts, mem, loads := runWith(t, 5*time.Minute)
		// FR is known for both keys; JP is new for k-moved, which the other instance
		// established.
		if got, want := keyCountries(alerts), []string{"k-moved JP"}; !slices.Equal(got, want) {
			t.Errorf("alerts %v, want %v:\n%s", got, want, describe(alerts))
		}
		if loads != 2 {
			t.Errorf("%d loads, want 2: at start and once the watermark passed 5m", loads)
		}
		b, _ := mem.LoadBaselines(t.Context(), AllBaselines)
		for _, kb := range b.Keys {
			if kb.Key == "k-stale" && (len(kb.Countries) != 2 || kb.Events < 151) {
				t.Errorf("k-stale written back as %+v, want DE and FR and at least 151 events", kb)
			}
		}
	})
	t.Run("no refresh", func(t *testing.T) {
		alerts, _, loads := runWith(t, 0)
		// k-stale is judged against its stale baseline; k-moved is a stranger, not yet
		// established, so it raises nothing.
		if got, want := keyCountries(alerts), []string{"k-stale FR"}; !slices.Equal(got, want) {
			t.Errorf("alerts %v, want %v:\n%s", got, want, describe(alerts))
		}
		if loads != 1 {
			t.Errorf("%d loads with baseline_refresh 0, want 1", loads)
		}
	})
}

func TestRefreshMergeIsIdempotent(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NewCountry.LearningPeriod = 0
	cfg.NewCountry.MinEvents = 0
	mem := NewMemoryBaselines(Baselines{}, AllBaselines)
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry(), Baselines: mem})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.Observe(repeat(30, t0, time.Minute, func(i int, ts time.Time) ingest.Event {
		return from("k", "DE", ts, route("GET", "/v1/a"))
	}))
	// Another instance's snapshot: more about k, a key and a route this engine lacks,
	// and an earlier start of traffic.
	if err := mem.UpdateBaselines(t.Context(), Baselines{
		TrafficSince: t0.Add(-48 * time.Hour),
		Keys: []KeyBaseline{
			{Key: "k", FirstSeen: t0.Add(-10 * 24 * time.Hour), Events: 500, Countries: []CountryBaseline{
				{Country: "DE", FirstSeen: t0.Add(-10 * 24 * time.Hour), LastSeen: t0.Add(-time.Hour), Events: 400},
				{Country: "FR", FirstSeen: t0.Add(-9 * 24 * time.Hour), LastSeen: t0.Add(10 * time.Minute), Events: 100},
				{Country: "US", FirstSeen: t0.Add(-90 * 24 * time.Hour), LastSeen: t0.Add(-80 * 24 * time.Hour), Events: 7}, // outside history
			}},
			{Key: "x", FirstSeen: t0.Add(-24 * time.Hour), Events: 3, Countries: []CountryBaseline{
				{Country: "SE", FirstSeen: t0.Add(-24 * time.Hour), LastSeen: t0, Events: 3},
			}},
		},
		Routes: []RouteBaseline{{Route: "GET /v1/b", RatePerMinute: 4, AsOf: t0}},
	}); err != nil {
		t.Fatal(err)
	}
	before := engineState(e)
	if err := e.RefreshBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	once := engineState(e)
	for _, want := range []string{"Key:k FirstSeen:2026-02-20", "Events:500", "Country:FR", "Key:x ", "Route:GET /v1/b", "since " + fmt.Sprint(t0.Add(-48*time.Hour).UnixMilli())} {
		if !strings.Contains(once, want) {
			t.Errorf("after one refresh, state lacks %q:\n%s", want, once)
		}
	}
	if strings.Contains(once, "Country:US") {
		t.Errorf("a country outside history was merged:\n%s", once)
	}
	if once == before {
		t.Fatal("the refresh changed nothing")
	}
	if err := e.SyncBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	updates := mem.Updates()
	if err := e.RefreshBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	if twice := engineState(e); twice != once {
		t.Errorf("merging the same snapshot again changed the state:\n%s\nthen\n%s", once, twice)
	}
	if err := e.SyncBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	if mem.Updates() != updates {
		t.Errorf("the second refresh left keys to write")
	}
}

// TestRefreshOfOwnWritesChangesNothing runs the scenario through Run with a store that
// holds only the snapshot and what this engine writes: refreshing every minute of event
// time raises the same alerts, byte for byte, and ends in the same state as never
// refreshing, which loads once.
func TestRefreshOfOwnWritesChangesNothing(t *testing.T) {
	s := genScenario(5, 2, true)
	runWith := func(refresh time.Duration, whole bool) (string, string, *countingStore, int) {
		cfg := DefaultConfig()
		cfg.BaselineRefresh = refresh
		mem := NewMemoryBaselines(s.snap, AllBaselines)
		store := &countingStore{BaselineStore: mem, whole: whole}
		e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry(), Baselines: store})
		if err != nil {
			t.Fatal(err)
		}
		var bs []*ingest.Batch
		for i := 0; i < len(s.events); i += 200 {
			bs = append(bs, ingest.NewBatch(s.events[i:min(i+200, len(s.events))], nil))
		}
		sink := &recordingSink{}
		if err := e.Run(t.Context(), &sliceSource{batches: bs}, sink); err != nil {
			t.Fatal(err)
		}
		return alertsJSON(t, sink.alerts), engineState(e), store, mem.Updates()
	}
	offAlerts, offState, off, offUpdates := runWith(0, false)
	if offAlerts == "" {
		t.Fatal("no alerts")
	}
	if n := off.loads.Load(); n != 1 {
		t.Errorf("baseline_refresh 0: %d loads, want 1", n)
	}
	for _, tc := range []struct {
		name  string
		whole bool
	}{{"whole loads", true}, {"loads of the changes", false}} {
		t.Run(tc.name, func(t *testing.T) {
			onAlerts, onState, on, onUpdates := runWith(time.Minute, tc.whole)
			if onAlerts != offAlerts {
				t.Errorf("refreshing changed the alerts:\n%s\nwant\n%s", onAlerts, offAlerts)
			}
			if onState != offState {
				t.Errorf("refreshing changed the final state")
			}
			if onUpdates != offUpdates {
				t.Errorf("%d baseline writes with refreshes, %d without: a refresh dirtied keys", onUpdates, offUpdates)
			}
			if n := on.loads.Load(); n < 30 {
				t.Errorf("baseline_refresh 1m over two hours: %d loads, want over 30", n)
			}
			if n, want := on.partial.Load(), on.loads.Load()-1; !tc.whole && n != want {
				t.Errorf("%d partial loads, want %d: every one but the first", n, want)
			}
		})
	}
}

func TestRefreshFailureKeepsRunning(t *testing.T) {
	boom := errors.New("boom")
	fs := &flakyStore{MemoryBaselines: NewMemoryBaselines(Baselines{}, AllBaselines)}
	cfg := only(ForbiddenBurst)
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry(), Baselines: fs})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	fs.err = boom
	if err := e.RefreshBaselines(t.Context()); !errors.Is(err, boom) {
		t.Errorf("RefreshBaselines = %v, want it to wrap %v", err, boom)
	}
	sink := &recordingSink{}
	src := &sliceSource{batches: batchesOf(forbidden("a", 30, t0, time.Second), forbidden("a", 30, at(10*time.Minute), time.Second))}
	if err := e.Run(t.Context(), src, sink); err != nil {
		t.Errorf("Run = %v: a failed refresh must not stop it", err)
	}
	if len(sink.alerts) == 0 {
		t.Error("no alerts")
	}
}

type flakyStore struct {
	*MemoryBaselines
	err error
}

func (f *flakyStore) LoadBaselines(ctx context.Context, lim BaselineLimits) (Baselines, error) {
	if f.err != nil {
		return Baselines{}, f.err
	}
	return f.MemoryBaselines.LoadBaselines(ctx, lim)
}

func (f *flakyStore) LoadBaselinesSince(ctx context.Context, lim BaselineLimits, since uint64) (Baselines, uint64, error) {
	if f.err != nil {
		return Baselines{}, 0, f.err
	}
	return f.MemoryBaselines.LoadBaselinesSince(ctx, lim, since)
}

func TestConfigBaselineRefresh(t *testing.T) {
	if d := DefaultConfig().BaselineRefresh; d != 5*time.Minute {
		t.Errorf("default baseline_refresh = %s, want 5m", d)
	}
	for _, tc := range []struct {
		value string
		ok    bool
	}{{"0s", true}, {"1s", true}, {"1h", true}, {"-1m", false}, {"-1ns", false}, {"500ms", false}} {
		c := DefaultConfig()
		if err := c.Set("detectors.baseline_refresh", tc.value); err != nil {
			t.Fatalf("Set(baseline_refresh, %s) = %v", tc.value, err)
		}
		err := c.Validate()
		var ce *ConfigError
		switch {
		case tc.ok && err != nil:
			t.Errorf("baseline_refresh %s: Validate = %v", tc.value, err)
		case !tc.ok && (!errors.As(err, &ce) || ce.Key() != "baseline_refresh"):
			t.Errorf("baseline_refresh %s: Validate = %v, want a ConfigError for baseline_refresh", tc.value, err)
		}
	}
	c, err := decodeConfig(t, "baseline_refresh: 2m\n")
	if err != nil || c.BaselineRefresh != 2*time.Minute {
		t.Errorf("decode baseline_refresh: 2m = %s, %v", c.BaselineRefresh, err)
	}
}

// TestRefreshOfChangesMergesLikeWholeLoad: after another instance wrote, a refresh
// that loads only the changes leaves each detector in the state a refresh that loads
// the whole store does: the keys the changes lack are no news.
func TestRefreshOfChangesMergesLikeWholeLoad(t *testing.T) {
	day := 24 * time.Hour
	ago := func(d time.Duration) time.Time { return t0.Add(-d) }
	for _, tc := range []struct {
		name        string
		snap, other Baselines // what the store holds at the start; what the other instance writes
	}{
		{
			name: NewCountry,
			snap: Baselines{Keys: []KeyBaseline{
				{Key: "k1", FirstSeen: ago(20 * day), Events: 50, Countries: []CountryBaseline{{Country: "DE", FirstSeen: ago(20 * day), LastSeen: ago(time.Hour), Events: 50}}},
				{Key: "k2", FirstSeen: ago(20 * day), Events: 40, Countries: []CountryBaseline{{Country: "DE", FirstSeen: ago(20 * day), LastSeen: ago(time.Hour), Events: 40}}},
			}},
			other: Baselines{Keys: []KeyBaseline{
				{Key: "k2", FirstSeen: ago(30 * day), Events: 90, Countries: []CountryBaseline{
					{Country: "DE", FirstSeen: ago(20 * day), LastSeen: ago(time.Hour), Events: 40},
					{Country: "FR", FirstSeen: ago(2 * day), LastSeen: at(time.Minute), Events: 50},
				}},
				{Key: "k3", FirstSeen: ago(9 * day), Events: 12, Countries: []CountryBaseline{{Country: "SE", FirstSeen: ago(9 * day), LastSeen: t0, Events: 12}}},
			}},
		},
		{
			name: QuietEndpointSpike,
			snap: Baselines{TrafficSince: ago(3 * day), Routes: []RouteBaseline{
				{Route: "GET /v1/a", RatePerMinute: 3, AsOf: ago(time.Hour), Peak: 10, PeakAt: ago(2 * time.Hour)},
				{Route: "GET /v1/b", RatePerMinute: 1, AsOf: ago(time.Hour)},
			}},
			other: Baselines{TrafficSince: ago(5 * day), Routes: []RouteBaseline{
				{Route: "GET /v1/b", RatePerMinute: 7, AsOf: at(time.Minute), Peak: 20, PeakAt: at(time.Minute)},
				{Route: "POST /v1/c", RatePerMinute: 0.5, AsOf: at(time.Minute)},
			}},
		},
		{
			name: ClientVolumeSpike,
			snap: Baselines{Clients: []ClientBaseline{
				{Key: "k1", FirstSeen: ago(9 * day), RatePerMinute: 2, AsOf: ago(time.Hour), Peak: 30, PeakAt: ago(time.Hour)},
				{Key: "k2", FirstSeen: ago(9 * day), RatePerMinute: 1, AsOf: ago(time.Hour)},
			}},
			other: Baselines{Clients: []ClientBaseline{
				{Key: "k2", FirstSeen: ago(10 * day), RatePerMinute: 4, AsOf: at(time.Minute), Peak: 50, PeakAt: at(time.Minute)},
				{Key: "k3", FirstSeen: ago(3 * day), RatePerMinute: 9, AsOf: at(time.Minute)},
			}},
		},
		{
			name: ObjectEnumeration,
			snap: Baselines{TrafficSince: ago(3 * day), Objects: []ObjectBaseline{
				{Client: "k1", Route: "GET /v1/items/{id}", Peak: 4, PeakAt: ago(time.Hour)},
				{Client: "k2", Route: "GET /v1/items/{id}", Peak: 3, PeakAt: ago(time.Hour)},
			}},
			other: Baselines{Objects: []ObjectBaseline{
				{Client: "k2", Route: "GET /v1/items/{id}", Peak: 40, PeakAt: at(time.Minute)},
				{Client: "k3", Route: "GET /v1/orders/{id}", Peak: 25, PeakAt: at(time.Minute)},
				{Client: "192.0.2.9", Route: "GET /v1/items/{id}", Peak: 8, PeakAt: at(time.Minute)},
			}},
		},
		{
			name: PrivilegeAnomaly,
			snap: Baselines{TrafficSince: ago(3 * day), Privileged: []PrivilegeBaseline{
				{Key: "k1", FirstSeen: ago(5 * day), LastSeen: ago(time.Hour), Events: 3},
				{Key: "k2", FirstSeen: ago(5 * day), LastSeen: ago(time.Hour), Events: 2},
			}},
			other: Baselines{Privileged: []PrivilegeBaseline{
				{Key: "k2", FirstSeen: ago(6 * day), LastSeen: at(time.Minute), Events: 9},
				{Key: "k3", FirstSeen: ago(time.Hour), LastSeen: at(time.Minute), Events: 4},
			}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := func(whole bool) (before, after string, all bool, store *countingStore) {
				mem := NewMemoryBaselines(tc.snap, AllBaselines)
				store = &countingStore{BaselineStore: mem, whole: whole}
				e, err := NewEngine(only(tc.name), Options{Registerer: prometheus.NewRegistry(), Baselines: store})
				if err != nil {
					t.Fatal(err)
				}
				if err := e.LoadBaselines(t.Context()); err != nil {
					t.Fatal(err)
				}
				// Traffic of its own, written back, on k1 and the routes the store has.
				e.Observe(repeat(20, t0, 10*time.Second, func(i int, ts time.Time) ingest.Event {
					return from("k1", "DE", ts, route("GET", "/v1/items/{id}"), path(fmt.Sprintf("/v1/items/%d", i)))
				}))
				if err := e.SyncBaselines(t.Context()); err != nil {
					t.Fatal(err)
				}
				if err := mem.UpdateBaselines(t.Context(), tc.other); err != nil {
					t.Fatal(err)
				}
				before = engineState(e)
				if err := e.RefreshBaselines(t.Context()); err != nil {
					t.Fatal(err)
				}
				return before, engineState(e), e.fetch.all, store
			}
			wholeBefore, wholeAfter, wholeAll, _ := run(true)
			before, after, all, store := run(false)
			if store.partial.Load() != 1 {
				t.Fatalf("%d partial loads, want 1: the refresh", store.partial.Load())
			}
			if before != wholeBefore {
				t.Fatalf("the engines differ before the refresh:\n%s\nagainst\n%s", before, wholeBefore)
			}
			if wholeAfter == wholeBefore {
				t.Fatalf("the whole load changed nothing: the case tests nothing\n%s", wholeAfter)
			}
			if after != wholeAfter {
				t.Errorf("after a refresh of the changes:\n%s\nafter a whole refresh:\n%s", after, wholeAfter)
			}
			if all != wholeAll {
				t.Errorf("keys looked up when not held: %v after the changes, %v after a whole load", all, wholeAll)
			}
		})
	}
}

// TestMemoryBaselinesSince: a load since what an earlier load returned has what was
// written after it, in its latest state, and nothing else.
func TestMemoryBaselinesSince(t *testing.T) {
	ctx := t.Context()
	m := NewMemoryBaselines(*known("a", time.Hour, 1, "DE"), AllBaselines)
	write := func(u Baselines) {
		if err := m.UpdateBaselines(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	b, v0, _ := m.LoadBaselinesSince(ctx, AllBaselines, 0)
	if len(b.Keys) != 1 || v0 == 0 {
		t.Fatalf("whole load: %d keys, next %d", len(b.Keys), v0)
	}
	write(*known("b", time.Hour, 2, "FR"))
	write(Baselines{Keys: known("c", time.Hour, 3, "SE").Keys, Routes: []RouteBaseline{{Route: "GET /r", RatePerMinute: 1, AsOf: t0}}})
	write(*known("b", time.Hour, 5, "FR", "JP"))
	b, v1, _ := m.LoadBaselinesSince(ctx, AllBaselines, v0)
	if got := keyNamesOf(b.Keys); !slices.Equal(got, []string{"b", "c"}) || len(b.Routes) != 1 || b.Keys[0].Events != 5 || len(b.Keys[0].Countries) != 2 {
		t.Errorf("since the whole load: keys %v (b: %+v), %d routes; want b in its latest state, c and the route", got, b.Keys[0], len(b.Routes))
	}
	if b, v2, _ := m.LoadBaselinesSince(ctx, AllBaselines, v1); len(b.Keys)+len(b.Routes) != 0 || v2 != v1 {
		t.Errorf("nothing written since: %d keys, %d routes, next %d (was %d)", len(b.Keys), len(b.Routes), v2, v1)
	}
	// Limits keep the most recent of the changes.
	write(Baselines{Keys: []KeyBaseline{
		{Key: "old", FirstSeen: t0.Add(-time.Hour)}, {Key: "new", FirstSeen: t0}, {Key: "a", FirstSeen: t0.Add(-2 * time.Hour)},
	}})
	if b, _, _ := m.LoadBaselinesSince(ctx, BaselineLimits{Keys: 1}, v1); !slices.Equal(keyNamesOf(b.Keys), []string{"new"}) {
		t.Errorf("one key since: %v, want new", keyNamesOf(b.Keys))
	}
}

func keyNamesOf(keys []KeyBaseline) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.Key)
	}
	return out
}

// TestRefreshPacedByTheClock: a live engine (one with a clock) reading a backlog, event
// time running faster than the clock, refreshes at most once every refreshMinWall;
// with the clock as fast as event time it refreshes as often as event time says, as
// does an engine without a clock (replay).
func TestRefreshPacedByTheClock(t *testing.T) {
	var parts [][]ingest.Event
	for i := range 13 {
		parts = append(parts, []ingest.Event{from("k", "DE", at(time.Duration(i)*5*time.Minute))})
	}
	loads := func(step time.Duration, clock bool) int64 {
		store := &countingStore{BaselineStore: NewMemoryBaselines(Baselines{}, AllBaselines)}
		var now atomic.Int64
		o := Options{Registerer: prometheus.NewRegistry(), Baselines: store}
		if clock {
			o.Now = func() time.Time { return time.Unix(0, now.Load()) }
		}
		e, err := NewEngine(only(NewCountry), o)
		if err != nil {
			t.Fatal(err)
		}
		src := &hookSource{sliceSource: sliceSource{batches: batchesOf(parts...)}, before: map[int]func(){}}
		for i := range parts {
			// A backlog: the records are a day old.
			src.before[i] = func() { now.Store(t0.Add(24*time.Hour + time.Duration(i)*step).UnixNano()) }
		}
		if err := e.Run(t.Context(), src, &recordingSink{}); err != nil {
			t.Fatal(err)
		}
		return store.loads.Load()
	}
	replay := loads(0, false)
	if replay < 10 {
		t.Fatalf("without a clock: %d loads, want one a batch or so", replay)
	}
	for _, tc := range []struct {
		name     string
		step     time.Duration // of the clock, a batch
		min, max int64
	}{
		{"clock stopped", 0, 2, 2}, // the load at start, and the first refresh due
		// 40s of clock: the load at start, and a refresh at most every refreshMinWall.
		{"clock slower than event time", refreshMinWall / 3, 3, 1 + 1 + 4},
		{"clock as fast as event time", 5 * time.Minute, replay, replay},
	} {
		if got := loads(tc.step, true); got < tc.min || got > tc.max {
			t.Errorf("%s: %d loads, want %d to %d (%d without a clock)", tc.name, got, tc.min, tc.max, replay)
		}
	}
}
