package detectors

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// keyAt is a key baseline last seen at t, from DE.
func keyAt(name string, t time.Time) KeyBaseline {
	return KeyBaseline{Key: name, FirstSeen: t, Events: 1, Countries: []CountryBaseline{{Country: "DE", FirstSeen: t, LastSeen: t, Events: 1}}}
}

func keyList(b Baselines) []string {
	var out []string
	for _, k := range b.Keys {
		out = append(out, k.Key)
	}
	return out
}

// TestMemoryBaselinesForgetLeastRecentlyUpdated: past its limit the store forgets the
// entry updated longest ago (an update of an old key makes it recent again), counts
// it, and keeps no more than the limit however many updates it takes.
func TestMemoryBaselinesForgetLeastRecentlyUpdated(t *testing.T) {
	ctx := t.Context()
	m := NewMemoryBaselines(Baselines{}, BaselineLimits{Keys: 3, Clients: 2})
	up := func(b Baselines) {
		t.Helper()
		if err := m.UpdateBaselines(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	up(Baselines{Keys: []KeyBaseline{keyAt("a", at(0)), keyAt("b", at(time.Minute)), keyAt("c", at(2*time.Minute))}})
	up(Baselines{Keys: []KeyBaseline{keyAt("a", at(3*time.Minute))}}) // a is the most recently updated now
	up(Baselines{Keys: []KeyBaseline{keyAt("d", at(4*time.Minute))}}) // b goes
	got, _ := m.LoadBaselines(ctx, AllBaselines)
	if keys := keyList(got); !slices.Equal(keys, []string{"a", "c", "d"}) {
		t.Fatalf("keys %v, want [a c d]", keys)
	}
	if n := m.Evictions(); n != 1 {
		t.Fatalf("%d evictions, want 1", n)
	}
	// Many updates of few keys, and many keys: the store stays at its limit, and its
	// record of update order does not grow with the updates.
	for i := range 10_000 {
		up(Baselines{Keys: []KeyBaseline{keyAt(fmt.Sprintf("k%d", i%5), at(time.Duration(i)*time.Second))},
			Clients: []ClientBaseline{{Key: fmt.Sprintf("c%d", i), AsOf: at(time.Duration(i) * time.Second)}}})
	}
	got, _ = m.LoadBaselines(ctx, AllBaselines)
	if keys := keyList(got); !slices.Equal(keys, []string{"k2", "k3", "k4"}) {
		t.Fatalf("keys %v, want the three updated last: [k2 k3 k4]", keys)
	}
	if len(got.Clients) != 2 || got.Clients[0].Key != "c9998" || got.Clients[1].Key != "c9999" {
		t.Fatalf("clients %+v, want c9998 and c9999", got.Clients)
	}
	if n := cap(m.keys.order); n > 2*(2*3+64) {
		t.Fatalf("the update order holds room for %d entries for 3 keys", n)
	}
	if n := cap(m.clients.order); n > 2*(2*2+64) {
		t.Fatalf("the update order holds room for %d entries for 2 clients, after 10,000", n)
	}
	// A store of limit 0 holds none of that kind.
	if len(got.Routes) != 0 {
		t.Fatalf("routes %+v under a limit of 0", got.Routes)
	}
}

// TestNewMemoryBaselinesKeepsTheMostRecentOfASnapshot: a snapshot larger than the
// limits is cut to its most recent entries, ties to the smaller key, and a bounded load
// returns the most recent of what the store holds.
func TestNewMemoryBaselinesKeepsTheMostRecentOfASnapshot(t *testing.T) {
	var snap Baselines
	for i := range 10 {
		snap.Keys = append(snap.Keys, keyAt(fmt.Sprintf("k%d", i), at(time.Duration(i%5)*time.Minute)))
	}
	m := NewMemoryBaselines(snap, BaselineLimits{Keys: 5})
	got, _ := m.LoadBaselines(t.Context(), AllBaselines)
	// k4 and k9 at 4m, k3 and k8 at 3m, then k2 (before k7) at 2m.
	if keys := keyList(got); !slices.Equal(keys, []string{"k2", "k3", "k4", "k8", "k9"}) {
		t.Fatalf("kept %v, want [k2 k3 k4 k8 k9]", keys)
	}
	got, _ = m.LoadBaselines(t.Context(), BaselineLimits{Keys: 2})
	if keys := keyList(got); !slices.Equal(keys, []string{"k4", "k9"}) {
		t.Fatalf("a load of 2 returned %v, want [k4 k9]", keys)
	}
}

// TestEngineLoadsNoMoreThanItsDetectorsHold: the engine asks its store for each kind up
// to the max_keys of the detector that learns it, and for nothing a disabled detector
// would learn; a store of many more keys loads only the most recent.
func TestEngineLoadsNoMoreThanItsDetectorsHold(t *testing.T) {
	var snap Baselines
	for i := range 1000 {
		snap.Keys = append(snap.Keys, keyAt(fmt.Sprintf("k%04d", i), at(time.Duration(i)*time.Second)))
		snap.Clients = append(snap.Clients, ClientBaseline{Key: fmt.Sprintf("k%04d", i), AsOf: at(time.Duration(i) * time.Second)})
	}
	cfg := only(NewCountry)
	cfg.NewCountry.MaxKeys = 10
	rec := &limitRecorder{BaselineStore: NewMemoryBaselines(snap, AllBaselines)}
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Baselines: rec})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	if want := (BaselineLimits{Keys: 10}); rec.lim != want {
		t.Fatalf("the engine asked for %+v, want %+v", rec.lim, want)
	}
	if e.nc.tab.live != 10 || e.nc.tab.find("k0999") < 0 || e.nc.tab.find("k0989") >= 0 {
		t.Fatalf("new_country holds %d keys (k0999 %d, k0989 %d), want the 10 most recent", e.nc.tab.live, e.nc.tab.find("k0999"), e.nc.tab.find("k0989"))
	}
}

// limitRecorder records the limits of the last load.
type limitRecorder struct {
	BaselineStore
	lim BaselineLimits
}

func (l *limitRecorder) LoadBaselines(ctx context.Context, lim BaselineLimits) (Baselines, error) {
	l.lim = lim
	return l.BaselineStore.LoadBaselines(ctx, lim)
}

// TestTrafficSinceFromKeys: a snapshot without TrafficSince whose keys were first seen
// two days ago starts the learning periods then, not at the first event observed: a
// store that lost its traffic_since still knows there was traffic.
func TestTrafficSinceFromKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		snap Baselines
		want time.Time
	}{
		{"keys only", Baselines{Keys: []KeyBaseline{{Key: "k", FirstSeen: t0.Add(-48 * time.Hour)}, {Key: "j", FirstSeen: t0.Add(-24 * time.Hour)}}}, t0.Add(-48 * time.Hour)},
		{"traffic_since wins", Baselines{TrafficSince: t0.Add(-time.Hour), Keys: []KeyBaseline{{Key: "k", FirstSeen: t0.Add(-48 * time.Hour)}}}, t0.Add(-time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEngine(DefaultConfig(), Options{Registerer: prometheus.NewRegistry(), Baselines: NewMemoryBaselines(tc.snap, AllBaselines)})
			if err != nil {
				t.Fatal(err)
			}
			if err := e.LoadBaselines(t.Context()); err != nil {
				t.Fatal(err)
			}
			if got := msTime(e.traffic.since); !got.Equal(tc.want) {
				t.Errorf("traffic since %s, want %s", got, tc.want)
			}
		})
	}
}
