package store

import (
	"cmp"
	"context"
	"fmt"
	"iter"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

var (
	_ detectors.BaselineStore  = (*ClickHouse)(nil)
	_ detectors.BaselineStore  = (*Local)(nil)
	_ detectors.BaselineLookup = (*ClickHouse)(nil)
	_ detectors.BaselineLookup = (*Local)(nil)
)

// baselineStore is what the suite needs of a store: the detectors' interface, the
// past, and an archive to rebuild the past from.
type baselineStore interface {
	detectors.BaselineStore
	detectors.BaselineLookup
	BaselinesAsOf(ctx context.Context, t time.Time) (detectors.Baselines, error)
	ArchiveEvents(ctx context.Context, evs []ingest.Event) error
	Flush(ctx context.Context) error
	ReadEvents(ctx context.Context, from, to time.Time, key string) iter.Seq2[ingest.Event, error]
}

// suiteSettings are the detector settings the suite's stores run with: short spans,
// so that a few hours of events cover the history and five time constants.
var suiteSettings = BaselineSettings{History: 6 * time.Hour, LearningPeriod: time.Hour, PeakMemory: time.Hour,
	ClientLearningPeriod: time.Hour, ClientPeakMemory: time.Hour, ObjectPeakMemory: time.Hour, PrivilegeHistory: 6 * time.Hour,
	Window: 5 * time.Minute, ClientWindow: 10 * time.Minute, Hot: 4, ClientHot: 2}

// A storeOpener opens an empty store for one subtest, and returns with it a function
// that closes it and opens it again on the same data (a restart).
type storeOpener func(t *testing.T) (baselineStore, func() baselineStore)

// testBaselines is the behavioural suite of a baseline store. Its model is
// detectors.MemoryBaselines: after the same updates, a store loads what the model does.
func testBaselines(t *testing.T, open storeOpener) {
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)

	t.Run("round trip", func(t *testing.T) {
		s, _ := open(t)
		ctx := testContext(t)
		model := detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines)
		r := rand.New(rand.NewPCG(1, 2))
		snap := randomBaselines(r, 700, 40, base)
		for _, u := range splitUpdate(snap, 4) {
			update(t, s, model, u)
		}
		if got, _ := s.LoadBaselines(ctx, detectors.AllBaselines); len(got.Keys) != 700 || len(got.Routes) != 40 || len(got.Clients) != 700 ||
			len(got.Objects) != 40 || len(got.Privileged) != 70 {
			t.Fatalf("loaded %d keys, %d routes, %d clients, %d objects, %d privileged keys; want 700, 40, 700, 40 and 70",
				len(got.Keys), len(got.Routes), len(got.Clients), len(got.Objects), len(got.Privileged))
		}
		sameAsModel(t, "after four updates", s, model)
		// An empty update changes nothing and writes nothing.
		if err := s.UpdateBaselines(ctx, detectors.Baselines{}); err != nil {
			t.Fatal(err)
		}
		sameAsModel(t, "after an empty update", s, model)
	})

	t.Run("a bounded load keeps the most recent", func(t *testing.T) {
		s, _ := open(t)
		ctx := testContext(t)
		model := detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines)
		r := rand.New(rand.NewPCG(3, 4))
		snap := randomBaselines(r, 300, 40, base)
		// Ten keys last seen at the same, latest, time: the limit cuts through them,
		// and keeps the smaller keys.
		tie := base.Add(600*time.Hour + 7*time.Millisecond)
		for i := range 10 {
			snap.Keys = append(snap.Keys, detectors.KeyBaseline{Key: fmt.Sprintf("tied-%02d", 9-i), FirstSeen: base, Events: 1,
				Countries: []detectors.CountryBaseline{{Country: "DE", FirstSeen: base, LastSeen: tie, Events: 1}}})
		}
		for _, u := range splitUpdate(snap, 3) {
			update(t, s, model, u)
		}
		lim := detectors.BaselineLimits{Keys: 7, Routes: 11, Clients: 50, Objects: 9, Privileged: 4}
		got, err := s.LoadBaselines(ctx, lim)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := model.LoadBaselines(ctx, lim)
		sameBaselines(t, "bounded load", got, want, 0)
		if names := keyNames(got.Keys); !slices.Equal(names, []string{"tied-00", "tied-01", "tied-02", "tied-03", "tied-04", "tied-05", "tied-06"}) {
			t.Errorf("bounded load kept keys %v, want the seven smallest of the ten last seen latest", names)
		}
		// The clients kept are the 50 of the latest as-of or peak, by a plain sort.
		all := slices.Clone(snap.Clients)
		last := func(c detectors.ClientBaseline) int64 { return max(c.AsOf.UnixMilli(), c.PeakAt.UnixMilli()) }
		slices.SortFunc(all, func(a, b detectors.ClientBaseline) int {
			return cmp.Or(cmp.Compare(last(b), last(a)), strings.Compare(a.Key, b.Key))
		})
		var wantClients, gotClients []string
		for _, c := range all[:50] {
			wantClients = append(wantClients, c.Key)
		}
		for _, c := range got.Clients {
			gotClients = append(gotClients, c.Key)
		}
		slices.Sort(wantClients)
		if !slices.Equal(gotClients, wantClients) {
			t.Errorf("bounded load kept clients\n %v\nwant\n %v", gotClients, wantClients)
		}
		// A limit of 0 loads none of that kind.
		if none, _ := s.LoadBaselines(ctx, detectors.BaselineLimits{Routes: 1}); len(none.Keys)+len(none.Clients)+len(none.Objects)+len(none.Privileged) != 0 || len(none.Routes) != 1 {
			t.Errorf("limits of 0: loaded %d keys, %d routes, %d clients, %d objects, %d privileged keys; want 1 route only",
				len(none.Keys), len(none.Routes), len(none.Clients), len(none.Objects), len(none.Privileged))
		}
	})

	t.Run("a lookup returns what the store holds of the keys asked", func(t *testing.T) {
		s, _ := open(t)
		ctx := testContext(t)
		model := detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines)
		r := rand.New(rand.NewPCG(7, 8))
		snap := randomBaselines(r, 200, 30, base)
		for _, u := range splitUpdate(snap, 2) {
			update(t, s, model, u)
		}
		// Every tenth key (privileged ones among them), the clients of some objects, a
		// key and a route the store never heard of, and keys with quotes and
		// backslashes, which must reach the query as values.
		var keys, routes []string
		for i := 0; i < len(snap.Keys); i += 10 {
			keys = append(keys, snap.Keys[i].Key)
		}
		keys = append(keys, snap.Objects[3].Client, "no-such-key", `it's \ 'quoted'`)
		routes = append(routes, snap.Routes[0].Route, snap.Routes[7].Route, "GET /no/such/route")
		evil := detectors.KeyBaseline{Key: `it's \ 'quoted'`, FirstSeen: base, Events: 3,
			Countries: []detectors.CountryBaseline{{Country: "FR", FirstSeen: base, LastSeen: base.Add(time.Hour), Events: 3}}}
		update(t, s, model, detectors.Baselines{Keys: []detectors.KeyBaseline{evil}})
		got, err := s.LookupBaselines(ctx, keys, routes)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := model.LookupBaselines(ctx, keys, routes)
		if len(want.Keys) < 20 || len(want.Objects) == 0 || len(want.Privileged) == 0 || len(want.Routes) != 2 {
			t.Fatalf("the model found %d keys, %d objects, %d privileged, %d routes: the test tests too little",
				len(want.Keys), len(want.Objects), len(want.Privileged), len(want.Routes))
		}
		sameBaselines(t, "lookup", got, want, 0)
		if none, err := s.LookupBaselines(ctx, nil, nil); err != nil || len(none.Keys)+len(none.Routes) != 0 {
			t.Fatalf("an empty lookup: %+v, %v", none, err)
		}
	})

	t.Run("a later upsert replaces the whole entry", func(t *testing.T) {
		s, _ := open(t)
		model := detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines)
		at := func(h int) time.Time { return base.Add(time.Duration(h)*time.Hour + 123*time.Millisecond) }
		first := detectors.Baselines{
			TrafficSince: at(1),
			Keys: []detectors.KeyBaseline{
				{Key: "k1", FirstSeen: at(1), Events: 10, Countries: []detectors.CountryBaseline{
					{Country: "DE", FirstSeen: at(1), LastSeen: at(2), Events: 6},
					{Country: "FR", FirstSeen: at(1), LastSeen: at(3), Events: 4},
				}},
				{Key: "k2", FirstSeen: at(2), Events: 1, Countries: []detectors.CountryBaseline{
					{Country: "US", FirstSeen: at(2), LastSeen: at(2), Events: 1},
				}},
			},
			Routes:     []detectors.RouteBaseline{{Route: "GET /a", RatePerMinute: 1.5, AsOf: at(3), Peak: 30, PeakAt: at(2)}},
			Clients:    []detectors.ClientBaseline{{Key: "k1", FirstSeen: at(1), RatePerMinute: 3, AsOf: at(3), Peak: 40, PeakAt: at(2)}},
			Objects:    []detectors.ObjectBaseline{{Client: "k1", Route: "GET /v1/invoices/{id}", Peak: 120, PeakAt: at(2)}},
			Privileged: []detectors.PrivilegeBaseline{{Key: "k2", FirstSeen: at(2), LastSeen: at(3), Events: 4}},
		}
		update(t, s, model, first)
		// k1 forgets FR and learns BR; the route's rate falls; a later traffic start is
		// not an earlier one and changes nothing.
		second := detectors.Baselines{
			TrafficSince: at(5),
			Keys: []detectors.KeyBaseline{
				{Key: "k1", FirstSeen: at(1), Events: 30, Countries: []detectors.CountryBaseline{
					{Country: "BR", FirstSeen: at(9), LastSeen: at(9), Events: 1},
					{Country: "DE", FirstSeen: at(1), LastSeen: at(8), Events: 25},
				}},
			},
			Routes:     []detectors.RouteBaseline{{Route: "GET /a", RatePerMinute: 0.25, AsOf: at(9)}}, // its peak forgotten
			Clients:    []detectors.ClientBaseline{{Key: "k1", FirstSeen: at(1), RatePerMinute: 2, AsOf: at(9), Peak: 55, PeakAt: at(8)}},
			Objects:    []detectors.ObjectBaseline{{Client: "k1", Route: "GET /v1/invoices/{id}", Peak: 300, PeakAt: at(9)}},
			Privileged: []detectors.PrivilegeBaseline{{Key: "k2", FirstSeen: at(2), LastSeen: at(9), Events: 9}},
		}
		update(t, s, model, second)
		sameAsModel(t, "after the second update", s, model)
		// An earlier traffic start wins.
		update(t, s, model, detectors.Baselines{TrafficSince: base})
		got := sameAsModel(t, "after an earlier traffic start", s, model)
		if !got.TrafficSince.Equal(base) || len(got.Keys[0].Countries) != 2 || got.Routes[0].Peak != 0 || got.Clients[0].Peak != 55 ||
			got.Objects[0].Peak != 300 || got.Privileged[0].Events != 9 {
			t.Errorf("loaded %+v", got)
		}
	})

	t.Run("a restart keeps everything", func(t *testing.T) {
		s, reopen := open(t)
		model := detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines)
		r := rand.New(rand.NewPCG(3, 4))
		snap := randomBaselines(r, 300, 10, base)
		update(t, s, model, snap)
		s = reopen()
		sameAsModel(t, "after a restart", s, model)
		// Updates after the restart win over those before it.
		later := randomBaselines(r, 300, 10, base.Add(time.Hour))
		later.Keys = later.Keys[:100]
		later.Routes = later.Routes[:5]
		later.Clients = later.Clients[:100]
		later.Objects = later.Objects[:5]
		update(t, s, model, later)
		s = reopen()
		sameAsModel(t, "after updates and a second restart", s, model)
	})

	t.Run("as of a time", func(t *testing.T) {
		s, _ := open(t)
		ctx := testContext(t)
		evs := asOfEvents(base)
		for chunk := range slices.Chunk(evs, 500) {
			if err := s.ArchiveEvents(ctx, chunk); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		end := evs[len(evs)-1].Time.Add(time.Millisecond)
		now := storedBaselines(evs, end, suiteSettings)
		if err := s.UpdateBaselines(ctx, now); err != nil {
			t.Fatal(err)
		}
		for _, at := range []time.Time{
			base.Add(9*time.Hour + 30*time.Minute + 17*time.Millisecond),
			base.Add(7 * time.Hour),
			base.Add(2 * time.Hour),
			end,
		} {
			got, err := s.BaselinesAsOf(ctx, at)
			if err != nil {
				t.Fatal(err)
			}
			want := asOfWant(evs, at, now, suiteSettings)
			sameBaselines(t, "as of "+at.Format(time.RFC3339Nano), got, want, 1e-9)
		}
		// Before anything: nothing.
		got, err := s.BaselinesAsOf(ctx, base.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		sameBaselines(t, "before the first event", got, detectors.Baselines{}, 0)
	})

	t.Run("as of a time, the baselines of peaks and privileges", func(t *testing.T) {
		s, _ := open(t)
		ctx := testContext(t)
		at := func(h int) time.Time { return base.Add(time.Duration(h) * time.Hour) }
		u := detectors.Baselines{
			Routes: []detectors.RouteBaseline{
				{Route: "GET /a", RatePerMinute: 1, AsOf: at(1), Peak: 30, PeakAt: at(1)},
				{Route: "GET /b", RatePerMinute: 2, AsOf: at(1), Peak: 9, PeakAt: at(5)},
			},
			Clients: []detectors.ClientBaseline{
				{Key: "early", FirstSeen: at(0), RatePerMinute: 1, AsOf: at(1), Peak: 5, PeakAt: at(2)},
				{Key: "late", FirstSeen: at(0), RatePerMinute: 1, AsOf: at(6), Peak: 5, PeakAt: at(2)},
			},
			Objects: []detectors.ObjectBaseline{{Client: "c", Route: "GET /x", Peak: 10, PeakAt: at(1)}, {Client: "c", Route: "GET /y", Peak: 10, PeakAt: at(5)}},
			Privileged: []detectors.PrivilegeBaseline{
				{Key: "p1", FirstSeen: at(0), LastSeen: at(1), Events: 3},
				{Key: "p2", FirstSeen: at(0), LastSeen: at(6), Events: 3},
				{Key: "p3", FirstSeen: at(5), LastSeen: at(5), Events: 1},
			},
		}
		if err := s.UpdateBaselines(ctx, u); err != nil {
			t.Fatal(err)
		}
		got, err := s.BaselinesAsOf(ctx, at(3))
		if err != nil {
			t.Fatal(err)
		}
		want := detectors.Baselines{
			Routes:     []detectors.RouteBaseline{u.Routes[0], {Route: "GET /b", RatePerMinute: 2, AsOf: at(1)}},
			Clients:    u.Clients[:1],
			Objects:    u.Objects[:1],
			Privileged: []detectors.PrivilegeBaseline{u.Privileged[0], {Key: "p2", FirstSeen: at(0), LastSeen: at(3).Add(-time.Millisecond), Events: 3}},
		}
		sameBaselines(t, "as of "+at(3).Format(time.RFC3339), got, want, 0)
	})

	t.Run("as of a time without an archive", func(t *testing.T) {
		s, _ := open(t)
		ctx := testContext(t)
		evs := asOfEvents(base)
		end := evs[len(evs)-1].Time.Add(time.Millisecond)
		now := storedBaselines(evs, end, suiteSettings)
		if err := s.UpdateBaselines(ctx, now); err != nil {
			t.Fatal(err)
		}
		at := base.Add(9 * time.Hour)
		got, err := s.BaselinesAsOf(ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		// Only what the stored entries themselves say: entries first seen before at;
		// entries seen again later taken as seen right up to at, with their counts;
		// route rates folded at or after at unknown.
		var want detectors.Baselines
		want.TrafficSince = now.TrafficSince
		for _, k := range now.Keys {
			if !k.FirstSeen.Before(at) {
				continue
			}
			kb := detectors.KeyBaseline{Key: k.Key, FirstSeen: k.FirstSeen, Events: k.Events}
			for _, c := range k.Countries {
				if !c.FirstSeen.Before(at) {
					continue
				}
				if !c.LastSeen.Before(at) {
					c.LastSeen = at.Add(-time.Millisecond)
				}
				kb.Countries = append(kb.Countries, c)
			}
			want.Keys = append(want.Keys, kb)
		}
		for _, r := range now.Routes {
			if r.AsOf.Before(at) {
				want.Routes = append(want.Routes, r)
			}
		}
		for _, c := range now.Clients {
			if c.FirstSeen.Before(at) && c.AsOf.Before(at) && c.PeakAt.Before(at) {
				want.Clients = append(want.Clients, c)
			}
		}
		sameBaselines(t, "as of "+at.Format(time.RFC3339), got, want, 0)
	})
}

// update applies u to the store and the model.
func update(t *testing.T, s detectors.BaselineStore, model *detectors.MemoryBaselines, u detectors.Baselines) {
	t.Helper()
	ctx := testContext(t)
	if err := s.UpdateBaselines(ctx, u); err != nil {
		t.Fatalf("UpdateBaselines: %v", err)
	}
	if err := model.UpdateBaselines(ctx, u); err != nil {
		t.Fatal(err)
	}
}

// sameAsModel checks that s loads what the model holds, and returns it.
func sameAsModel(t *testing.T, what string, s detectors.BaselineStore, model *detectors.MemoryBaselines) detectors.Baselines {
	t.Helper()
	ctx := testContext(t)
	got, err := s.LoadBaselines(ctx, detectors.AllBaselines)
	if err != nil {
		t.Fatalf("%s: LoadBaselines: %v", what, err)
	}
	want, _ := model.LoadBaselines(ctx, detectors.AllBaselines)
	sameBaselines(t, what, got, want, 0)
	return got
}

// sameBaselines compares baselines, empty slices equal to nil and route rates within
// a relative tolerance.
func sameBaselines(t *testing.T, what string, got, want detectors.Baselines, tol float64) {
	t.Helper()
	if !got.TrafficSince.Equal(want.TrafficSince) {
		t.Errorf("%s: traffic since %v, want %v", what, got.TrafficSince, want.TrafficSince)
	}
	if len(got.Keys) != len(want.Keys) {
		t.Errorf("%s: %d keys, want %d\n got %v\nwant %v", what, len(got.Keys), len(want.Keys), keyNames(got.Keys), keyNames(want.Keys))
	} else {
		for i := range got.Keys {
			g, w := got.Keys[i], want.Keys[i]
			if len(g.Countries) == 0 && len(w.Countries) == 0 {
				g.Countries, w.Countries = nil, nil
			}
			if !reflect.DeepEqual(g, w) {
				t.Errorf("%s: key %d\n got %+v\nwant %+v", what, i, g, w)
				break
			}
		}
	}
	if len(got.Routes) != len(want.Routes) {
		t.Errorf("%s: %d routes, want %d\n got %+v\nwant %+v", what, len(got.Routes), len(want.Routes), got.Routes, want.Routes)
		return
	}
	for i := range got.Routes {
		g, w := got.Routes[i], want.Routes[i]
		if g.Route != w.Route || !g.AsOf.Equal(w.AsOf) || math.Abs(g.RatePerMinute-w.RatePerMinute) > tol*math.Abs(w.RatePerMinute) ||
			g.Peak != w.Peak || !g.PeakAt.Equal(w.PeakAt) {
			t.Errorf("%s: route %d\n got %+v\nwant %+v", what, i, g, w)
			break
		}
	}
	// A rebuilt client rate is a sum of floats in the store's order, not the test's.
	if len(got.Clients) == len(want.Clients) {
		for i := range got.Clients {
			if g, w := got.Clients[i].RatePerMinute, want.Clients[i].RatePerMinute; math.Abs(g-w) <= tol*math.Abs(w) {
				got.Clients[i].RatePerMinute = w
			}
		}
	}
	sameList(t, what+": clients", got.Clients, want.Clients)
	sameList(t, what+": objects", got.Objects, want.Objects)
	sameList(t, what+": privileged keys", got.Privileged, want.Privileged)
}

// sameList compares two lists of baselines entry by entry.
func sameList[T any](t *testing.T, what string, got, want []T) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d, want %d", what, len(got), len(want))
		return
	}
	for i := range got {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("%s: %d\n got %+v\nwant %+v", what, i, got[i], want[i])
			return
		}
	}
}

