package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

func TestLocalBaselines(t *testing.T) {
	testBaselines(t, func(t *testing.T) (baselineStore, func() baselineStore) {
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
		return cur, func() baselineStore {
			if err := cur.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			cur = open()
			return cur
		}
	})
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
	}
	if err := s.UpdateBaselines(ctx, u); err != nil {
		t.Fatal(err)
	}
	keys, routes, err := prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if keys != len(drop) || routes != 1 {
		t.Errorf("pruned %d keys and %d routes, want %d and 1", keys, routes, len(drop))
	}
	settle()
	got, err := s.LoadBaselines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Keys) != len(keep) {
		t.Errorf("%d keys left, want %d", len(got.Keys), len(keep))
	}
	for _, k := range got.Keys {
		if !keep[k.Key] {
			t.Fatalf("key %s kept, want it dropped", k.Key)
		}
		if k.Key == "key-000000" && len(k.Countries) != 2 {
			t.Errorf("key %s lost a country: %+v", k.Key, k.Countries)
		}
	}
	if len(got.Routes) != 2 || got.Routes[0].Route != "GET /fresh" || got.Routes[1].Route != "GET /recent" {
		t.Errorf("routes left %+v, want /fresh and /recent", got.Routes)
	}
	// A second pass finds nothing more.
	if keys, routes, err := prune(ctx); keys+routes != 0 || err != nil {
		t.Errorf("second pass pruned %d keys and %d routes, %v", keys, routes, err)
	}
}
