package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// openClickHouse creates c with opts, migrates it and runs it. stop ends Run and closes
// c; it runs at the end of the test unless called before.
func openClickHouse(t *testing.T, cfg Config, o ClickHouseOptions) (c *ClickHouse, stop func()) {
	t.Helper()
	if o.MaxRetryInterval == 0 {
		o.MaxRetryInterval = 200 * time.Millisecond
	}
	c, err := NewClickHouse(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Migrate(testContext(t)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Minute)
			defer cancelClose()
			if err := c.Close(closeCtx); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

func TestClickHouseBaselines(t *testing.T) {
	addr := clickhousetest.Require(t)
	testBaselines(t, func(t *testing.T) (baselineStore, func() baselineStore) {
		cfg := testConfig(t, addr, clickhousetest.NewDatabase(t, addr))
		o := ClickHouseOptions{Registerer: prometheus.NewRegistry(), Baselines: suiteSettings}
		c, stop := openClickHouse(t, cfg, o)
		return c, func() baselineStore {
			stop()
			o.Registerer = prometheus.NewRegistry() // the restarted process's
			c, stop = openClickHouse(t, cfg, o)
			return c
		}
	})
}

// TestClickHouseBaselineVersions drives what the outage test meets by chance: an
// older update reaching ClickHouse after a newer one (a spilled update replayed after a
// direct write, or from another instance), and a clock that steps back across a
// restart.
func TestClickHouseBaselineVersions(t *testing.T) {
	addr := clickhousetest.Require(t)
	cfg := testConfig(t, addr, clickhousetest.NewDatabase(t, addr))
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c, stop := openClickHouse(t, cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry(), Now: func() time.Time { return now }})
	ctx := testContext(t)
	at := func(h int) time.Time { return now.Add(time.Duration(h) * time.Hour) }
	older := detectors.Baselines{
		Keys: []detectors.KeyBaseline{{Key: "k", FirstSeen: at(-5), Events: 5, Countries: []detectors.CountryBaseline{
			{Country: "DE", FirstSeen: at(-5), LastSeen: at(-4), Events: 3},
			{Country: "FR", FirstSeen: at(-5), LastSeen: at(-3), Events: 2},
		}}},
		Routes: []detectors.RouteBaseline{{Route: "GET /a", RatePerMinute: 9, AsOf: at(-3)}},
	}
	newer := detectors.Baselines{
		Keys: []detectors.KeyBaseline{{Key: "k", FirstSeen: at(-5), Events: 9, Countries: []detectors.CountryBaseline{
			{Country: "DE", FirstSeen: at(-5), LastSeen: at(-1), Events: 9}, // FR forgotten
		}}},
		Routes: []detectors.RouteBaseline{{Route: "GET /a", RatePerMinute: 2, AsOf: at(-1)}},
	}
	// The newer update is written first, the older one after it, as a replay would.
	if err := c.writeBaselines(ctx, []versioned{{&newer, 200}}); err != nil {
		t.Fatal(err)
	}
	if err := c.writeBaselines(ctx, []versioned{{&older, 100}}); err != nil {
		t.Fatal(err)
	}
	got, err := c.LoadBaselines(ctx, detectors.AllBaselines)
	if err != nil {
		t.Fatal(err)
	}
	sameBaselines(t, "older update written last", got, newer, 0)
	// After the parts merge too.
	conn := testConn(t, addr, cfg.ClickHouse.Database)
	for _, table := range []string{"key_stats", "key_countries", "route_baselines"} {
		if err := conn.Exec(ctx, "OPTIMIZE TABLE "+table+" FINAL"); err != nil {
			t.Fatal(err)
		}
	}
	got, _ = c.LoadBaselines(ctx, detectors.AllBaselines)
	sameBaselines(t, "after merges", got, newer, 0)

	// An update now wins (its version is the clock's nanoseconds); then a restart with
	// the clock an hour back: what that instance writes still wins, because
	// LoadBaselines saw the versions in ClickHouse and its clock continues above them.
	update := func(c *ClickHouse, events uint64) detectors.Baselines {
		u := newer
		u.Keys = []detectors.KeyBaseline{newer.Keys[0]}
		u.Keys[0].Events = events
		if err := c.UpdateBaselines(ctx, u); err != nil {
			t.Fatal(err)
		}
		return u
	}
	update(c, 10)
	stop()
	now = now.Add(-time.Hour)
	c, _ = openClickHouse(t, cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry(), Now: func() time.Time { return now }})
	if _, err := c.LoadBaselines(ctx, detectors.AllBaselines); err != nil {
		t.Fatal(err)
	}
	want := update(c, 11)
	got, _ = c.LoadBaselines(ctx, detectors.AllBaselines)
	sameBaselines(t, "written after a restart with the clock set back", got, want, 0)
}