func keyNames(keys []detectors.KeyBaseline) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.Key)
	}
	if len(out) > 20 {
		out = append(out[:20], "...")
	}
	return out
}

var suiteCountries = []string{"BR", "DE", "FR", "IN", "JP", "US"}

// randomBaselines returns a snapshot of n keys and routes, times from base on, at
// millisecond precision as the detectors keep them.
func randomBaselines(r *rand.Rand, keys, routes int, base time.Time) detectors.Baselines {
	at := func() time.Time {
		return base.Add(time.Duration(r.Int64N(int64(240 * time.Hour)))).Truncate(time.Millisecond)
	}
	snap := detectors.Baselines{TrafficSince: base.Add(time.Duration(r.IntN(1000)) * time.Millisecond)}
	for i := range keys {
		k := detectors.KeyBaseline{Key: fmt.Sprintf("key-%05d-%s", i, strings.Repeat("x", r.IntN(20))), FirstSeen: at(), Events: r.Uint64N(1 << 40)}
		for _, c := range suiteCountries {
			if r.IntN(3) == 0 {
				first := at()
				k.Countries = append(k.Countries, detectors.CountryBaseline{Country: c, FirstSeen: first, LastSeen: first.Add(time.Duration(r.IntN(1e9)) * time.Millisecond), Events: r.Uint64N(1 << 32)})
			}
		}
		snap.Keys = append(snap.Keys, k)
	}
	for i := range routes {
		rb := detectors.RouteBaseline{Route: fmt.Sprintf("%s /v1/r%03d/{id}", []string{"GET", "POST"}[i%2], i), RatePerMinute: r.ExpFloat64() * 100, AsOf: at()}
		if i%3 != 0 { // and some without a peak
			rb.Peak, rb.PeakAt = float64(r.IntN(5000)), at()
		}
		snap.Routes = append(snap.Routes, rb)
		snap.Objects = append(snap.Objects, detectors.ObjectBaseline{Client: snap.Keys[i%len(snap.Keys)].Key, Route: rb.Route,
			Peak: float64(1 + r.IntN(2000)), PeakAt: at()})
	}
	for i, k := range snap.Keys {
		snap.Clients = append(snap.Clients, detectors.ClientBaseline{Key: k.Key, FirstSeen: at(), RatePerMinute: r.ExpFloat64() * 10, AsOf: at(),
			Peak: r.ExpFloat64() * 500, PeakAt: at()})
		if i%10 == 0 {
			first := at()
			snap.Privileged = append(snap.Privileged, detectors.PrivilegeBaseline{Key: k.Key, FirstSeen: first,
				LastSeen: first.Add(time.Duration(r.IntN(1e9)) * time.Millisecond), Events: r.Uint64N(1000)})
		}
	}
	slices.SortFunc(snap.Keys, func(a, b detectors.KeyBaseline) int { return strings.Compare(a.Key, b.Key) })
	slices.SortFunc(snap.Routes, func(a, b detectors.RouteBaseline) int { return strings.Compare(a.Route, b.Route) })
	slices.SortFunc(snap.Clients, func(a, b detectors.ClientBaseline) int { return strings.Compare(a.Key, b.Key) })
	slices.SortFunc(snap.Objects, func(a, b detectors.ObjectBaseline) int {
		return cmp.Or(strings.Compare(a.Client, b.Client), strings.Compare(a.Route, b.Route))
	})
	slices.SortFunc(snap.Privileged, func(a, b detectors.PrivilegeBaseline) int { return strings.Compare(a.Key, b.Key) })
	return snap
}

