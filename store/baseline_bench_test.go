package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// benchKeys is how many keys BenchmarkBaselineLoad loads: the million keys a large
// deployment's new_country tracks.
const benchKeys = 1_000_000

// benchSnapshot returns n keys as new_country writes them: a 32-hex-digit key (a
// fingerprint of an API key header), one to three countries, and 200 routes.
func benchSnapshot(n int) detectors.Baselines {
	r := rand.New(rand.NewPCG(42, 42))
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	at := func() time.Time {
		return t0.Add(time.Duration(r.Int64N(int64(720 * time.Hour)))).Truncate(time.Millisecond)
	}
	snap := detectors.Baselines{TrafficSince: t0, Keys: make([]detectors.KeyBaseline, n)}
	for i := range snap.Keys {
		k := &snap.Keys[i]
		k.Key = fmt.Sprintf("%016x%016x", uint64(i), r.Uint64())
		k.FirstSeen = at()
		k.Events = r.Uint64N(100_000)
		for j := range 1 + r.IntN(3) {
			first := at()
			k.Countries = append(k.Countries, detectors.CountryBaseline{
				Country: suiteCountries[(i+j)%len(suiteCountries)], FirstSeen: first,
				LastSeen: first.Add(time.Duration(r.IntN(1e9)) * time.Millisecond), Events: r.Uint64N(50_000),
			})
		}
		slices.SortFunc(k.Countries, func(a, b detectors.CountryBaseline) int { return strings.Compare(a.Country, b.Country) })
	}
	for i := range 200 {
		snap.Routes = append(snap.Routes, detectors.RouteBaseline{Route: fmt.Sprintf("GET /v1/r%03d/{id}", i), RatePerMinute: r.ExpFloat64() * 50, AsOf: at()})
	}
	return snap
}

// fillBaselines writes snap through UpdateBaselines, 20,000 keys an update.
func fillBaselines(b *testing.B, s detectors.BaselineStore, snap detectors.Baselines) {
	b.Helper()
	ctx := context.Background()
	for chunk := range slices.Chunk(snap.Keys, 20_000) {
		if err := s.UpdateBaselines(ctx, detectors.Baselines{Keys: chunk}); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.UpdateBaselines(ctx, detectors.Baselines{TrafficSince: snap.TrafficSince, Routes: snap.Routes}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkBaselineLoad measures LoadBaselines of a million keys, what a restarted
// instance reads before it detects anything, and reports keys/s, the bytes a key takes
// on disk (disk-B/key: ClickHouse's compressed parts of key_stats and key_countries,
// or the bbolt file) and in the loaded snapshot (heap-B/key). One iteration takes
// seconds and the set-up longer; run it with
//
//	go test ./store -run '^$' -bench BaselineLoad -benchtime 3x
func BenchmarkBaselineLoad(b *testing.B) {
	snap := benchSnapshot(benchKeys)
	load := func(b *testing.B, s detectors.BaselineStore, diskBytes func() int64) {
		ctx := context.Background()
		heap := func() int64 { // signed: the store's own goroutines may free memory meanwhile
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			return int64(ms.HeapAlloc)
		}
		before := heap()
		got, err := s.LoadBaselines(ctx, detectors.AllBaselines)
		if err != nil {
			b.Fatal(err)
		}
		heapPerKey := float64(heap()-before) / benchKeys
		if len(got.Keys) != benchKeys {
			b.Fatalf("loaded %d keys, want %d", len(got.Keys), benchKeys)
		}
		got = detectors.Baselines{}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			got, err := s.LoadBaselines(ctx, detectors.AllBaselines)
			if err != nil || len(got.Keys) != benchKeys {
				b.Fatalf("loaded %d keys: %v", len(got.Keys), err)
			}
		}
		b.ReportMetric(float64(b.N*benchKeys)/b.Elapsed().Seconds(), "keys/s")
		b.ReportMetric(float64(diskBytes())/benchKeys, "disk-B/key")
		b.ReportMetric(heapPerKey, "heap-B/key")
		runtime.KeepAlive(got)
	}

	b.Run("local", func(b *testing.B) {
		dir := b.TempDir()
		l, err := NewLocal(Config{DataDir: dir}, LocalOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close(context.Background())
		fillBaselines(b, l, snap)
		load(b, l, func() int64 {
			fi, err := os.Stat(filepath.Join(dir, localFile))
			if err != nil {
				b.Fatal(err)
			}
			return fi.Size()
		})
	})

	b.Run("clickhouse", func(b *testing.B) {
		addr := clickhousetest.Require(b)
		db := clickhousetest.NewDatabase(b, addr)
		c := benchClickHouse(b, addr, db)
		fillBaselines(b, c, snap)
		load(b, c, func() int64 {
			var n uint64
			err := c.conn.QueryRow(context.Background(), "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = currentDatabase() AND table IN ('key_stats', 'key_countries') AND active").Scan(&n)
			if err != nil {
				b.Fatal(err)
			}
			return int64(n)
		})
	})
}

// BenchmarkBaselineUpdate measures UpdateBaselines of 1,000 keys (and 10 routes) into
// a store holding 100,000, as the engine writes what one batch of events changed,
// and reports keys/s.
//
//	go test ./store -run '^$' -bench BaselineUpdate -benchmem -count 6
func BenchmarkBaselineUpdate(b *testing.B) {
	const keys, perUpdate = 100_000, 1000
	snap := benchSnapshot(keys)
	run := func(b *testing.B, s detectors.BaselineStore) {
		fillBaselines(b, s, snap)
		ctx := context.Background()
		r := rand.New(rand.NewPCG(1, 1))
		u := detectors.Baselines{Keys: make([]detectors.KeyBaseline, perUpdate), Routes: make([]detectors.RouteBaseline, 10)}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			for i := range u.Keys {
				u.Keys[i] = snap.Keys[r.IntN(keys)]
				u.Keys[i].Events++
			}
			slices.SortFunc(u.Keys, func(a, b detectors.KeyBaseline) int { return strings.Compare(a.Key, b.Key) })
			for i := range u.Routes {
				u.Routes[i] = snap.Routes[r.IntN(len(snap.Routes))]
			}
			if err := s.UpdateBaselines(ctx, u); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*perUpdate)/b.Elapsed().Seconds(), "keys/s")
	}
	benchEachStore(b, run)
}

// BenchmarkBaselineLookup measures LookupBaselines of 1,000 keys, half of them stored,
// in a store holding 100,000: what the engine asks for a batch of keys it does not
// hold (Engine.FetchBaselines), and reports keys/s.
//
//	go test ./store -run '^$' -bench BaselineLookup -benchmem -count 6
func BenchmarkBaselineLookup(b *testing.B) {
	const keys, perLookup = 100_000, 1000
	snap := benchSnapshot(keys)
	run := func(b *testing.B, s detectors.BaselineStore) {
		l, ok := s.(detectors.BaselineLookup)
		if !ok {
			b.Fatal("the store has no lookup")
		}
		fillBaselines(b, s, snap)
		ctx := context.Background()
		r := rand.New(rand.NewPCG(1, 1))
		want := make([]string, perLookup)
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			for i := range want {
				if i%2 == 0 {
					want[i] = snap.Keys[r.IntN(keys)].Key
				} else {
					want[i] = fmt.Sprintf("unknown-%d", r.Uint64())
				}
			}
			got, err := l.LookupBaselines(ctx, want, nil)
			if err != nil || len(got.Keys) == 0 {
				b.Fatalf("looked up %d keys: %v", len(got.Keys), err)
			}
		}
		b.ReportMetric(float64(b.N*perLookup)/b.Elapsed().Seconds(), "keys/s")
	}
	benchEachStore(b, run)
}

