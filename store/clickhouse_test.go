package store

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// testConfig is a store config for a test database at addr: small batches and a short
// flush interval, so tests exercise several batches quickly.
func testConfig(t *testing.T, addr, db string) Config {
	return Config{
		DataDir: t.TempDir(),
		ClickHouse: &ClickHouseConfig{
			Addr:          []string{addr},
			Database:      db,
			DialTimeout:   2 * time.Second,
			WriteTimeout:  20 * time.Second,
			BatchSize:     1000,
			FlushInterval: 20 * time.Millisecond,
			BufferSize:    50_000,
		},
	}
}

// startClickHouse creates c, migrates it and runs it until the test ends; reg nil: a
// registry of its own.
func startClickHouse(t *testing.T, cfg Config, reg prometheus.Registerer) *ClickHouse {
	t.Helper()
	if reg == nil {
		reg = prometheus.NewRegistry() // the test reads no metric
	}
	c, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: reg, MaxRetryInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Migrate(testContext(t)); err != nil {
		t.Fatal(err)
	}
	runClickHouse(t, c)
	return c
}

// runClickHouse runs c until the test ends, then closes it.
func runClickHouse(t *testing.T, c *ClickHouse) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Minute)
		defer cancelClose()
		if err := c.Close(closeCtx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

func testConn(t *testing.T, addr, db string) driver.Conn {
	t.Helper()
	return clickhousetest.Conn(t, addr, db)
}

func count(t *testing.T, conn driver.Conn, query string, args ...any) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(testContext(t), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestClickHouseArchive(t *testing.T) {
	addr := clickhousetest.Require(t)
	testArchive(t, func(t *testing.T) archive {
		return startClickHouse(t, testConfig(t, addr, clickhousetest.NewDatabase(t, addr)), prometheus.NewRegistry())
	})
}

func TestMigrate(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	conn := testConn(t, addr, db)
	ctx := testContext(t)

	first, err := migrate(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	all, err := loadMigrations(migrationFiles)
	if err != nil {
		t.Fatal(err)
	}
	apply, skip := plan(all, nil, first.server)
	if len(first.applied) != len(apply) || len(first.skipped) != len(skip) {
		t.Fatalf("first run on %s applied %v skipped %v, want %d applied and %d skipped", first.server, first.applied, first.skipped, len(apply), len(skip))
	}
	if first.server.atLeast(serverVersion{21, 3, 0}) == (len(first.skipped) > 0) {
		t.Errorf("server %s: skipped %v", first.server, first.skipped)
	}

	second, err := migrate(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(second.applied) != 0 {
		t.Errorf("second run applied %v, want nothing", second.applied)
	}
	if got := count(t, conn, "SELECT count() FROM schema_migrations"); got != uint64(len(apply)) {
		t.Errorf("schema_migrations has %d rows after two runs, want %d", got, len(apply))
	}
	checkSchema(t, conn)
}

func TestMigrateConcurrently(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	ctx := testContext(t)
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		conn := testConn(t, addr, db)
		wg.Go(func() {
			<-start
			errs[i] = Migrate(ctx, conn)
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Migrate: %v", err)
	}
	conn := testConn(t, addr, db)
	checkSchema(t, conn)
	all, _ := loadMigrations(migrationFiles)
	server, err := queryServerVersion(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	apply, _ := plan(all, nil, server)
	if got := count(t, conn, "SELECT uniqExact(version) FROM schema_migrations"); got != uint64(len(apply)) {
		t.Errorf("schema_migrations lists %d versions, want %d", got, len(apply))
	}
	// Instances that raced may each have recorded a version; a later run adds nothing.
	res, err := migrate(ctx, conn)
	if err != nil || len(res.applied) != 0 {
		t.Errorf("Migrate after the race applied %v, %v; want nothing", res.applied, err)
	}
}

func checkSchema(t *testing.T, conn driver.Conn) {
	t.Helper()
	rows, err := conn.Query(testContext(t), "SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		got = append(got, name)
	}
	want := []string{"acks", "alert_deliveries", "alerts", "archive_batches", "archive_batches_mv", "audit_log", "baseline_meta",
		"client_baselines", "client_minute", "client_minute_mv", "events", "key_countries", "key_stats", "object_baselines",
		"open_incidents", "privilege_baselines", "route_baselines", "route_minute", "route_minute_mv", "schema_migrations", "silences", "slack_threads"}
	if !slices.Equal(got, want) {
		t.Errorf("tables %v, want %v", got, want)
	}
	// 0003 added, once, the milliseconds of the baseline times and the key's last-seen
	// to its countries.
	if n := count(t, conn, "SELECT count() FROM system.columns WHERE database = currentDatabase() AND name LIKE '%_seen_ms' AND table IN ('key_stats', 'key_countries')"); n != 5 {
		t.Errorf("key_stats and key_countries have %d _seen_ms columns, want 5", n)
	}
}

func TestArchiveFeedsMinuteCounts(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	c := startClickHouse(t, testConfig(t, addr, db), prometheus.NewRegistry())
	ctx := testContext(t)
	evs := testEvents(5, 5000, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), 29*time.Millisecond, 7)
	if err := c.ArchiveEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var wantForbidden, wantKey0 uint64
	for _, ev := range evs {
		if ev.Status == 401 || ev.Status == 403 {
			wantForbidden++
		}
		if ev.ClientKey == evs[0].ClientKey {
			wantKey0++
		}
	}
	conn := testConn(t, addr, db)
	if got := count(t, conn, "SELECT sum(requests) FROM route_minute"); got != 5000 {
		t.Errorf("route_minute counts %d requests, want 5000", got)
	}
	if got := count(t, conn, "SELECT sum(forbidden) FROM route_minute"); got != wantForbidden {
		t.Errorf("route_minute counts %d forbidden, want %d", got, wantForbidden)
	}
	if got := count(t, conn, "SELECT sum(requests) FROM client_minute WHERE client = ?", evs[0].ClientKey); got != wantKey0 {
		t.Errorf("client_minute counts %d requests of %s, want %d", got, evs[0].ClientKey, wantKey0)
	}
	if got := count(t, conn, "SELECT uniqExact(minute) FROM route_minute"); got != 3 {
		t.Errorf("route_minute has %d distinct minutes, want 3 (145s of events from 12:00)", got)
	}
}

// TestArchiveWritesABlockOnce drives the cases the outage test meets by chance: a
// block resent after its first insert had succeeded, one resent after only some of its
// pieces had, and a copy that got into events anyway.
func TestArchiveWritesABlockOnce(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	reg := prometheus.NewPedanticRegistry()
	c, err := NewClickHouse(testConfig(t, addr, db), ClickHouseOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	const n = 2*pieceRows + pieceRows/2 // three pieces, the last one short
	evs := testEvents(6, n, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), time.Millisecond, 3)
	conn := testConn(t, addr, db)
	wantRows := func(when string, want uint64) {
		t.Helper()
		if got := count(t, conn, "SELECT count() FROM events"); got != want {
			t.Errorf("events holds %d rows %s, want %d", got, when, want)
		}
		if got := count(t, conn, "SELECT sum(requests) FROM route_minute"); got != want {
			t.Errorf("route_minute counts %d %s, want %d", got, when, want)
		}
	}
	metric := func(result string) float64 { return testutil.ToFloat64(c.m.events.WithLabelValues(result)) }

	b := newBlock(0xfeed, evs)
	if err := c.insert(ctx, b); err != nil {
		t.Fatal(err)
	}
	if b.attempts == 0 {
		t.Fatal("attempts = 0 after an insert")
	}
	if got := count(t, conn, "SELECT count() FROM archive_batches WHERE batch_id IN (0xfeed, 0xfeee, 0xfeef)"); got != 3 {
		t.Errorf("archive_batches has %d markers for the block, want 3 (one a piece)", got)
	}
	// The writer heard an error although the server committed: it sends again.
	if err := c.insert(ctx, b); err != nil {
		t.Fatal(err)
	}
	wantRows("after a resend", n)
	if got := metric(resultDuplicate); got != n {
		t.Errorf("duplicate events metric = %v, want %d", got, n)
	}

	// The connection broke after two pieces were committed: only the third is sent.
	if err := c.insert(ctx, newBlock(0xbeef, evs[:2*pieceRows])); err != nil {
		t.Fatal(err)
	}
	whole := newBlock(0xbeef, evs)
	whole.attempts = 1
	written := metric(resultWritten)
	if err := c.insert(ctx, whole); err != nil {
		t.Fatal(err)
	}
	wantRows("after a block resent in part", 2*n)
	if got := metric(resultWritten) - written; got != pieceRows/2 {
		t.Errorf("resending a block with two of three pieces in wrote %v events, want %d", got, pieceRows/2)
	}

	// A copy that reaches events all the same (a piece split across two days, say) is
	// invisible to readers at once and folded away by merges.
	b.attempts = 0
	if err := c.insert(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got := count(t, conn, "SELECT count() FROM events"); got != 3*n {
		t.Fatalf("events holds %d rows after a forced third copy, want %d", got, 3*n)
	}
	var got int
	for _, err := range c.ReadEvents(ctx, evs[0].Time, evs[n-1].Time.Add(time.Millisecond), "") {
		if err != nil {
			t.Fatal(err)
		}
		got++
	}
	if got != 2*n {
		t.Errorf("ReadEvents yields %d events from two blocks, one of them twice, want %d", got, 2*n)
	}
	if err := conn.Exec(ctx, "OPTIMIZE TABLE events FINAL"); err != nil {
		t.Fatal(err)
	}
	if got := count(t, conn, "SELECT count() FROM events"); got != 2*n {
		t.Errorf("events holds %d rows after merging, want %d", got, 2*n)
	}
}

func TestArchiveBufferIsBounded(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	cfg := testConfig(t, addr, db)
	cfg.ClickHouse.BatchSize, cfg.ClickHouse.BufferSize = 100, 1000
	reg := prometheus.NewPedanticRegistry()
	c, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// Without Run nothing drains the buffer, as when the writer cannot keep up.
	evs := testEvents(7, 1000, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), time.Millisecond, 3)
	for chunk := range slices.Chunk(evs, 300) {
		if err := c.ArchiveEvents(ctx, chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.ArchiveEvents(ctx, evs[:1]); !errors.Is(err, ErrBufferFull) {
		t.Fatalf("ArchiveEvents beyond buffer_size = %v, want ErrBufferFull", err)
	}
	if got := testutil.ToFloat64(c.m.events.WithLabelValues(resultRejected)); got != 1 {
		t.Errorf("rejected events metric = %v, want 1", got)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.ArchiveEvents(ctx, evs[:1]); !errors.Is(err, ErrClosed) {
		t.Errorf("ArchiveEvents after Close = %v, want ErrClosed", err)
	}
	if got := count(t, testConn(t, addr, db), "SELECT count() FROM events"); got != 1000 {
		t.Errorf("Close wrote %d events, want the 1000 buffered", got)
	}
}

// TestArchiveSurvivesOutage stops ClickHouse while events keep coming, closes the
// writer while it is still down and starts a new one on the same spill directory (a
// restart of gatewatch during the outage), then brings ClickHouse back: every event is
// in ClickHouse once.
func TestArchiveSurvivesOutage(t *testing.T) {
	srv := clickhousetest.Start(t)
	db := clickhousetest.NewDatabase(t, srv.Addr())
	cfg := testConfig(t, srv.Addr(), db)
	cfg.ClickHouse.BatchSize = 500
	cfg.ClickHouse.DialTimeout = 500 * time.Millisecond
	ctx := testContext(t)
	start := time.Date(2026, 3, 1, 23, 50, 0, 0, time.UTC)
	evs := testEvents(8, 10_000, start, 97*time.Millisecond, 50) // 16 minutes over midnight
	archiveAll := func(c *ClickHouse, evs []ingest.Event) {
		t.Helper()
		for chunk := range slices.Chunk(evs, 100) {
			if err := c.ArchiveEvents(ctx, chunk); err != nil {
				t.Fatal(err)
			}
		}
	}

	reg1 := prometheus.NewPedanticRegistry()
	c1, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: reg1, MaxRetryInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	run1, stop1 := context.WithCancel(ctx)
	run1Done := make(chan error, 1)
	go func() { run1Done <- c1.Run(run1) }()

	archiveAll(c1, evs[:2000])
	if err := c1.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	// ClickHouse crashes mid-stream.
	archiveAll(c1, evs[2000:2500])
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	archiveAll(c1, evs[2500:6000])
	// Sync returns while ClickHouse is down, once everything taken is in the spill:
	// what the live pipeline waits for before it commits offsets.
	syncCtx, cancelSync := context.WithTimeout(ctx, 30*time.Second)
	if err := c1.Sync(syncCtx); err != nil {
		t.Fatalf("Sync during the outage: %v", err)
	}
	cancelSync()
	if got := testutil.ToFloat64(c1.m.events.WithLabelValues(resultSpilled)); got < 3500 {
		t.Errorf("Sync returned with %v events spilled, want every event taken during the outage (3500 or more)", got)
	}
	stop1()
	if err := <-run1Done; err != nil {
		t.Fatal(err)
	}
	closeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c1.Close(closeCtx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(c1.m.events.WithLabelValues(resultSpilled)); got < 3500 {
		t.Errorf("writer spilled %v events while ClickHouse was down, want at least 3500", got)
	}
	if got := testutil.ToFloat64(c1.m.events.WithLabelValues(resultRejected)) + testutil.ToFloat64(c1.m.events.WithLabelValues(resultLost)); got != 0 {
		t.Errorf("writer rejected or lost %v events", got)
	}
	segs, _ := filepath.Glob(filepath.Join(cfg.DataDir, "clickhouse-spill", "*.seg"))
	if len(segs) == 0 {
		t.Fatal("no spill segments after closing during the outage")
	}

	// gatewatch restarts while ClickHouse is still down.
	reg2 := prometheus.NewPedanticRegistry()
	c2, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: reg2, MaxRetryInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runClickHouse(t, c2)
	archiveAll(c2, evs[6000:9000])
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	archiveAll(c2, evs[9000:])
	if err := c2.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	conn := testConn(t, srv.Addr(), db)
	if got := count(t, conn, "SELECT count() FROM events"); got != 10_000 {
		t.Errorf("events holds %d rows, want 10000", got)
	}
	if got := count(t, conn, "SELECT uniqExact(request_id) FROM events"); got != 10_000 {
		t.Errorf("events holds %d distinct events, want 10000", got)
	}
	if got := count(t, conn, "SELECT sum(requests) FROM route_minute"); got != 10_000 {
		t.Errorf("route_minute counts %d requests, want 10000", got)
	}
	n := 0
	for ev, err := range c2.ReadEvents(ctx, start, evs[len(evs)-1].Time.Add(time.Millisecond), "") {
		if err != nil {
			t.Fatal(err)
		}
		if ev.RequestID != evs[n].RequestID {
			t.Fatalf("event %d read back is %s, want %s", n, ev.RequestID, evs[n].RequestID)
		}
		n++
	}
	if n != 10_000 {
		t.Errorf("ReadEvents yields %d events, want 10000", n)
	}
	// Only the (empty) directories of spilled alert history and baseline updates remain.
	left, _ := filepath.Glob(filepath.Join(cfg.DataDir, "clickhouse-spill", "*"))
	more, _ := filepath.Glob(filepath.Join(cfg.DataDir, "clickhouse-spill", "*", "*"))
	if len(left) != 2 || filepath.Base(left[0]) != "alerts" || filepath.Base(left[1]) != "baselines" || len(more) != 0 {
		t.Errorf("spill directory not empty after replay: %v %v", left, more)
	}
	if got := testutil.ToFloat64(c2.m.spilled); got != 0 {
		t.Errorf("spilled events gauge = %v after replay, want 0", got)
	}
}

func TestRetentionDropsExpiredPartitions(t *testing.T) {
	addr := clickhousetest.Require(t)
	db := clickhousetest.NewDatabase(t, addr)
	now := time.Date(2026, 3, 10, 6, 0, 0, 0, time.UTC)
	var clock atomic.Pointer[time.Time] // dates the deliveries
	clock.Store(&now)
	c, err := NewClickHouse(testConfig(t, addr, db), ClickHouseOptions{Registerer: prometheus.NewRegistry(), Now: func() time.Time { return *clock.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	runClickHouse(t, c)
	// Alert history: an incident of January, one from February that went on into March,
	// and one of March, each delivered on its last day.
	for _, a := range []detectors.Alert{
		historyAlert(detectors.ForbiddenBurst, "old", time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 12, 0, 0, 0, 0, time.UTC)),
		historyAlert(detectors.ForbiddenBurst, "long", time.Date(2026, 2, 20, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC)),
		historyAlert(detectors.NewCountry, "new", time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC)),
	} {
		clock.Store(&a.LastSeen)
		if err := c.RecordAlerts(ctx, []detectors.Alert{a}); err != nil {
			t.Fatal(err)
		}
		if err := c.RecordDeliveries(ctx, []alerting.Delivery{delivery("slack", a, 0, alerting.Delivered, 1, a.LastSeen)}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Alerts(ctx, a.FirstSeen, a.LastSeen, ""); err != nil { // writes the history
			t.Fatal(err)
		}
	}
	// And one from a replay of logs a year old, recorded and delivered now: the history
	// ages by when it was written, so it stays.
	replayed := historyAlert(detectors.NewCountry, "replayed", time.Date(2025, 1, 5, 0, 0, 0, 0, time.UTC), time.Date(2025, 1, 5, 1, 0, 0, 0, time.UTC))
	clock.Store(&now)
	if err := c.RecordAlerts(ctx, []detectors.Alert{replayed}); err != nil {
		t.Fatal(err)
	}
	if err := c.RecordDeliveries(ctx, []alerting.Delivery{delivery("slack", replayed, 0, alerting.Delivered, 1, now)}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Alerts(ctx, replayed.FirstSeen, replayed.LastSeen, ""); err != nil {
		t.Fatal(err)
	}
	for _, day := range []int{1, 7, 8, 9, 10} { // 100 events around 01:00 on each
		evs := testEvents(uint64(day), 100, time.Date(2026, 3, day, 1, 0, 0, 0, time.UTC), time.Second, 3)
		if err := c.ArchiveEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
		if err := c.Flush(ctx); err != nil { // a block per day: one archive_batches partition each
			t.Fatal(err)
		}
	}
	conn := testConn(t, addr, db)
	if ttl, err := applyRetention(ctx, conn, 48*time.Hour); err != nil {
		t.Fatal(err)
	} else if server, _ := queryServerVersion(ctx, conn); ttl != server.atLeast(ttlMinServer) {
		t.Fatalf("applyRetention on %s set a TTL: %v", server, ttl)
	}
	// 48h before now is 2026-03-08 06:00: days 1 and 7 ended before it, day 8 did not.
	dropped, err := dropExpiredPartitions(ctx, conn, 48*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if dropped != 6 { // two days of events and of archive_batches, January of the alerts and deliveries
		t.Errorf("dropped %d partitions, want 6", dropped)
	}
	for _, table := range []string{"alerts", "alert_deliveries"} {
		if got := count(t, conn, "SELECT uniqExact(id) FROM "+table); got != 3 {
			t.Errorf("%s keeps %d alerts, want 3: the one that went on into March, the one of March and the replayed one", table, got)
		}
	}
	if got := count(t, conn, "SELECT count() FROM events"); got != 300 {
		t.Errorf("events keeps %d rows, want the 300 of March 8-10", got)
	}
	if got := count(t, conn, "SELECT count() FROM events WHERE time < toDateTime(?)", time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC).Unix()); got != 0 {
		t.Errorf("events keeps %d rows before March 8", got)
	}
	if dropped, err := dropExpiredPartitions(ctx, conn, 0, now); err != nil || dropped != 0 {
		t.Errorf("retention 0 dropped %d partitions, %v; want none", dropped, err)
	}
}

func TestNewClickHouseNeedsAClickHouseSection(t *testing.T) {
	if _, err := NewClickHouse(DefaultConfig(), ClickHouseOptions{Registerer: prometheus.NewRegistry()}); err == nil {
		t.Error("NewClickHouse without a clickhouse section succeeded")
	}
	cfg := Config{DataDir: t.TempDir(), ClickHouse: &ClickHouseConfig{Addr: []string{"127.0.0.1:1"}, BatchSize: -1}}
	if _, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry()}); err == nil {
		t.Error("NewClickHouse with an invalid config succeeded")
	}
	// A spill directory that cannot be created fails at construction, not at the outage.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = Config{DataDir: t.TempDir(), ClickHouse: &ClickHouseConfig{Addr: []string{"127.0.0.1:1"}, SpillDir: filepath.Join(file, "spill")}}
	if _, err := NewClickHouse(cfg, ClickHouseOptions{Registerer: prometheus.NewRegistry()}); err == nil {
		t.Error("NewClickHouse with an unusable spill_dir succeeded")
	}
	cfg = Config{DataDir: t.TempDir(), ClickHouse: &ClickHouseConfig{Addr: []string{"127.0.0.1:1"}}}
	if _, err := NewClickHouse(cfg, ClickHouseOptions{}); err == nil || !strings.Contains(err.Error(), "Registerer is required") {
		t.Errorf("NewClickHouse without a Registerer = %v, want an error", err)
	}
}

// cutProxy forwards connections to a ClickHouse server and can cut them the way a
// network failure would, after a given number of bytes from the client.
type cutProxy struct {
	ln     net.Listener
	target string
	sent   atomic.Int64 // client bytes forwarded, all connections
	budget atomic.Int64 // client bytes to forward before cutting; negative: no limit
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	p.budget.Store(-1)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			go func() { _, _ = io.Copy(client, server); client.Close() }()
			go p.forward(client, server)
		}
	}()
	return p
}

func (p *cutProxy) forward(client, server net.Conn) {
	defer client.Close()
	defer server.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if left := p.budget.Load(); left >= 0 && int64(n) > left {
				_, _ = server.Write(buf[:left])
				p.budget.Store(0)
				return // cut: both sides see the connection drop mid-stream
			} else if left >= 0 {
				p.budget.Add(-int64(n))
			}
			p.sent.Add(int64(n))
			if _, err := server.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestArchiveResendsOnlyLostPieces cuts the connection in the middle of a block's
// insert, as a network failure would, and retries: every row is there exactly once. By
// default ClickHouse squashes an INSERT's data blocks into blocks of
// min_insert_block_size_rows (about a million) before it writes them, so the cut loses
// the whole insert; a server set to squash less commits the pieces it received, and
// the retry sends only the rest.
func TestArchiveResendsOnlyLostPieces(t *testing.T) {
	addr := clickhousetest.Require(t)
	const n = 4 * pieceRows
	evs := testEvents(9, n, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), time.Millisecond, 7)
	for _, tc := range []struct {
		name     string
		settings clickhouse.Settings
		kept     int // pieces ClickHouse keeps from the insert that was cut
	}{
		{"squashed", nil, 0},
		{"pieces", clickhouse.Settings{"min_insert_block_size_rows": pieceRows / 2}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := clickhousetest.NewDatabase(t, addr)
			proxy := newCutProxy(t, addr)
			c, err := NewClickHouse(testConfig(t, proxy.ln.Addr().String(), db), ClickHouseOptions{Registerer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close(context.Background()) })
			ctx := clickhouse.Context(testContext(t), clickhouse.WithSettings(tc.settings))
			if err := c.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			// A whole insert, to learn how many bytes one takes.
			before := proxy.sent.Load()
			if err := c.insert(ctx, newBlock(0x1000, evs)); err != nil {
				t.Fatal(err)
			}
			size := proxy.sent.Load() - before

			b := newBlock(0x2000, evs)
			proxy.budget.Store(size * 6 / 10) // past the second piece, inside the third
			if err := c.insert(ctx, b); err == nil {
				t.Fatal("insert through a connection cut mid-block succeeded")
			}
			proxy.budget.Store(-1)
			if err := c.insert(ctx, b); err != nil {
				t.Fatal(err)
			}
			conn := testConn(t, addr, db)
			if got := count(t, conn, "SELECT count() FROM events WHERE batch_id >= 0x2000 AND batch_id < 0x2004"); got != n {
				t.Errorf("events holds %d rows of the block cut mid-insert, want %d", got, n)
			}
			if got := count(t, conn, "SELECT sum(requests) FROM route_minute"); got != 2*n {
				t.Errorf("route_minute counts %d requests, want %d", got, 2*n)
			}
			if got := testutil.ToFloat64(c.m.events.WithLabelValues(resultDuplicate)); got != float64(tc.kept*pieceRows) {
				t.Errorf("the retry found %v rows already written, want %d", got, tc.kept*pieceRows)
			}
		})
	}
}