// splitUpdate deals snap's entries round-robin into n updates; the first carries the
// traffic start.
func splitUpdate(snap detectors.Baselines, n int) []detectors.Baselines {
	out := make([]detectors.Baselines, n)
	out[0].TrafficSince = snap.TrafficSince
	for i, k := range snap.Keys {
		out[i%n].Keys = append(out[i%n].Keys, k)
	}
	for i, r := range snap.Routes {
		out[i%n].Routes = append(out[i%n].Routes, r)
	}
	for i, c := range snap.Clients {
		out[i%n].Clients = append(out[i%n].Clients, c)
	}
	for i, o := range snap.Objects {
		out[i%n].Objects = append(out[i%n].Objects, o)
	}
	for i, p := range snap.Privileged {
		out[i%n].Privileged = append(out[i%n].Privileged, p)
	}
	return out
}

// asOfEvents returns twelve hours of events from base whose keys show every case of
// reconstructAsOf: first seen before and after a time, seen from a country again later
// or not, seen again only after the history, and quiet routes.
func asOfEvents(base time.Time) []ingest.Event {
	r := rand.New(rand.NewPCG(5, 6))
	var evs []ingest.Event
	for i := 0; i < 3000; i++ {
		at := base.Add(time.Duration(i) * 14400 * time.Millisecond).Add(time.Duration(r.IntN(1000)) * time.Millisecond)
		k := r.IntN(40)
		ev := ingest.Event{
			Time:      at,
			Source:    "awswaf",
			ClientKey: fmt.Sprintf("key-%02d", k),
			Country:   suiteCountries[(k+r.IntN(2+k%3))%len(suiteCountries)],
			Method:    "GET",
			Route:     fmt.Sprintf("/v1/r%d", r.IntN(5)),
			Status:    200,
			RequestID: fmt.Sprintf("req-%d", i),
		}
		switch {
		case k == 0: // key-00 is seen in its first hour and its last only
			if at.Sub(base) > time.Hour && at.Sub(base) < 11*time.Hour {
				continue
			}
		case k == 1: // key-01 appears after six hours
			if at.Sub(base) < 6*time.Hour {
				continue
			}
		case k == 2: // key-02 has events without a country, which new_country does not count
			if i%2 == 0 {
				ev.Country = ""
			}
		}
		if i%7 == 0 {
			ev.Route = "/v1/quiet" // a route with traffic
		}
		if i < 500 && i%50 == 0 {
			ev.Method, ev.Route = "POST", "/v1/early" // only in the first two hours
		}
		evs = append(evs, ev)
	}
	return evs
}