// TestClickHouseBaselinesSurviveOutage kills ClickHouse while the engine keeps
// updating baselines, restarts gatewatch during the outage, and brings ClickHouse
// back: every update returned at once, and ClickHouse ends up with exactly the model's
// baselines.
func TestClickHouseBaselinesSurviveOutage(t *testing.T) {
	srv := clickhousetest.Start(t)
	cfg := testConfig(t, srv.Addr(), clickhousetest.NewDatabase(t, srv.Addr()))
	cfg.ClickHouse.DialTimeout = 500 * time.Millisecond
	cfg.ClickHouse.BaselineTimeout = time.Second
	ctx := testContext(t)
	model := detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines)
	r := rand.New(rand.NewPCG(7, 8))
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	// Each round updates a fresh random third of 600 keys and a few routes, so later
	// rounds rewrite keys earlier ones wrote.
	pool := randomBaselines(r, 600, 30, base)
	round := func(s *ClickHouse, i int) {
		t.Helper()
		snap := randomBaselines(r, 600, 30, base.Add(time.Duration(i)*time.Hour))
		var u detectors.Baselines
		for j := range pool.Keys {
			if r.IntN(3) == 0 {
				u.Keys = append(u.Keys, snap.Keys[j])
			}
		}
		for j := range pool.Routes {
			if r.IntN(5) == 0 {
				u.Routes = append(u.Routes, snap.Routes[j])
			}
		}
		if i == 0 {
			u.TrafficSince = snap.TrafficSince
		}
		update(t, s, model, u)
	}

	reg1 := prometheus.NewPedanticRegistry()
	c1, stop1 := openClickHouse(t, cfg, ClickHouseOptions{Registerer: reg1})
	for i := range 5 {
		round(c1, i)
	}
	if got := testutil.ToFloat64(c1.bl.m.updates.WithLabelValues(resultWritten)); got != 5 {
		t.Fatalf("%v updates written while ClickHouse was up, want 5", got)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	for i := 5; i < 15; i++ {
		round(c1, i)
	}
	if got := testutil.ToFloat64(c1.bl.m.updates.WithLabelValues(resultSpilled)); got != 10 {
		t.Errorf("%v updates spilled while ClickHouse was down, want 10", got)
	}
	stop1()

	// gatewatch restarts while ClickHouse is still down.
	reg2 := prometheus.NewPedanticRegistry()
	c2 := openClickHouseDown(t, cfg, ClickHouseOptions{Registerer: reg2})
	for i := 15; i < 20; i++ {
		round(c2, i)
	}
	if got := testutil.ToFloat64(c2.bl.m.spilled); got != 15 {
		t.Errorf("%v updates wait in the spill, want 15", got)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// Joins the spill, which drains in order; unless the spill drained already, as
	// it may as soon as ClickHouse answers, and then it is written directly.
	round(c2, 20)
	if err := c2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(cfg.ClickHouse.withDefaults(cfg.DataDir).SpillDir, "baselines", "*")); len(left) != 0 {
		t.Errorf("baseline spill not empty after replay: %v", left)
	}
	direct := testutil.ToFloat64(c2.bl.m.updates.WithLabelValues(resultWritten))
	if direct > 1 {
		t.Errorf("%v updates written directly before the spill drained, want at most 1", direct)
	}
	round(c2, 21) // written directly again
	if got := testutil.ToFloat64(c2.bl.m.updates.WithLabelValues(resultWritten)); got != direct+1 {
		t.Errorf("%v updates written directly after the outage, want %v", got, direct+1)
	}
	sameAsModel(t, "after the outage", c2, model)

	// A fresh instance on an empty data_dir (nothing spilled) reads the same from
	// ClickHouse alone, and so does a reader after merges.
	fresh := cfg
	fresh.DataDir = t.TempDir()
	c3, _ := openClickHouse(t, fresh, ClickHouseOptions{Registerer: prometheus.NewRegistry()})
	sameAsModel(t, "read by another instance", c3, model)
	conn := testConn(t, srv.Addr(), cfg.ClickHouse.Database)
	for _, table := range []string{"key_stats", "key_countries", "route_baselines", "baseline_meta"} {
		if err := conn.Exec(ctx, "OPTIMIZE TABLE "+table+" FINAL"); err != nil {
			t.Fatal(err)
		}
	}
	want := sameAsModel(t, "after merges", c3, model)
	if got := count(t, conn, "SELECT count() FROM key_stats"); got != uint64(len(want.Keys)) {
		t.Errorf("key_stats holds %d rows after merges, want one per key: %d", got, len(want.Keys))
	}
	for _, reg := range []*prometheus.Registry{reg1, reg2} {
		if _, err := reg.Gather(); err != nil {
			t.Errorf("metrics: %v", err)
		}
	}
}