// benchEachStore runs run on an empty embedded store and an empty ClickHouse database.
func benchEachStore(b *testing.B, run func(*testing.B, detectors.BaselineStore)) {
	b.Run("local", func(b *testing.B) {
		l, err := NewLocal(Config{DataDir: b.TempDir()}, LocalOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close(context.Background())
		run(b, l)
	})
	b.Run("clickhouse", func(b *testing.B) {
		addr := clickhousetest.Require(b)
		c := benchClickHouse(b, addr, clickhousetest.NewDatabase(b, addr))
		run(b, c)
	})
}

// wholeLoads hides a store's BaselineChanges: every refresh loads the whole store.
type wholeLoads struct{ detectors.BaselineStore }

// BenchmarkBaselineRefresh measures Engine.RefreshBaselines over a store of 100,000
// keys of which 1% changed since the last load (another instance's write, not timed):
// whole, loading every key, against changes, loading what changed
// (detectors.BaselineChanges), on the memory store, the embedded store and ClickHouse. Compare the two
// of one store, taken in the same run:
//
//	go test ./store -run '^$' -bench BaselineRefresh -benchtime 20x -count 3
func BenchmarkBaselineRefresh(b *testing.B) {
	const keys, changed = 100_000, 1_000
	snap := benchSnapshot(keys)
	// tick moves the clock of the store's versions an hour, when it has one: versions
	// are wall-clock time, and a refresh of the changes reads back a margin of minutes
	// (see BaselineSettings.changesMargin), which a benchmark's seconds would not leave.
	run := func(b *testing.B, s detectors.BaselineStore, tick func()) {
		fillBaselines(b, s, snap)
		for _, mode := range []string{"whole", "changes"} {
			b.Run(mode, func(b *testing.B) {
				ctx := context.Background()
				es := s
				if mode == "whole" {
					es = wholeLoads{s}
				}
				e, err := detectors.NewEngine(detectors.DefaultConfig(), detectors.Options{Registerer: prometheus.NewRegistry(), Baselines: es})
				if err != nil {
					b.Fatal(err)
				}
				if err := e.LoadBaselines(ctx); err != nil {
					b.Fatal(err)
				}
				r := rand.New(rand.NewPCG(7, 7))
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					b.StopTimer()
					tick()
					u := detectors.Baselines{Keys: make([]detectors.KeyBaseline, 0, changed)}
					for _, j := range r.Perm(keys)[:changed] {
						k := snap.Keys[j]
						k.Events += uint64(i+1) * 1000 // more than the engine holds: a merge
						u.Keys = append(u.Keys, k)
					}
					if err := s.UpdateBaselines(ctx, u); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if err := e.RefreshBaselines(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
	b.Run("memory", func(b *testing.B) {
		run(b, detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines), func() {})
	})
	b.Run("local", func(b *testing.B) {
		l, err := NewLocal(Config{DataDir: b.TempDir()}, LocalOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close(context.Background())
		run(b, l, func() {})
	})
	b.Run("clickhouse", func(b *testing.B) {
		addr := clickhousetest.Require(b)
		c := benchClickHouse(b, addr, clickhousetest.NewDatabase(b, addr))
		// The store's goroutines read the clock too.
		var clock atomic.Int64
		clock.Store(time.Now().UnixNano())
		c.now = func() time.Time { return time.Unix(0, clock.Load()) }
		run(b, c, func() { clock.Add(int64(time.Hour)) })
	})
}