// storedBaselines returns what the detectors would have written after evs: per key
// and country, counts and times of the events with a country; per route, the rate
// folded at the end of its last whole minute before end, as of then.
func storedBaselines(evs []ingest.Event, end time.Time, s BaselineSettings) detectors.Baselines {
	snap := learn(evs, end, s)
	snap.Routes = nil
	minutes := map[string][]int64{} // route → ends of its events' minutes
	for _, ev := range evs {
		if mEnd := (floorDiv(ev.Time.UnixMilli(), 60000) + 1) * 60000; mEnd <= end.UnixMilli() {
			route := ev.Method + " " + ev.Route
			minutes[route] = append(minutes[route], mEnd)
		}
	}
	for route, ends := range minutes {
		asOf := slices.Max(ends)
		var rate float64
		for _, e := range ends {
			rate += routeWeight(asOf, e, s.tau())
		}
		// A peak at the route's last minute: as of an earlier time it is rebuilt.
		snap.Routes = append(snap.Routes, detectors.RouteBaseline{Route: route, RatePerMinute: rate, AsOf: msTime(asOf), Peak: 40, PeakAt: msTime(asOf)})
	}
	slices.SortFunc(snap.Routes, func(a, b detectors.RouteBaseline) int { return strings.Compare(a.Route, b.Route) })
	// Each key's rate as of its last whole minute, and a peak: the even keys' in their
	// first hour, the odd keys' at their last minute, so that as of a time between
	// them the first is kept and the second rebuilt from the archive.
	first, ends := map[string]int64{}, map[string][]int64{}
	for _, ev := range evs {
		ms := ev.Time.UnixMilli()
		if f, ok := first[ev.ClientKey]; !ok || ms < f {
			first[ev.ClientKey] = ms
		}
		if mEnd := (floorDiv(ms, 60000) + 1) * 60000; mEnd <= end.UnixMilli() {
			ends[ev.ClientKey] = append(ends[ev.ClientKey], mEnd)
		}
	}
	snap.Clients = nil
	for key, es := range ends {
		asOf := slices.Max(es)
		cb := detectors.ClientBaseline{Key: key, FirstSeen: msTime(first[key]), AsOf: msTime(asOf), Peak: 7}
		for _, e := range es {
			cb.RatePerMinute += routeWeight(asOf, e, s.clientTau())
		}
		cb.PeakAt = msTime(first[key] + 30*60000)
		if len(key) > 0 && key[len(key)-1]%2 == 1 {
			cb.PeakAt = msTime(asOf)
		}
		snap.Clients = append(snap.Clients, cb)
	}
	slices.SortFunc(snap.Clients, func(a, b detectors.ClientBaseline) int { return strings.Compare(a.Key, b.Key) })
	return snap
}

