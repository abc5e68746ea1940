package detectors

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

// An attack still under way when the engine crashes continues under its id after the
// restart, which reads on from the last acknowledged batch: with the open incidents
// kept, no new incident is opened and no alert goes out twice for it; without them, the
// restart opens the attack again under a new id (the negative control).
func TestIncidentSurvivesRestart(t *testing.T) {
	cfg := only(ForbiddenBurst)
	// Ten minutes of a client drawing 403s, 30 a minute, among healthy traffic.
	var events []ingest.Event
	for s := range 600 {
		ts := t0.Add(time.Duration(s) * time.Second)
		events = append(events, req(ts, client("healthy"), status(200)))
		if s%2 == 0 {
			events = append(events, req(ts.Add(500*time.Millisecond), client("attacker"), status(403)))
		}
	}
	for _, keep := range []bool{true, false} {
		name := "incidents kept"
		if !keep {
			name = "incidents not kept"
		}
		t.Run(name, func(t *testing.T) {
			store := NewMemoryIncidents()
			var inc IncidentStore
			if keep {
				inc = store
			}
			newEngine := func() *Engine {
				e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Incidents: inc, Scope: "g"})
				if err != nil {
					t.Fatal(err)
				}
				return e
			}
			// The first run takes batches of 50 events and crashes (its context ends)
			// after five minutes of event time, with some batches not yet acknowledged.
			acked := 0
			var batches []*ingest.Batch
			for i := 0; i < len(events); i += 50 {
				end := min(i+50, len(events))
				batches = append(batches, ingest.NewBatch(events[i:end], func(context.Context) error { acked = end; return nil }))
			}
			ctx, crash := context.WithCancel(context.Background())
			sink1 := &recordingSink{}
			src := &stopAfter{batches: batches, n: 9, crash: crash} // 450 of 900 events: five minutes
			if err := newEngine().Run(ctx, src, sink1); err == nil {
				t.Fatal("the first run ended without its crash")
			}
			if acked == 0 || acked >= 450 {
				t.Fatalf("first run acknowledged %d events, want some but not all of the 450 it read", acked)
			}
			sink2 := &recordingSink{}
			rest := []*ingest.Batch{ingest.NewBatch(events[acked:], nil)}
			if err := newEngine().Run(context.Background(), &sliceSource{batches: rest}, sink2); err != nil {
				t.Fatal(err)
			}
			ids := map[string]bool{}
			for _, a := range append(sink1.alerts, sink2.alerts...) {
				ids[a.ID] = true
			}
			if keep && len(ids) != 1 {
				t.Errorf("%d incidents across the restart, want the attack's one:\n%s", len(ids), describe(append(sink1.alerts, sink2.alerts...)))
			}
			if !keep && len(ids) != 2 {
				t.Errorf("%d incidents across the restart without kept incidents, want 2 (the control)", len(ids))
			}
			if keep {
				if len(sink1.alerts) == 0 {
					t.Fatal("the first run raised nothing")
				}
				for _, a := range sink2.alerts {
					if !a.FirstSeen.Equal(sink1.alerts[0].FirstSeen) {
						t.Errorf("after the restart, alert first seen %s, want the attack's start %s", a.FirstSeen, sink1.alerts[0].FirstSeen)
					}
				}
				if len(sink2.alerts) == 0 {
					t.Error("the restart raised no update although the attack went on for five more minutes")
				}
				if left, _ := store.LoadIncidents(context.Background(), "g"); len(left) != 0 {
					t.Errorf("%d incidents still stored as open after the input ended", len(left))
				}
			}
		})
	}
}

