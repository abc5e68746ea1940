package store

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

func TestLocalBaselines(t *testing.T) {
	testBaselines(t, func(t *testing.T) (baselineStore, func() baselineStore) {
		l, restart := openLocal(t)
		return l, func() baselineStore { return restart() }
	})
}

// openLocal opens an empty embedded store with suiteSettings, closed when t ends, and
// returns it and a function that closes it and opens it again on the same data.
func openLocal(t *testing.T) (*Local, func() *Local) {
	cfg := Config{DataDir: t.TempDir()}
	open := func() *Local {
		l, err := NewLocal(cfg, LocalOptions{Baselines: suiteSettings})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	cur := open()
	t.Cleanup(func() {
		if err := cur.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return cur, func() *Local {
		if err := cur.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		cur = open()
		return cur
	}
}

func TestLocalPrunesBaselines(t *testing.T) {
	l, err := NewLocal(Config{DataDir: t.TempDir()}, LocalOptions{Baselines: suiteSettings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	testPruneBaselines(t, l, 120_000, l.PruneBaselines, func() {}) // more keys than two pruning scans
}

// testPruneBaselines checks that maintenance forgets what the detectors forget: keys
// not seen within history and routes idle for three time constants, dated by the
// newest time the baselines know, and nothing else. s runs with suiteSettings
// (history 6h, time constant 1h); settle waits until pruned entries are gone.
func testPruneBaselines(t *testing.T, s detectors.BaselineStore, n int, prune func(context.Context) (int, int, error), settle func()) {
	ctx := testContext(t)
	newest := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return newest.Add(-d) }
	var u detectors.Baselines
	keep, drop := map[string]bool{}, map[string]bool{}
	for i := range n {
		key := fmt.Sprintf("key-%06d", i)
		k := detectors.KeyBaseline{Key: key, FirstSeen: ago(30 * time.Hour), Events: 50}
		switch i % 3 {
		case 0: // seen from one country within history
			k.Countries = []detectors.CountryBaseline{{Country: "DE", FirstSeen: ago(30 * time.Hour), LastSeen: ago(30 * time.Hour)}, {Country: "FR", FirstSeen: ago(30 * time.Hour), LastSeen: ago(5 * time.Hour)}}
			keep[key] = true
		case 1: // not seen for seven hours
			k.Countries = []detectors.CountryBaseline{{Country: "DE", FirstSeen: ago(30 * time.Hour), LastSeen: ago(7 * time.Hour)}}
			drop[key] = true
		case 2: // first seen within history, no country
			k.FirstSeen = ago(time.Hour)
			keep[key] = true
		}
		u.Keys = append(u.Keys, k)
	}
	u.Routes = []detectors.RouteBaseline{
		{Route: "GET /fresh", RatePerMinute: 1, AsOf: newest},
		{Route: "GET /idle", RatePerMinute: 1, AsOf: ago(3*time.Hour + time.Millisecond)},
		{Route: "GET /recent", RatePerMinute: 1, AsOf: ago(3*time.Hour - time.Millisecond)},
		{Route: "GET /peaked", RatePerMinute: 1, AsOf: ago(5 * time.Hour), Peak: 9, PeakAt: ago(time.Hour)},
	}
	// One of each kind of the later detectors goes, one stays.
	u.Clients = []detectors.ClientBaseline{
		{Key: "client-idle", FirstSeen: ago(9 * time.Hour), AsOf: ago(3*time.Hour + time.Millisecond), PeakAt: ago(4 * time.Hour)},
		{Key: "client-busy", FirstSeen: ago(9 * time.Hour), AsOf: ago(time.Hour), PeakAt: ago(4 * time.Hour)},
	}
	u.Objects = []detectors.ObjectBaseline{
		{Client: "c", Route: "GET /old", Peak: 5, PeakAt: ago(3*time.Hour + time.Millisecond)},
		{Client: "c", Route: "GET /new", Peak: 5, PeakAt: ago(time.Hour)},
	}
	u.Privileged = []detectors.PrivilegeBaseline{
		{Key: "admin-gone", FirstSeen: ago(9 * time.Hour), LastSeen: ago(7 * time.Hour)},
		{Key: "admin", FirstSeen: ago(9 * time.Hour), LastSeen: ago(5 * time.Hour)},
	}
	for range 3 {
		drop["later detectors' entry"] = true
	}
	if err := s.UpdateBaselines(ctx, u); err != nil {
		t.Fatal(err)
	}
	keys, routes, err := prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if keys != len(drop)+2 || routes != 1 {
		t.Errorf("pruned %d entries keyed by a client and %d routes, want %d and 1", keys, routes, len(drop)+2)
	}
	settle()
	got, err := s.LoadBaselines(ctx, detectors.AllBaselines)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Keys) != len(keep) {
		t.Errorf("%d keys left, want %d", len(got.Keys), len(keep))
	}
	if len(got.Clients) != 1 || got.Clients[0].Key != "client-busy" || len(got.Objects) != 1 || got.Objects[0].Route != "GET /new" ||
		len(got.Privileged) != 1 || got.Privileged[0].Key != "admin" {
		t.Errorf("left %+v, %+v, %+v", got.Clients, got.Objects, got.Privileged)
	}
	for _, k := range got.Keys {
		if !keep[k.Key] {
			t.Fatalf("key %s kept, want it dropped", k.Key)
		}
		if k.Key == "key-000000" && len(k.Countries) != 2 {
			t.Errorf("key %s lost a country: %+v", k.Key, k.Countries)
		}
	}
	if len(got.Routes) != 3 || got.Routes[0].Route != "GET /fresh" || got.Routes[1].Route != "GET /peaked" || got.Routes[2].Route != "GET /recent" {
		t.Errorf("routes left %+v, want /fresh, /peaked (its peak is recent) and /recent", got.Routes)
	}
	// A second pass finds nothing more.
	if keys, routes, err := prune(ctx); keys+routes != 0 || err != nil {
		t.Errorf("second pass pruned %d keys and %d routes, %v", keys, routes, err)
	}
}

// TestLocalReadsRoutesWrittenBeforePeaks: a store written by a version whose routes had
// no peak still loads, the routes with none.
func TestLocalReadsRoutesWrittenBeforePeaks(t *testing.T) {
	l, err := NewLocal(Config{DataDir: t.TempDir()}, LocalOptions{Baselines: suiteSettings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	asOf := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	old := binary.AppendVarint(binary.BigEndian.AppendUint64(nil, math.Float64bits(2.5)), asOf.UnixMilli())
	if err := l.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketBaselineRoutes).Put([]byte("GET /old"), old) }); err != nil {
		t.Fatal(err)
	}
	got, err := l.LoadBaselines(testContext(t), detectors.AllBaselines)
	if err != nil {
		t.Fatal(err)
	}
	want := []detectors.RouteBaseline{{Route: "GET /old", RatePerMinute: 2.5, AsOf: asOf}}
	if !reflect.DeepEqual(got.Routes, want) {
		t.Errorf("routes %+v, want %+v", got.Routes, want)
	}
}

// TestLocalRestartStartsWarm: what the detectors learned about a bulk-sync partner, an
// hourly export, an admin console and a busy client, written to the store, is what a
// restarted engine judges by: the same traffic after the restart raises nothing.
func TestLocalRestartStartsWarm(t *testing.T) {
	dir := t.TempDir()
	start := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	// A day of each, and the same an hour after the restart.
	traffic := func(from time.Time, hours int) []ingest.Event {
		var evs []ingest.Event
		for h := range hours {
			at := from.Add(time.Duration(h) * time.Hour)
			for i := range 40 { // the hourly export
				evs = append(evs, ingest.Event{Time: at.Add(time.Duration(i) * time.Second), ClientKey: "exporter", ClientIP: "10.0.0.1",
					Method: "GET", Route: "/v1/exports/{id}", Path: fmt.Sprintf("/v1/exports/%d", h), Status: 200})
			}
			if h%24 == 2 { // the nightly sync: 600 invoices in ten minutes
				for i := range 600 {
					evs = append(evs, ingest.Event{Time: at.Add(time.Duration(i) * time.Second), ClientKey: "partner", ClientIP: "10.0.0.2",
						Method: "GET", Route: "/v1/invoices/{id}", Path: fmt.Sprintf("/v1/invoices/%d", i), Status: 200})
				}
			}
			if h%24 == 9 { // the admin console's morning work
				for i := range 5 {
					evs = append(evs, ingest.Event{Time: at.Add(time.Duration(i) * time.Minute), ClientKey: "console", ClientIP: "10.0.0.3",
						Method: "PUT", Route: "/v1/admin/users/{id}", Path: "/v1/admin/users/1", Status: 200})
				}
			}
		}
		slices.SortStableFunc(evs, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
		return evs
	}
	cfg := detectors.DefaultConfig()
	cfg.QuietEndpointSpike.LearningPeriod, cfg.ObjectEnumeration.LearningPeriod, cfg.PrivilegeAnomaly.LearningPeriod = 12*time.Hour, 12*time.Hour, 12*time.Hour
	engine := func(l *Local) *detectors.Engine {
		e, err := detectors.NewEngine(cfg, detectors.Options{Registerer: prometheus.NewRegistry(), Baselines: l})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.LoadBaselines(testContext(t)); err != nil {
			t.Fatal(err)
		}
		return e
	}
	open := func() *Local {
		l, err := NewLocal(Config{DataDir: dir}, LocalOptions{Baselines: BaselineSettingsFrom(cfg)})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	e := engine(l)
	alerts := append(e.Observe(traffic(start, 36)), e.Flush()...)
	if err := e.SyncBaselines(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The first export, sync and admin work came before anything was learned; the
	// learning periods are over by the time they repeat.
	for _, a := range alerts {
		if a.FirstSeen.After(start.Add(13 * time.Hour)) {
			t.Errorf("alert after the learning period: %s %s %s", a.Detector, a.Key, a.Summary)
		}
	}
	l = open()
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	e = engine(l)
	if alerts := append(e.Observe(traffic(start.Add(37*time.Hour), 24)), e.Flush()...); len(alerts) != 0 {
		for _, a := range alerts {
			t.Errorf("after the restart: %s %s %s", a.Detector, a.Key, a.Summary)
		}
	}
	// Without what was learned (only that traffic began long ago), the same day pages.
	cold, err := detectors.NewEngine(cfg, detectors.Options{Registerer: prometheus.NewRegistry(), Baselines: detectors.NewMemoryBaselines(detectors.Baselines{TrafficSince: start}, detectors.AllBaselines)})
	if err != nil {
		t.Fatal(err)
	}
	if err := cold.LoadBaselines(testContext(t)); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, a := range append(cold.Observe(traffic(start.Add(37*time.Hour), 24)), cold.Flush()...) {
		got[a.Detector] = true
	}
	for _, d := range []string{detectors.QuietEndpointSpike, detectors.ObjectEnumeration, detectors.PrivilegeAnomaly} {
		if !got[d] {
			t.Errorf("a cold start raised no %s: the test does not show what the store keeps", d)
		}
	}
}

// TestLocalBaselinesSince: a load since what an earlier load returned reads exactly the
// entries written in between, across a restart, and laid over the earlier load it
// gives what a whole load gives.
func TestLocalBaselinesSince(t *testing.T) {
	l, restart := openLocal(t)
	ctx := testContext(t)
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	r := rand.New(rand.NewPCG(7, 8))
	snap := randomBaselines(r, 300, 30, base)
	parts := splitUpdate(snap, 6)
	for _, u := range parts[:2] {
		if err := l.UpdateBaselines(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	have, since, err := l.LoadBaselinesSince(ctx, detectors.AllBaselines, 0)
	if err != nil || since == 0 {
		t.Fatalf("whole load: next %d, %v; want a number", since, err)
	}
	// The rest of the snapshot, then everything again with new values (each entry
	// noted a second time), with a restart in between.
	again := randomBaselines(rand.New(rand.NewPCG(9, 10)), 300, 30, base)
	for i, u := range append(parts[2:], splitUpdate(again, 3)...) {
		if i == 2 {
			l = restart()
		}
		if err := l.UpdateBaselines(ctx, u); err != nil {
			t.Fatal(err)
		}
		got, next, err := l.LoadBaselinesSince(ctx, detectors.AllBaselines, since)
		if err != nil {
			t.Fatal(err)
		}
		if next <= since {
			t.Fatalf("update %d: next %d after %d", i, next, since)
		}
		if g, w := entryNames(got), entryNames(u); !slices.Equal(g, w) {
			t.Errorf("update %d: loaded %d entries since the last load, want the %d written", i, len(g), len(w))
		}
		have = overlay(have, got)
		whole, err := l.LoadBaselines(ctx, detectors.AllBaselines)
		if err != nil {
			t.Fatal(err)
		}
		sameBaselines(t, fmt.Sprintf("update %d, laid over the last load", i), have, whole, 0)
		if b, n, _ := l.LoadBaselinesSince(ctx, detectors.AllBaselines, next); n != next || len(entryNames(b)) != 0 {
			t.Errorf("update %d: nothing written, and a load since it read %d entries, next %d (was %d)", i, len(entryNames(b)), n, next)
		}
		since = next
	}
	// A bounded load of the changes keeps their most recent.
	if err := l.UpdateBaselines(ctx, detectors.Baselines{Keys: snap.Keys[:5]}); err != nil {
		t.Fatal(err)
	}
	got, _, _ := l.LoadBaselinesSince(ctx, detectors.BaselineLimits{Keys: 2}, since)
	want := detectors.NewRecentSet(detectors.BaselineLimits{Keys: 2})
	for _, k := range snap.Keys[:5] {
		want.AddKey(k)
	}
	if g, w := entryNames(got), entryNames(want.Baselines()); !slices.Equal(g, w) {
		t.Errorf("bounded load of the changes: %v, want %v", g, w)
	}
	if notes, counted := changeLogSize(t, l); notes != counted {
		t.Errorf("the change log holds %d notes and says %d", notes, counted)
	}
}

// entryNames returns the names of b's entries, each with its kind, sorted.
func entryNames(b detectors.Baselines) []string {
	var out []string
	for _, k := range b.Keys {
		out = append(out, "key "+k.Key)
	}
	for _, r := range b.Routes {
		out = append(out, "route "+r.Route)
	}
	for _, c := range b.Clients {
		out = append(out, "client "+c.Key)
	}
	for _, o := range b.Objects {
		out = append(out, "object "+o.Client+" "+o.Route)
	}
	for _, p := range b.Privileged {
		out = append(out, "privileged "+p.Key)
	}
	slices.Sort(out)
	return out
}

// overlay returns have with the entries of changes in place of its own.
func overlay(have, changes detectors.Baselines) detectors.Baselines {
	out := detectors.Baselines{TrafficSince: changes.TrafficSince}
	out.Keys = overlayList(have.Keys, changes.Keys, func(k detectors.KeyBaseline) string { return k.Key })
	out.Routes = overlayList(have.Routes, changes.Routes, func(r detectors.RouteBaseline) string { return r.Route })
	out.Clients = overlayList(have.Clients, changes.Clients, func(c detectors.ClientBaseline) string { return c.Key })
	out.Objects = overlayList(have.Objects, changes.Objects, func(o detectors.ObjectBaseline) string { return o.Client + " " + o.Route })
	out.Privileged = overlayList(have.Privileged, changes.Privileged, func(p detectors.PrivilegeBaseline) string { return p.Key })
	out.Sort()
	return out
}

func overlayList[T any](have, changes []T, name func(T) string) []T {
	m := map[string]T{}
	for _, e := range have {
		m[name(e)] = e
	}
	for _, e := range changes {
		m[name(e)] = e
	}
	return slices.Collect(maps.Values(m))
}

// changeLogSize returns how many notes l's change log holds, and how many it says.
func changeLogSize(t *testing.T, l *Local) (notes, counted int) {
	t.Helper()
	err := l.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketBaselineChanges); b != nil {
			notes = b.Stats().KeyN
		}
		n, _ := metaTime(tx.Bucket(bucketBaselineMeta), metaNotes)
		counted = int(n)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return notes, counted
}

// TestLocalChangeLogBounded: past its bound the change log drops its oldest notes, and
// a load since before them reads every entry, while one since after them still reads
// only the changes.
func TestLocalChangeLogBounded(t *testing.T) {
	l, _ := openLocal(t)
	l.maxNotes = 40
	ctx := testContext(t)
	snap := randomBaselines(rand.New(rand.NewPCG(11, 12)), 30, 0, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	write := func(keys []detectors.KeyBaseline) uint64 {
		t.Helper()
		if err := l.UpdateBaselines(ctx, detectors.Baselines{Keys: keys}); err != nil {
			t.Fatal(err)
		}
		_, next, err := l.LoadBaselinesSince(ctx, detectors.AllBaselines, math.MaxUint64)
		if err != nil {
			t.Fatal(err)
		}
		return next
	}
	first := write(snap.Keys[:20])
	mid := write(snap.Keys[20:25])
	write(snap.Keys[25:]) // 30 notes: under the bound
	if b, _, _ := l.LoadBaselinesSince(ctx, detectors.AllBaselines, first); len(b.Keys) != 10 {
		t.Fatalf("under the bound, since the first write: %d keys, want the 10 written after it", len(b.Keys))
	}
	// 52 notes: the oldest go, down to 30, through the first write and into the second.
	last := write(snap.Keys[:22])
	if notes, counted := changeLogSize(t, l); notes != 30 || counted != 30 {
		t.Errorf("past the bound: %d notes, counted %d; want 30", notes, counted)
	}
	if b, _, _ := l.LoadBaselinesSince(ctx, detectors.AllBaselines, first); len(b.Keys) != 30 {
		t.Errorf("since a write whose successor lost notes: %d keys, want every one of the 30", len(b.Keys))
	}
	if b, _, _ := l.LoadBaselinesSince(ctx, detectors.AllBaselines, mid); len(b.Keys) != 27 {
		t.Errorf("since the write whose notes went last: %d keys, want the 27 written after it", len(b.Keys))
	}
	if b, n, _ := l.LoadBaselinesSince(ctx, detectors.AllBaselines, last); len(b.Keys) != 0 || n != last {
		t.Errorf("since the last write: %d keys, next %d; want none and %d", len(b.Keys), n, last)
	}
}