// asOfWant returns what BaselinesAsOf must answer for t when the archive holds evs and
// the store holds stored: the keys learn gives, and each route's stored rate if it was
// folded before t, else its rate rebuilt as of t from the whole minutes before it; each
// client key first seen before t as stored if its rate and peak moved before t, else
// with its rate rebuilt as a route's and its peak if reached before t.
func asOfWant(evs []ingest.Event, t time.Time, stored detectors.Baselines, s BaselineSettings) detectors.Baselines {
	want := learn(evs, t, s)
	var routes []detectors.RouteBaseline
	rebuilt := map[string]detectors.RouteBaseline{}
	for _, r := range want.Routes {
		rebuilt[r.Route] = r
	}
	for _, r := range stored.Routes {
		if r.AsOf.Before(t) {
			routes = append(routes, r)
		} else if rb, ok := rebuilt[r.Route]; ok {
			routes = append(routes, rb)
		} else {
			continue
		}
		rb := &routes[len(routes)-1]
		rb.Peak, rb.PeakAt = r.Peak, r.PeakAt
		if !r.PeakAt.Before(t) {
			rb.Peak, rb.PeakAt = peakWant(evs, func(ev *ingest.Event) bool { return ev.Method+" "+ev.Route == r.Route }, t, s.Window, s.PeakMemory, s.Hot)
		}
	}
	want.Routes = routes
	rates := map[string]float64{}
	for _, c := range want.Clients {
		rates[c.Key] = c.RatePerMinute
	}
	want.Clients = nil
	for _, c := range stored.Clients {
		rate, ok := rates[c.Key]
		switch {
		case !c.FirstSeen.Before(t):
		case c.AsOf.Before(t) && c.PeakAt.Before(t):
			want.Clients = append(want.Clients, c)
		case ok:
			cb := detectors.ClientBaseline{Key: c.Key, FirstSeen: c.FirstSeen, RatePerMinute: rate, AsOf: t}
			if c.PeakAt.Before(t) {
				cb.Peak, cb.PeakAt = c.Peak, c.PeakAt
			} else {
				cb.Peak, cb.PeakAt = peakWant(evs, func(ev *ingest.Event) bool { return ev.ClientKey == c.Key }, t, s.ClientWindow, s.ClientPeakMemory, s.ClientHot)
			}
			want.Clients = append(want.Clients, cb)
		}
	}
	return want
}