// openClickHouseDown is openClickHouse for a server that is down: no Migrate.
func openClickHouseDown(t *testing.T, cfg Config, o ClickHouseOptions) *ClickHouse {
	t.Helper()
	o.MaxRetryInterval = 200 * time.Millisecond
	c, err := NewClickHouse(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	runClickHouse(t, c)
	return c
}

// TestClickHouseLoadWaitsForClickHouse starts an instance while ClickHouse is down:
// LoadBaselines waits for it rather than start the detectors on nothing, and gives up
// when its context ends.
func TestClickHouseLoadWaitsForClickHouse(t *testing.T) {
	srv := clickhousetest.Start(t)
	cfg := testConfig(t, srv.Addr(), clickhousetest.NewDatabase(t, srv.Addr()))
	cfg.ClickHouse.DialTimeout = 500 * time.Millisecond
	c, _ := openClickHouse(t, cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry()})
	ctx := testContext(t)
	model := detectors.NewMemoryBaselines(detectors.Baselines{}, detectors.AllBaselines)
	update(t, c, model, randomBaselines(rand.New(rand.NewPCG(9, 10)), 50, 3, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)))
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := c.LoadBaselines(short, detectors.AllBaselines); err == nil {
		t.Fatal("LoadBaselines with ClickHouse down and a short deadline succeeded")
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.LoadBaselines(ctx, detectors.AllBaselines)
		done <- err
	}()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("LoadBaselines once ClickHouse is back: %v", err)
	}
	sameAsModel(t, "after waiting", c, model)
	// A server error (the schema is missing) is not waited out.
	if err := testConn(t, srv.Addr(), cfg.ClickHouse.Database).Exec(ctx, "DROP TABLE key_stats"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LoadBaselines(ctx, detectors.AllBaselines); err == nil {
		t.Error("LoadBaselines without key_stats succeeded")
	}
}

func TestBaselineUpdateCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	snap := randomBaselines(r, 50, 5, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	snap.Keys[0].Countries = nil
	data, n := encodeUpdate(&snap)
	got, err := decodeUpdate(data, n)
	if err != nil {
		t.Fatal(err)
	}
	sameBaselines(t, "decoded", got, snap, 0)
	for _, cut := range []int{1, 5, len(data) / 2, len(data) - 1} {
		if _, err := decodeUpdate(data[:cut], n); err == nil {
			t.Errorf("decodeUpdate of %d of %d bytes succeeded", cut, len(data))
		}
	}
	if _, err := decodeUpdate(append(data, 'x'), n); err == nil {
		t.Error("decodeUpdate with a trailing byte succeeded")
	}
}

func TestClickHousePrunesBaselines(t *testing.T) {
	addr := clickhousetest.Require(t)
	cfg := testConfig(t, addr, clickhousetest.NewDatabase(t, addr))
	c, _ := openClickHouse(t, cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry(), Baselines: suiteSettings})
	conn := testConn(t, addr, cfg.ClickHouse.Database)
	// Mutations run in the background; 18.16 cannot wait for them in the ALTER.
	settle := func() {
		t.Helper()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		ctx := testContext(t)
		for count(t, conn, "SELECT count() FROM system.mutations WHERE database = currentDatabase() AND is_done = 0") > 0 {
			select {
			case <-ctx.Done():
				t.Fatal("mutations did not finish")
			case <-tick.C:
			}
		}
	}
	testPruneBaselines(t, c, 3000, c.PruneBaselines, settle)
}