// A run stopped before any batch could be acknowledged (a window still needs them all)
// saves its open incidents all the same: whoever reads those batches again, a restart
// or a cluster task's next owner, must continue the incident, not page it again.
func TestStopSavesIncidentsWithNothingAcked(t *testing.T) {
	store := NewMemoryIncidents()
	e, err := NewEngine(only(ForbiddenBurst), Options{Registerer: prometheus.NewPedanticRegistry(), Incidents: store, Scope: "g"})
	if err != nil {
		t.Fatal(err)
	}
	events := concat(burst403(30, t0, "attacker"), steady(t0.Add(3*time.Second), 2*time.Minute, "healthy"))
	acked := false
	b := ingest.NewBatch(events, func(context.Context) error { acked = true; return nil })
	ctx, stop := context.WithCancel(context.Background())
	sink := &recordingSink{}
	if err := e.Run(ctx, &stopAfter{batches: []*ingest.Batch{b}, n: 1, crash: stop}, sink); err == nil {
		t.Fatal("the run ended without its stop")
	}
	if len(sink.alerts) == 0 || acked {
		t.Fatalf("%d alerts, batch acknowledged %v; want the attack's alert and the batch waiting for its window", len(sink.alerts), acked)
	}
	open, err := store.LoadIncidents(context.Background(), "g")
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 1 || open[0].ID != sink.alerts[0].ID {
		t.Errorf("stored open incidents %+v, want the attack's %s", open, sink.alerts[0].ID)
	}
}

// stopAfter hands out n batches, then cancels the run's context, as a crash would.
type stopAfter struct {
	batches []*ingest.Batch
	n       int
	crash   context.CancelFunc
}

func (s *stopAfter) Next(ctx context.Context) (*ingest.Batch, error) {
	if s.n == 0 {
		s.crash()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	s.n--
	b := s.batches[0]
	s.batches = s.batches[1:]
	return b, nil
}

// TestRestartLearnsOnce: a run that stops at any batch, and a second run that reads
// on from the last acknowledged batch with the baselines the first saved as of the
// last event it read, leave the baselines one uninterrupted run leaves. The second run
// reads again the events the first had seen but not acknowledged (open windows held
// them back); the saved baselines have them already, and counted again they made the
// average rate and the key's event count larger than the traffic was. A sparse client's
// closed buckets, folded into its average only at its next event, were missing from
// the baseline written after its last one, though acknowledged: its average lost them.
func TestRestartLearnsOnce(t *testing.T) {
	cfg := only(ClientVolumeSpike)
	cfg.NewCountry.Enabled = true
	// An hour of a client calling every 2s, and of a sparse one calling a few times in
	// the first three minutes and once a minute from minute 40, among other clients.
	var events []ingest.Event
	for s := 0; s < 3600; s += 2 {
		ts := t0.Add(time.Duration(s) * time.Second)
		events = append(events, req(ts, client("steady"), country("PL"), status(200)),
			req(ts.Add(time.Second), client(fmt.Sprintf("other-%d", s%7)), country("DE"), status(200)))
		if (s < 180 && s%30 == 0) || (s >= 2400 && s%60 == 0) {
			events = append(events, req(ts.Add(500*time.Millisecond), client("sparse"), country("PL"), status(200)))
		}
	}
	batches := func(ack func(end int)) []*ingest.Batch { return ackedBatches(events, 100, ack) }
	newEngine := func(b BaselineStore) *Engine {
		e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Baselines: b})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	// learnt returns the steady client's average rate and its event count, and the
	// sparse one's average rate.
	learnt := func(b *MemoryBaselines) (rate float64, events uint64, sparse float64) {
		t.Helper()
		got, err := b.LoadBaselines(context.Background(), LimitsOf(cfg))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range got.Clients {
			switch c.Key {
			case "steady":
				rate = c.RatePerMinute
			case "sparse":
				sparse = c.RatePerMinute
			}
		}
		for _, k := range got.Keys {
			if k.Key == "steady" {
				events = k.Events
			}
		}
		if rate == 0 || events == 0 || sparse == 0 {
			t.Fatalf("the clients' baselines: steady rate %v, events %d; sparse rate %v", rate, events, sparse)
		}
		return rate, events, sparse
	}
	whole := NewMemoryBaselines(Baselines{}, AllBaselines)
	if err := newEngine(whole).Run(context.Background(), &sliceSource{batches: batches(func(int) {})}, &recordingSink{}); err != nil {
		t.Fatal(err)
	}
	wantRate, wantEvents, wantSparse := learnt(whole)
	for _, stopAt := range []int{3, 4, 6, 8, 10, 12, 16, 17, 25, 32} {
		t.Run(fmt.Sprintf("stop after %d batches", stopAt), func(t *testing.T) {
			store := NewMemoryBaselines(Baselines{}, AllBaselines)
			acked := 0
			ctx, stop := context.WithCancel(context.Background())
			src := &stopAfter{batches: batches(func(end int) { acked = end }), n: stopAt, crash: stop}
			if err := newEngine(store).Run(ctx, src, &recordingSink{}); err == nil {
				t.Fatal("the first run ended without its stop")
			}
			if acked >= 100*stopAt {
				t.Fatalf("the first run acknowledged all %d events it read: nothing is read again", acked)
			}
			rest := []*ingest.Batch{ingest.NewBatch(events[acked:], nil)}
			if err := newEngine(store).Run(context.Background(), &sliceSource{batches: rest}, &recordingSink{}); err != nil {
				t.Fatal(err)
			}
			rate, events, sparse := learnt(store)
			if math.Abs(sparse-wantSparse) > 1e-9*wantSparse {
				t.Errorf("stopped and read on from event %d: the sparse client's average is %.6f a minute, one run's %.6f", acked, sparse, wantSparse)
			}
			if math.Abs(rate-wantRate) > 1e-9*wantRate {
				t.Errorf("stopped and read on from event %d: the steady client's average is %.6f a minute, one run's %.6f", acked, rate, wantRate)
			}
			if events != wantEvents {
				t.Errorf("stopped and read on from event %d: the steady client has %d events, one run's %d", acked, events, wantEvents)
			}
		})
	}
}