// peakWant is the peak as of t that BaselinesAsOf must rebuild from the events of evs
// that match takes, found by counting them anew for every minute end within three
// peak memories before t: the window ending there counts the events whose minutes
// start within it and end by t; one of at least hot events that is at least the peak
// decayed to its end replaces it.
func peakWant(evs []ingest.Event, match func(*ingest.Event) bool, t time.Time, window, peakMemory time.Duration, hot uint32) (float64, time.Time) {
	tm := t.UnixMilli()
	from := floorDiv(tm-3*peakMemory.Milliseconds(), 60000) * 60000
	w := (window.Milliseconds() + 59999) / 60000 * 60000
	var starts []int64
	for i := range evs {
		start := floorDiv(evs[i].Time.UnixMilli(), 60000) * 60000
		if match(&evs[i]) && start >= from && start+60000 <= tm {
			starts = append(starts, start)
		}
	}
	var v float64
	var at int64
	for e := from + 60000; e <= tm; e += 60000 {
		var c int
		for _, s := range starts {
			if s >= e-w && s < e {
				c++
			}
		}
		decayed := 0.0
		if v > 0 {
			decayed = v * math.Exp(-float64(e-at)/float64(peakMemory.Milliseconds()))
		}
		if c >= int(hot) && float64(c) >= decayed {
			v, at = float64(c), e
		}
	}
	if v == 0 {
		return 0, time.Time{}
	}
	return v, msTime(at)
}

