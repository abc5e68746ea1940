package detectors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sliceSource hands out fixed batches, then io.EOF (or err, when set).
type sliceSource struct {
	batches []*ingest.Batch
	err     error
}

func (s *sliceSource) Next(ctx context.Context) (*ingest.Batch, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(s.batches) == 0 {
		if s.err != nil {
			return nil, s.err
		}
		return nil, io.EOF
	}
	b := s.batches[0]
	s.batches = s.batches[1:]
	return b, nil
}

type recordingSink struct {
	alerts []Alert
	puts   int
	err    error
}

func (s *recordingSink) Put(_ context.Context, alerts []Alert) error {
	if s.err != nil {
		return s.err
	}
	s.puts++
	s.alerts = append(s.alerts, alerts...)
	return nil
}

// ackRecord is what the world looked like when a batch was acknowledged.
type ackRecord struct {
	batch     int
	maxT      time.Time
	watermark time.Time
	alerts    int // alerts put so far
	updates   int // baseline writes so far
}

// batched cuts events into batches of n whose acks record into acks.
func batched(events []ingest.Event, n int, e **Engine, sink *recordingSink, store *MemoryBaselines, acks *[]ackRecord) []*ingest.Batch {
	var out []*ingest.Batch
	for i := 0; i < len(events); i += n {
		part := events[i:min(i+n, len(events))]
		idx := len(out)
		var maxT time.Time
		for _, ev := range part {
			if ev.Time.After(maxT) {
				maxT = ev.Time
			}
		}
		out = append(out, ingest.NewBatch(part, func(context.Context) error {
			*acks = append(*acks, ackRecord{idx, maxT, (*e).Watermark(), len(sink.alerts), store.Updates()})
			return nil
		}))
	}
	return out
}

func TestRunAcknowledgesOnlyWhatNoWindowNeeds(t *testing.T) {
	s := genScenario(5, 2, true)
	store := NewMemoryBaselines(s.snap, AllBaselines)
	var e *Engine
	e, err := NewEngine(DefaultConfig(), Options{Registerer: prometheus.NewRegistry(), Baselines: store})
	if err != nil {
		t.Fatal(err)
	}
	sink := &recordingSink{}
	var acks []ackRecord
	src := &sliceSource{batches: batched(s.events, 200, &e, sink, store, &acks)}
	nBatches := len(src.batches)
	if err := e.Run(t.Context(), src, sink); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if len(acks) != nBatches {
		t.Fatalf("%d of %d batches acknowledged", len(acks), nBatches)
	}
	// Acks at the final watermark may come from the end of input, which releases
	// everything; every earlier one must be out of every open window: token_reuse's
	// 10m window, less one of its 30s buckets.
	longest := DefaultConfig().TokenReuse.Window
	last := acks[len(acks)-1].watermark
	for i, a := range acks {
		if a.batch != i {
			t.Fatalf("ack %d is batch %d: out of order", i, a.batch)
		}
		if a.watermark.Before(last) && a.watermark.Sub(a.maxT) < longest-30*time.Second {
			t.Errorf("batch %d (events up to %s) acked at watermark %s: an open %s window may still need it",
				i, a.maxT.Format(time.TimeOnly), a.watermark.Format(time.TimeOnly), longest)
		}
		if a.updates == 0 {
			t.Errorf("batch %d acked before any baseline was written", i)
		}
	}
	groups := incidentsOf(sink.alerts)
	if len(groups) != len(s.attacks) {
		t.Errorf("%d incidents through Run, want the %d of the attacks:\n%s", len(groups), len(s.attacks), describe(sink.alerts))
	}
	// Every alert was put before the batch holding its last event was acked.
	for _, g := range groups {
		a := g[0]
		for _, r := range acks {
			if !r.maxT.Before(a.LastSeen) && r.alerts == 0 {
				t.Errorf("batch %d holding the events of %s %s was acked before any alert was put", r.batch, a.Detector, a.Key)
			}
		}
	}
}