// TestEndedIncidentNotReopened: an incident that opened and ended while a longer
// window held the commit back before its events is remembered as ended: the run that
// reads on from that commit (a restart, or a cluster task's next owner) does not open
// it again, under its id or another. The input's end forgets it.
func TestEndedIncidentNotReopened(t *testing.T) {
	cfg := only(ForbiddenBurst)
	cfg.ForbiddenBurst.Cooldown = 2 * time.Minute
	cfg.TokenReuse.Enabled = true // its ten-minute window holds the commit back
	// Twenty minutes of one token used steadily, and a burst of 403s at minute 2.
	events := concat(
		repeat(1200, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return req(ts, client("app"), token("tok"), device("d1"), status(200))
		}),
		burst403(30, t0.Add(2*time.Minute), "attacker"))
	slices.SortStableFunc(events, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	batches := func(ack func(end int)) []*ingest.Batch { return ackedBatches(events, 50, ack) }
	newEngine := func(inc IncidentStore) *Engine {
		e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Incidents: inc, Scope: "g"})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	store := NewMemoryIncidents()
	acked := 0
	ctx, stop := context.WithCancel(context.Background())
	first := &recordingSink{}
	// Stopped at minute 8: the burst's incident has ended (cooldown), the commit is
	// still before it.
	src := &stopAfter{batches: batches(func(end int) { acked = end }), n: 520 / 50, crash: stop}
	if err := newEngine(store).Run(ctx, src, first); err == nil {
		t.Fatal("the first run ended without its stop")
	}
	if len(first.alerts) == 0 {
		t.Fatal("the first run raised nothing for the burst")
	}
	if acked > 0 && events[acked-1].Time.After(t0.Add(2*time.Minute)) {
		t.Fatalf("the first run acknowledged up to %s, past the burst: nothing of it is read again", events[acked-1].Time)
	}
	second := &recordingSink{}
	rest := []*ingest.Batch{ingest.NewBatch(events[acked:], nil)}
	if err := newEngine(store).Run(context.Background(), &sliceSource{batches: rest}, second); err != nil {
		t.Fatal(err)
	}
	if len(second.alerts) != 0 {
		t.Errorf("reading on from the commit, the second run raised the ended incident again:\n%s", describe(second.alerts))
	}
	if left, _ := store.LoadIncidents(context.Background(), "g"); len(left) != 0 {
		t.Errorf("%d incidents (open or ended) still stored after the input ended", len(left))
	}
}