// learn returns the baselines at t as BaselinesAsOf rebuilds them from an archive
// holding evs: keys and countries first seen before t with the counts of their events
// (with a country) before t; a country's last event before t, or, when it has none
// within history before t, just before that (lookFrom); route and client key rates as
// of t from the whole minutes before t within five of their time constants (clients
// with their rates only).
func learn(evs []ingest.Event, t time.Time, s BaselineSettings) detectors.Baselines {
	tm := t.UnixMilli()
	lookFrom := lookFrom(tm, s.History.Milliseconds(), evs[0].Time.UnixMilli())
	type pair struct {
		first, last, lastBefore int64
		before                  uint64
	}
	keys := map[string]map[string]*pair{}
	var since int64 = math.MaxInt64
	routes := map[string]float64{}
	clients := map[string]float64{}
	for _, ev := range evs {
		ms := ev.Time.UnixMilli()
		since = min(since, ms)
		if ev.Country != "" {
			cs := keys[ev.ClientKey]
			if cs == nil {
				cs = map[string]*pair{}
				keys[ev.ClientKey] = cs
			}
			p := cs[ev.Country]
			if p == nil {
				p = &pair{first: ms, last: ms, lastBefore: noEvent}
				cs[ev.Country] = p
			}
			p.first, p.last = min(p.first, ms), max(p.last, ms)
			if ms < tm {
				p.before++
				if ms >= lookFrom {
					p.lastBefore = max(p.lastBefore, ms)
				}
			}
		}
		mEnd := (floorDiv(ms, 60000) + 1) * 60000
		if mEnd <= tm && ms >= floorDiv(tm-s.asOfSpan(), 60000)*60000 {
			routes[ev.Method+" "+ev.Route] += routeWeight(tm, mEnd, s.tau())
		}
		if mEnd <= tm && ms >= floorDiv(tm-s.clientAsOfSpan(), 60000)*60000 && ev.ClientKey != "" {
			clients[ev.ClientKey] += routeWeight(tm, mEnd, s.clientTau())
		}
	}
	var out detectors.Baselines
	if since < tm {
		out.TrafficSince = msTime(since)
	}
	for key, cs := range keys {
		first := int64(math.MaxInt64)
		for _, p := range cs {
			first = min(first, p.first)
		}
		if first >= tm {
			continue
		}
		kb := detectors.KeyBaseline{Key: key, FirstSeen: msTime(first)}
		for c, p := range cs {
			kb.Events += p.before
			if p.first >= tm {
				continue
			}
			cb := detectors.CountryBaseline{Country: c, FirstSeen: msTime(p.first), LastSeen: msTime(p.last), Events: p.before}
			if p.last >= tm {
				last := max(p.first, lookFrom-1)
				if p.lastBefore != noEvent {
					last = p.lastBefore
				}
				cb.LastSeen = msTime(last)
			}
			kb.Countries = append(kb.Countries, cb)
		}
		slices.SortFunc(kb.Countries, func(a, b detectors.CountryBaseline) int { return strings.Compare(a.Country, b.Country) })
		out.Keys = append(out.Keys, kb)
	}
	slices.SortFunc(out.Keys, func(a, b detectors.KeyBaseline) int { return strings.Compare(a.Key, b.Key) })
	for route, w := range routes {
		out.Routes = append(out.Routes, detectors.RouteBaseline{Route: route, RatePerMinute: w, AsOf: msTime(tm)})
	}
	slices.SortFunc(out.Routes, func(a, b detectors.RouteBaseline) int { return strings.Compare(a.Route, b.Route) })
	for key, w := range clients {
		out.Clients = append(out.Clients, detectors.ClientBaseline{Key: key, RatePerMinute: w, AsOf: msTime(tm)})
	}
	slices.SortFunc(out.Clients, func(a, b detectors.ClientBaseline) int { return strings.Compare(a.Key, b.Key) })
	return out
}