// TestClickHouseSetsCorruptSpilledUpdatesAside replays a spill an earlier run left with
// a damaged update between two whole ones: the whole ones are written, the damaged one
// is kept aside as .corrupt, and loading goes on.
func TestClickHouseSetsCorruptSpilledUpdatesAside(t *testing.T) {
	addr := clickhousetest.Require(t)
	cfg := testConfig(t, addr, clickhousetest.NewDatabase(t, addr))
	dir := filepath.Join(cfg.ClickHouse.withDefaults(cfg.DataDir).SpillDir, "baselines")
	sp, err := openSpill(dir)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for i, key := range []string{"a", "b", "c"} {
		u := detectors.Baselines{Keys: []detectors.KeyBaseline{{Key: key, FirstSeen: at, Events: 1}}}
		data, n := encodeUpdate(&u)
		if err := sp.write(&block{id: uint64(100 + i), n: n, data: data}); err != nil {
			t.Fatal(err)
		}
	}
	damaged := filepath.Join(dir, sp.segs[1].name)
	raw, err := os.ReadFile(damaged)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] ^= 0xff
	if err := os.WriteFile(damaged, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := openClickHouse(t, cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry()})
	got, err := c.LoadBaselines(testContext(t), detectors.AllBaselines)
	if err != nil {
		t.Fatal(err)
	}
	if names := keyNames(got.Keys); !slices.Equal(names, []string{"a", "c"}) {
		t.Errorf("loaded keys %v, want a and c", names)
	}
	if _, err := os.Stat(damaged + ".corrupt"); err != nil {
		t.Errorf("damaged update not kept aside: %v", err)
	}
	// The clock continues above the spilled versions.
	if c.bl.clock.last < 102 {
		t.Errorf("version clock at %d, below the spilled versions", c.bl.clock.last)
	}
}

// TestClickHouseReadsRoutesWrittenBeforePeaks: a route row written before migration
// 0007 added the peak columns reads with no peak.
func TestClickHouseReadsRoutesWrittenBeforePeaks(t *testing.T) {
	addr := clickhousetest.Require(t)
	cfg := testConfig(t, addr, clickhousetest.NewDatabase(t, addr))
	c, _ := openClickHouse(t, cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry(), Baselines: suiteSettings})
	conn := testConn(t, addr, cfg.ClickHouse.Database)
	ctx := testContext(t)
	asOf := time.Date(2026, 3, 1, 12, 0, 0, 250_000_000, time.UTC)
	err := conn.Exec(ctx, "INSERT INTO route_baselines (route, rate_per_minute, as_of, as_of_ms, version) SELECT 'GET /old', 2.5, toDateTime(?, 'UTC'), 250, 1", asOf.Unix())
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.LoadBaselines(ctx, detectors.AllBaselines)
	if err != nil {
		t.Fatal(err)
	}
	want := []detectors.RouteBaseline{{Route: "GET /old", RatePerMinute: 2.5, AsOf: asOf}}
	if !reflect.DeepEqual(got.Routes, want) {
		t.Errorf("routes %+v, want %+v", got.Routes, want)
	}
}