// TestLoadIncidentsKeepsAtMostMaxKeys: more saved open incidents than a detector's
// max_keys (saved under a larger one, or a replay's day of alert history) leave the
// ones that fired last open, and the others ended, remembered as ended.
func TestLoadIncidentsKeepsAtMostMaxKeys(t *testing.T) {
	cfg := only(ForbiddenBurst)
	cfg.ForbiddenBurst.MaxKeys = 3
	var states []IncidentState
	for i := range 10 {
		at := t0.Add(time.Duration(i) * time.Minute)
		states = append(states, IncidentState{IncidentRef: IncidentRef{Detector: ForbiddenBurst, Key: fmt.Sprintf("k%d", i)},
			ID: fmt.Sprintf("id%d", i), Start: at, Last: at, LastFire: at, LastEmit: at, Severity: SeverityMedium})
	}
	store := NewMemoryIncidents()
	if err := store.SaveIncidents(context.Background(), "g", states, nil); err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Incidents: store, Scope: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadIncidents(context.Background()); err != nil {
		t.Fatal(err)
	}
	inc := e.incs[0]
	if got := slices.Sorted(maps.Keys(inc.open)); !slices.Equal(got, []string{"k7", "k8", "k9"}) {
		t.Errorf("open after the load: %v, want the three that fired last", got)
	}
	if len(inc.ended) != 3 {
		t.Errorf("%d ended incidents remembered, want max_keys (3): %v", len(inc.ended), inc.ended)
	}
}

// ackedBatches cuts events into batches of size whose acknowledgement calls ack with the
// number of events up to the batch's end.
func ackedBatches(events []ingest.Event, size int, ack func(end int)) []*ingest.Batch {
	var out []*ingest.Batch
	for i := 0; i < len(events); i += size {
		end := min(i+size, len(events))
		out = append(out, ingest.NewBatch(events[i:end], func(context.Context) error { ack(end); return nil }))
	}
	return out
}

// TestRestartMissesNoPrivilegedIncident: a key with no history makes privileged
// requests; a run stopped while they are in an open window, and a second run reading
// on from the commit with the baselines and incidents the first saved, raise the
// incident one run raises. The stored history used to include the successes in open
// windows: read again, they were the key's own history and hid the incident.
func TestRestartMissesNoPrivilegedIncident(t *testing.T) {
	cfg := only(PrivilegeAnomaly)
	cfg.PrivilegeAnomaly.LearningPeriod = 10 * time.Minute
	var events []ingest.Event
	for s := 0; s < 3600; s += 2 {
		ts := t0.Add(time.Duration(s) * time.Second)
		events = append(events, req(ts.Add(time.Second), client(fmt.Sprintf("other-%d", s%7)), status(200)))
		if s >= 1200 && s < 1300 && s%20 == 0 {
			events = append(events, req(ts, client("newadmin"), route("POST", "/v1/admin/users/{id}/roles"), status(200)))
		}
	}
	slices.SortStableFunc(events, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	newEngine := func(b BaselineStore, inc IncidentStore) *Engine {
		e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Baselines: b, Incidents: inc, Scope: "g"})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	ids := func(alerts []Alert) []string {
		var out []string
		for _, a := range alerts {
			out = append(out, a.ID)
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	whole := &recordingSink{}
	if err := newEngine(nil, nil).Run(context.Background(), &sliceSource{batches: ackedBatches(events, 10, func(int) {})}, whole); err != nil {
		t.Fatal(err)
	}
	want := ids(whole.alerts)
	if len(want) != 1 {
		t.Fatalf("one run raised %d incidents, want the new admin's one", len(want))
	}
	for _, stopAt := range []int{58, 62, 66, 70, 75, 80, 90} {
		t.Run(fmt.Sprintf("stop after %d batches", stopAt), func(t *testing.T) {
			baselines, incidents := NewMemoryBaselines(Baselines{}, AllBaselines), NewMemoryIncidents()
			acked := 0
			ctx, stop := context.WithCancel(context.Background())
			first, second := &recordingSink{}, &recordingSink{}
			src := &stopAfter{batches: ackedBatches(events, 10, func(end int) { acked = end }), n: stopAt, crash: stop}
			if err := newEngine(baselines, incidents).Run(ctx, src, first); err == nil {
				t.Fatal("the first run ended without its stop")
			}
			rest := []*ingest.Batch{ingest.NewBatch(events[acked:], nil)}
			if err := newEngine(baselines, incidents).Run(context.Background(), &sliceSource{batches: rest}, second); err != nil {
				t.Fatal(err)
			}
			if got := ids(append(first.alerts, second.alerts...)); !slices.Equal(got, want) {
				t.Errorf("stopped and read on from event %d: incidents %v, one run's %v", acked, got, want)
			}
		})
	}
}