// TestRunWritesBaselinesPerBucket: dense traffic in small batches, every one of which
// teaches the baselines something, is acknowledged and written back as the windows'
// buckets close (forbidden_burst's are 5s), not once per batch, and the batches
// waiting for their ack no longer hold their events.
func TestRunWritesBaselinesPerBucket(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// Three minutes, so that forbidden_burst's one-minute window lets batches go
	// before the end (token_reuse's and quiet_endpoint_spike's are longer: disabled).
	const seconds, perMs = 180, 1
	events := make([]ingest.Event, 0, seconds*1000*perMs)
	for i := range cap(events) {
		events = append(events, ingest.Event{
			Time: t0.Add(time.Duration(i/perMs) * time.Millisecond), ClientKey: fmt.Sprintf("key-%d", i%500),
			Country: "DE", Method: "GET", Route: "/v1/items", Status: 200, ClientIP: "192.0.2.1",
		})
	}
	cfg := DefaultConfig()
	cfg.TokenReuse.Enabled, cfg.QuietEndpointSpike.Enabled = false, false
	store := NewMemoryBaselines(Baselines{}, AllBaselines)
	var e *Engine
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry(), Baselines: store})
	if err != nil {
		t.Fatal(err)
	}
	sink := &recordingSink{}
	var acks []ackRecord
	batches := batched(events, 10, &e, sink, store, &acks) // 10ms each: 18,000 batches
	src := &sliceSource{batches: slices.Clone(batches)}
	if err := e.Run(t.Context(), src, sink); err != nil {
		t.Fatal(err)
	}
	if len(acks) != len(batches) {
		t.Fatalf("%d of %d batches acknowledged", len(acks), len(batches))
	}
	bucket := cfg.ForbiddenBurst.Window / 12 // its ring layout
	if got, most := store.Updates(), int(seconds*time.Second/bucket)+2; got == 0 || got > most {
		t.Errorf("%d baseline writes for %d batches over %ds of event time, want 1 to %d", got, len(batches), seconds, most)
	}
	for i, b := range batches {
		if b.Events != nil {
			t.Fatalf("batch %d still holds its %d events after Run", i, len(b.Events))
		}
	}
}

func TestRunAckTiming(t *testing.T) {
	// One batch per minute of a single client: with a 10-minute token_reuse window, a
	// batch is released only once the watermark is about ten minutes past it.
	cfg := DefaultConfig()
	store := NewMemoryBaselines(Baselines{}, AllBaselines)
	var e *Engine
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry(), Baselines: store})
	if err != nil {
		t.Fatal(err)
	}
	var events []ingest.Event
	for m := 0; m < 30; m++ {
		events = append(events, use("t1", "phone", at(time.Duration(m)*time.Minute)))
	}
	sink := &recordingSink{}
	var acks []ackRecord
	src := &sliceSource{batches: batched(events, 1, &e, sink, store, &acks)}
	if err := e.Run(t.Context(), src, sink); err != nil {
		t.Fatal(err)
	}
	for _, a := range acks[:len(acks)-12] { // the last ones are released by the end of input
		lag := a.watermark.Sub(a.maxT)
		if lag < 9*time.Minute+30*time.Second || lag > 11*time.Minute {
			t.Errorf("batch %d (event at %s) acked at watermark %s: lag %s, want about the 10m window",
				a.batch, a.maxT.Format(time.TimeOnly), a.watermark.Format(time.TimeOnly), lag)
		}
	}
	if len(acks) != 30 {
		t.Errorf("%d acks, want 30", len(acks))
	}
}

func TestRunErrors(t *testing.T) {
	boom := errors.New("boom")
	events := forbidden("a", 30, t0, time.Second)
	for _, tc := range []struct {
		name    string
		src     *sliceSource
		sink    *recordingSink
		store   BaselineStore
		want    string
		wantErr error
	}{
		{"source fails", &sliceSource{err: boom}, &recordingSink{}, nil, "detectors: next batch: boom", boom},
		{"sink fails", &sliceSource{batches: []*ingest.Batch{ingest.NewBatch(events, nil)}}, &recordingSink{err: boom}, nil, "detectors: put alerts: boom", boom},
		{"baselines fail to load", &sliceSource{}, &recordingSink{}, failingStore{boom}, "detectors: load baselines: boom", boom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEngine(only(ForbiddenBurst), Options{Registerer: prometheus.NewRegistry(), Baselines: tc.store})
			if err != nil {
				t.Fatal(err)
			}
			err = e.Run(t.Context(), tc.src, tc.sink)
			if err == nil || err.Error() != tc.want || !errors.Is(err, tc.wantErr) {
				t.Errorf("Run = %v, want %q wrapping %v", err, tc.want, tc.wantErr)
			}
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		e, _ := NewEngine(DefaultConfig(), Options{Registerer: prometheus.NewRegistry()})
		if err := e.Run(ctx, &sliceSource{}, &recordingSink{}); !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	})
}

type failingStore struct{ err error }

func (f failingStore) LoadBaselines(context.Context, BaselineLimits) (Baselines, error) {
	return Baselines{}, f.err
}
func (f failingStore) UpdateBaselines(context.Context, Baselines) error { return f.err }

func TestNewEngineRejectsBadConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ForbiddenBurst.MinRatio = 1.5
	_, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry()})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key() != "forbidden_burst.min_ratio" {
		t.Errorf("NewEngine = %v, want a ConfigError for forbidden_burst.min_ratio", err)
	}
}