// TestClickHouseBaselinesSince: a load since what an earlier load returned has the
// rows written after it, and those written up to the margin before it (late writers),
// not older ones; a key's forgotten country stays forgotten.
func TestClickHouseBaselinesSince(t *testing.T) {
	addr := clickhousetest.Require(t)
	cfg := testConfig(t, addr, clickhousetest.NewDatabase(t, addr))
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	settings := BaselineSettings{Refresh: time.Minute} // margin: 6m
	// The store's goroutines read the clock: it moves with now, through clock.
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	setNow := func(t time.Time) { now = t; clock.Store(t.UnixNano()) }
	c, _ := openClickHouse(t, cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry(),
		Now: func() time.Time { return time.Unix(0, clock.Load()).UTC() }, Baselines: settings})
	ctx := testContext(t)
	key := func(k string, events uint64, countries ...string) detectors.KeyBaseline {
		kb := detectors.KeyBaseline{Key: k, FirstSeen: now.Add(-time.Hour), Events: events}
		for _, cc := range countries {
			kb.Countries = append(kb.Countries, detectors.CountryBaseline{Country: cc, FirstSeen: now.Add(-time.Hour), LastSeen: now, Events: events})
		}
		return kb
	}
	all := func(keys ...detectors.KeyBaseline) detectors.Baselines {
		b := detectors.Baselines{Keys: keys}
		for _, k := range keys {
			b.Routes = append(b.Routes, detectors.RouteBaseline{Route: "GET /" + k.Key, RatePerMinute: float64(k.Events), AsOf: now})
			b.Clients = append(b.Clients, detectors.ClientBaseline{Key: k.Key, FirstSeen: now.Add(-time.Hour), RatePerMinute: 1, AsOf: now})
			b.Objects = append(b.Objects, detectors.ObjectBaseline{Client: k.Key, Route: "GET /o/{id}", Peak: 3, PeakAt: now})
			b.Privileged = append(b.Privileged, detectors.PrivilegeBaseline{Key: k.Key, FirstSeen: now.Add(-time.Hour), LastSeen: now, Events: k.Events})
		}
		return b
	}
	write := func(u detectors.Baselines) {
		t.Helper()
		if err := c.UpdateBaselines(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	names := func(b detectors.Baselines) string {
		var out []string
		for _, k := range b.Keys {
			var cs []string
			for _, cb := range k.Countries {
				cs = append(cs, cb.Country)
			}
			out = append(out, k.Key+":"+strings.Join(cs, ","))
		}
		return fmt.Sprintf("keys %v, %d routes, %d clients, %d objects, %d privileged", out, len(b.Routes), len(b.Clients), len(b.Objects), len(b.Privileged))
	}

	write(all(key("a", 1, "DE"), key("b", 1, "DE", "FR"), key("c", 1, "DE")))
	setNow(now.Add(time.Hour))
	write(all(key("b", 2, "DE", "FR")))
	_, v0, err := c.LoadBaselinesSince(ctx, detectors.AllBaselines, 0)
	if err != nil || v0 != uint64(now.UnixNano()) {
		t.Fatalf("whole load: next %d, %v; want the version of the write, %d", v0, err, now.UnixNano())
	}

	// An hour on, b forgets FR (its row keeps the older version, within the margin)
	// and d is new; a and c, written two hours before, are not read.
	setNow(now.Add(time.Hour))
	write(all(key("b", 2, "DE"), key("d", 1, "SE")))
	b, v1, err := c.LoadBaselinesSince(ctx, detectors.AllBaselines, v0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(b), "keys [b:DE d:SE], 2 routes, 2 clients, 2 objects, 2 privileged"; got != want {
		t.Errorf("since the whole load: %s, want %s", got, want)
	}
	if v1 != uint64(now.UnixNano()) {
		t.Errorf("next %d, want the newest version read, %d", v1, now.UnixNano())
	}
	if b, v, _ := c.LoadBaselinesSince(ctx, detectors.AllBaselines, v1); v != v1 || len(b.Keys) != 2 {
		t.Errorf("nothing new: %s, next %d (was %d); want b and d again (within the margin) and the same next", names(b), v, v1)
	}

	// Writers behind: one 3 minutes (within the margin), one 20 minutes (beyond it).
	late := all(key("e", 1, "JP"))
	if err := c.writeBaselines(ctx, []versioned{{&late, v1 - uint64(3*time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	older := all(key("f", 1, "JP"))
	if err := c.writeBaselines(ctx, []versioned{{&older, v1 - uint64(20*time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	b, _, err = c.LoadBaselinesSince(ctx, detectors.AllBaselines, v1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(b), "keys [b:DE d:SE e:JP], 3 routes, 3 clients, 3 objects, 3 privileged"; got != want {
		t.Errorf("with late writers: %s, want %s", got, want)
	}
	// A limit keeps the most recent of the changes.
	setNow(now.Add(time.Minute))
	write(detectors.Baselines{Keys: []detectors.KeyBaseline{key("g", 1, "US")}})
	if b, _, _ := c.LoadBaselinesSince(ctx, detectors.BaselineLimits{Keys: 1}, v1); names(b) != "keys [g:US], 0 routes, 0 clients, 0 objects, 0 privileged" {
		t.Errorf("one key since: %s, want g", names(b))
	}
	// The whole store is still there for a whole load.
	if b, _ := c.LoadBaselines(ctx, detectors.AllBaselines); len(b.Keys) != 7 {
		t.Errorf("whole load: %s, want 7 keys", names(b))
	}
}