// TestEnginesNeedARegisterer: the Registerer is required, and engines sharing a registry
// tell their series apart with labels of their own.
func TestEnginesNeedARegisterer(t *testing.T) {
	if _, err := NewEngine(DefaultConfig(), Options{}); err == nil || !strings.Contains(err.Error(), "Registerer is required") {
		t.Errorf("NewEngine without a Registerer = %v, want an error", err)
	}
	reg := prometheus.NewPedanticRegistry()
	for _, task := range []string{"0", "1"} {
		if _, err := NewEngine(DefaultConfig(), Options{Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"task": task}, reg)}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "gatewatch_detectors_events_total"); err != nil || n != 2 {
		t.Errorf("events series of two engines = %d, %v; want one per engine", n, err)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e, err := NewEngine(DefaultConfig(), Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	events := concat(forbidden("a", 25, t0, time.Second), []ingest.Event{
		use("t1", "phone", at(2*time.Minute)),
		use("t1", "laptop", at(90*time.Second)), // on the watermark: not late
		use("t1", "tablet", at(30*time.Second)), // before it: late
	})
	alerts := append(e.Observe(events), e.Flush()...)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(fmt.Sprintf(`
# HELP gatewatch_detectors_events_total Events observed by the detector engine.
# TYPE gatewatch_detectors_events_total counter
gatewatch_detectors_events_total %d
# HELP gatewatch_detectors_late_events_total Events older than the watermark when they arrived: they update baselines but no window.
# TYPE gatewatch_detectors_late_events_total counter
gatewatch_detectors_late_events_total 1
`, len(events))), "gatewatch_detectors_events_total", "gatewatch_detectors_late_events_total"); err != nil {
		t.Error(err)
	}
	perDetector := map[string]int{}
	for _, a := range alerts {
		perDetector[a.Detector]++
	}
	for _, d := range Names {
		if got := counterValue(t, reg, "gatewatch_detectors_alerts_total", "detector", d); got != float64(perDetector[d]) {
			t.Errorf("alerts_total{detector=%q} = %v, want %d", d, got, perDetector[d])
		}
	}
	if perDetector[ForbiddenBurst] == 0 || perDetector[TokenReuse] == 0 {
		t.Errorf("alerts %v, want forbidden_burst and token_reuse", perDetector)
	}
	if got := counterValue(t, reg, "gatewatch_detectors_tracked_keys", "detector", QuietEndpointSpike); got != 1 {
		t.Errorf("tracked_keys{quiet_endpoint_spike} = %v, want 1 route", got)
	}
	if got := counterValue(t, reg, "gatewatch_detectors_watermark_seconds"); got != float64(at(90*time.Second).Unix()) {
		t.Errorf("watermark = %v, want %v", got, at(90*time.Second).Unix())
	}
}

func TestObserveAllocatesNothingForKnownKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("warms up on generated traffic")
	}
	s := genScenario(11, 3, false)
	e, err := NewEngine(DefaultConfig(), Options{Registerer: prometheus.NewRegistry(), Baselines: NewMemoryBaselines(s.snap, AllBaselines)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Warm up on two hours of traffic, then measure the next 45 minutes event by event.
	split := t0.Add(2*time.Hour + 10*time.Minute)
	var warm, steady []ingest.Event
	for _, ev := range s.events {
		switch {
		case ev.Time.Before(split):
			warm = append(warm, ev)
		case ev.Time.Before(t0.Add(2*time.Hour + 55*time.Minute)):
			steady = append(steady, ev)
		}
	}
	e.Observe(warm)
	i := 0
	one := make([]ingest.Event, 1)
	allocs := testing.AllocsPerRun(len(steady)-1, func() {
		one[0] = steady[i]
		i++
		if a := e.Observe(one); a != nil {
			t.Fatalf("alert in steady traffic: %+v", a)
		}
	})
	if allocs != 0 {
		t.Errorf("Observe allocates %v times per event for known keys, want 0", allocs)
	}
}

func TestFlushClosesOpenWindows(t *testing.T) {
	e, err := NewEngine(only(ForbiddenBurst), Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	// The burst's windows are still open: the watermark is 30s behind the last event.
	if got := e.Observe(forbidden("a", 20, t0, time.Second)); len(got) != 0 {
		t.Fatalf("Observe raised %d alerts before the windows closed", len(got))
	}
	got := e.Flush()
	if len(got) != 1 || got[0].Key != "a" || got[0].Evidence.ForbiddenCount != 20 {
		t.Fatalf("Flush = %s, want the burst", describe(got))
	}
	if again := e.Flush(); len(again) != 0 {
		t.Errorf("a second Flush raised %s", describe(again))
	}
}

func TestEvictionPerDetector(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func(i int) ingest.Event
	}{
		{NewCountry, func(i int) ingest.Event { return from(fmt.Sprintf("k%d", i), "DE", at(time.Duration(i)*time.Second)) }},
		{TokenReuse, func(i int) ingest.Event { return use(fmt.Sprintf("t%d", i), "d", at(time.Duration(i)*time.Second)) }},
		{ForbiddenBurst, func(i int) ingest.Event { return ok(fmt.Sprintf("c%d", i), 1, at(time.Duration(i)*time.Second), 0)[0] }},
		{QuietEndpointSpike, func(i int) ingest.Event {
			return req(at(time.Duration(i)*time.Second), route("GET", fmt.Sprintf("/r%d", i)))
		}},
		{ObjectEnumeration, func(i int) ingest.Event {
			return invoices(fmt.Sprintf("c%d", i), 0, 1, at(time.Duration(i)*time.Second), 0)[0]
		}},
		{AuthFailureSpray, func(i int) ingest.Event {
			return req(at(time.Duration(i)*time.Second), ip(fmt.Sprintf("192.0.2.%d", i)))
		}},
		{PrivilegeAnomaly, func(i int) ingest.Event { return admin(fmt.Sprintf("c%d", i), at(time.Duration(i)*time.Second)) }},
		{ClientVolumeSpike, func(i int) ingest.Event {
			return calls(fmt.Sprintf("c%d", i), 1, at(time.Duration(i)*time.Second), 0)[0]
		}},
		{RouteScan, func(i int) ingest.Event {
			return req(at(time.Duration(i)*time.Second), ip(fmt.Sprintf("192.0.2.%d", i)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := only(tc.name)
			for _, c := range cfg.commons() {
				c.MaxKeys = 10
			}
			var events []ingest.Event
			for i := range 25 {
				events = append(events, tc.mk(i))
			}
			reg := prometheus.NewPedanticRegistry()
			e, err := NewEngine(cfg, Options{Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			e.Observe(events)
			if got := counterValue(t, reg, "gatewatch_detectors_tracked_keys", "detector", tc.name); got != 10 {
				t.Errorf("tracked keys = %v, want max_keys 10", got)
			}
			if got := counterValue(t, reg, "gatewatch_detectors_evictions_total", "detector", tc.name); got != 15 {
				t.Errorf("evictions = %v, want 15", got)
			}
		})
	}
}

func TestLoadBaselinesRespectsMaxKeys(t *testing.T) {
	snap := Baselines{TrafficSince: t0.Add(-48 * time.Hour)}
	for i := range 5 {
		snap.Keys = append(snap.Keys, KeyBaseline{
			Key: fmt.Sprintf("k%d", i), FirstSeen: t0.Add(-60 * 24 * time.Hour), Events: 100,
			Countries: []CountryBaseline{{Country: "DE", LastSeen: t0.Add(time.Duration(i-10) * time.Hour)}},
		})
	}
	cfg := only(NewCountry)
	cfg.NewCountry.MaxKeys = 3
	store := NewMemoryBaselines(snap, AllBaselines)
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry(), Baselines: store})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The three keys seen last survive.
	var kept []string
	for i := range 5 {
		if k := fmt.Sprintf("k%d", i); e.nc.tab.find(k) >= 0 {
			kept = append(kept, k)
		}
	}
	if !slices.Equal(kept, []string{"k2", "k3", "k4"}) {
		t.Errorf("kept %v, want the three most recent keys", kept)
	}
	// And they are established: a new country alerts.
	alerts := append(e.Observe([]ingest.Event{from("k4", "FR", t0)}), e.Flush()...)
	if len(alerts) != 1 || alerts[0].Key != "k4" {
		t.Errorf("alerts %s, want one for k4", describe(alerts))
	}
}

func TestMemoryBaselines(t *testing.T) {
	m := NewMemoryBaselines(Baselines{
		TrafficSince: t0,
		Keys:         []KeyBaseline{{Key: "b", Events: 1}, {Key: "a", Events: 2, Countries: []CountryBaseline{{Country: "DE"}}}},
		Routes:       []RouteBaseline{{Route: "GET /x", RatePerMinute: 1}},
	}, AllBaselines)
	if err := m.UpdateBaselines(t.Context(), Baselines{
		TrafficSince: t0.Add(time.Hour), // later: the start of traffic stays
		Keys:         []KeyBaseline{{Key: "a", Events: 5}},
		Routes:       []RouteBaseline{{Route: "GET /y", RatePerMinute: 2}},
	}); err != nil {
		t.Fatal(err)
	}
	b, err := m.LoadBaselines(t.Context(), AllBaselines)
	if err != nil {
		t.Fatal(err)
	}
	if !b.TrafficSince.Equal(t0) || len(b.Keys) != 2 || b.Keys[0].Key != "a" || b.Keys[0].Events != 5 ||
		len(b.Keys[0].Countries) != 0 || len(b.Routes) != 2 || b.Routes[1].Route != "GET /y" || m.Updates() != 1 {
		t.Errorf("after update: %+v", b)
	}
}
