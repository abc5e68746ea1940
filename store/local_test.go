package store

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/gatewatch/gatewatch/ingest"
)

func newTestLocal(t *testing.T, cfg Config) *Local {
	t.Helper()
	l, err := NewLocal(cfg, LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return l
}

func TestLocalArchive(t *testing.T) {
	testArchive(t, func(t *testing.T) archive {
		return newTestLocal(t, Config{DataDir: t.TempDir()})
	})
}

// TestLocalArchiveKeepsArrivalOrder: the embedded store writes a transaction's events in
// time order (puts in key order are what keep bbolt's inserts cheap), and keeps the
// order they arrived in within a millisecond, across transactions too.
func TestLocalArchiveKeepsArrivalOrder(t *testing.T) {
	evs := shuffledEvents()
	l := newTestLocal(t, Config{DataDir: t.TempDir()})
	for chunk := range slices.Chunk(evs, 250) {
		fill(t, l, chunk) // a transaction for each chunk
	}
	want := slices.Clone(evs)
	slices.SortStableFunc(want, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	holds(t, l, want, evs[3].ClientKey)
}

// holds checks that l's archive over evs' time range is evs, in their order, and that
// key's events are those of evs, in the same order.
func holds(t *testing.T, l *Local, evs []ingest.Event, key string) {
	t.Helper()
	from, to := evs[0].Time, evs[len(evs)-1].Time.Add(time.Millisecond)
	same := func(a, b ingest.Event) bool { return a == b }
	if got := readAll(t, l, from, to, ""); !slices.EqualFunc(got, evs, same) {
		t.Errorf("read %d events, not the %d archived, in order", len(got), len(evs))
	}
	var of []ingest.Event
	for _, ev := range evs {
		if ev.ClientKey == key || ev.TokenFP == key {
			of = append(of, ev)
		}
	}
	if got := readAll(t, l, from, to, key); !slices.EqualFunc(got, of, same) {
		t.Errorf("key %s: read %d events, not its %d, in order", key, len(got), len(of))
	}
}

// TestLocalArchiveWritesInBackground: past archiveBuffer events the buffer is written
// by a goroutine while ArchiveEvents fills the next; whatever the writes' timing, a
// read (after a Flush, which is Sync) has every event, in order.
func TestLocalArchiveWritesInBackground(t *testing.T) {
	evs := testEvents(3, 3*archiveBuffer+500, time.Date(2026, 3, 7, 10, 0, 0, 0, time.UTC), time.Millisecond, 50)
	l := newTestLocal(t, Config{DataDir: t.TempDir()})
	fill(t, l, evs)
	holds(t, l, evs, evs[0].ClientKey)
}

// TestLocalArchiveHoldsIngestBack: while writes fail (here the file is closed under the
// store; in life, a full disk), the buffer stops at twice archiveBuffer and
// ArchiveEvents says ErrBufferFull, taking none of the refused events, so the pipeline
// waits instead of growing without bound.
func TestLocalArchiveHoldsIngestBack(t *testing.T) {
	l := newTestLocal(t, Config{DataDir: t.TempDir()})
	if err := l.db.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	taken := 0
	var full error
	for chunk := range slices.Chunk(testEvents(4, 3*archiveBuffer, time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC), time.Millisecond, 5), 1000) {
		if err := l.ArchiveEvents(ctx, chunk); err != nil {
			full = err
			break
		}
		taken += len(chunk)
	}
	if !errors.Is(full, ErrBufferFull) || !errors.Is(full, bolterrors.ErrDatabaseNotOpen) {
		t.Fatalf("ArchiveEvents with failing writes: %v, want ErrBufferFull with the cause", full)
	}
	l.writeMu.Lock() // a failed background write puts its events back
	l.writeMu.Unlock()
	l.archMu.Lock()
	waiting := len(l.archBuf)
	l.archMu.Unlock()
	if waiting != taken || waiting < 2*archiveBuffer || waiting >= 2*archiveBuffer+1000 {
		t.Errorf("%d events waiting, %d taken; want them equal, from 2×archiveBuffer to one chunk more", waiting, taken)
	}
	if got := testutil.ToFloat64(l.m.events.WithLabelValues(resultRejected)); got != 1000 {
		t.Errorf("%v events counted rejected, want the refused call's 1000", got)
	}
	if got := testutil.ToFloat64(l.m.buffered); got != float64(waiting) {
		t.Errorf("buffered gauge %v, want %d", got, waiting)
	}
	if testutil.ToFloat64(l.m.insertErrors) == 0 || testutil.ToFloat64(l.m.events.WithLabelValues(resultWritten)) != 0 {
		t.Error("failed writes not counted as errors, or counted as written")
	}
}

// TestLocalArchiveMetrics: the embedded store exports the archive metrics the
// dashboard reads for ClickHouse: events waiting in memory, and written.
func TestLocalArchiveMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	l, err := NewLocal(Config{DataDir: t.TempDir()}, LocalOptions{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	ctx := testContext(t)
	if err := l.ArchiveEvents(ctx, testEvents(5, 100, time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC), time.Millisecond, 5)); err != nil {
		t.Fatal(err)
	}
	want := func(written, buffered float64) {
		t.Helper()
		if got := testutil.ToFloat64(l.m.events.WithLabelValues(resultWritten)); got != written {
			t.Errorf("written %v, want %v", got, written)
		}
		if got := testutil.ToFloat64(l.m.buffered); got != buffered {
			t.Errorf("buffered %v, want %v", got, buffered)
		}
	}
	want(0, 100)
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	want(100, 0)
	if n, err := testutil.GatherAndCount(reg, "gatewatch_store_archive_events_total", "gatewatch_store_archive_buffered_events"); err != nil || n != 6 {
		t.Errorf("gathered %d series (%v), want the 5 outcomes and the gauge", n, err)
	}
}

func readAll(t *testing.T, a archive, from, to time.Time, key string) []ingest.Event {
	t.Helper()
	var out []ingest.Event
	for ev, err := range a.ReadEvents(testContext(t), from, to, key) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func TestLocalKeepsEventsAcrossReopen(t *testing.T) {
	cfg := Config{DataDir: t.TempDir()}
	l, err := NewLocal(cfg, LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	evs := testEvents(21, 3000, start, time.Millisecond, 4)
	if err := l.ArchiveEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	// A second store on the same data_dir is refused while the first has it open.
	if _, err := NewLocal(cfg, LocalOptions{}); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("second NewLocal on an open data_dir = %v, want a lock timeout", err)
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	l = newTestLocal(t, cfg)
	if got := readAll(t, l, start, start.Add(time.Hour), ""); len(got) != 3000 || got[2999].RequestID != evs[2999].RequestID {
		t.Errorf("reopened store reads %d events, want all 3000 in order", len(got))
	}
	// Sequences go on where they stopped: later events of the same millisecond sort after.
	more := testEvents(22, 10, evs[2999].Time, 0, 4)
	if err := l.ArchiveEvents(ctx, more); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, l, evs[2999].Time, evs[2999].Time.Add(time.Millisecond), "")
	if len(got) != 11 || got[0].RequestID != evs[2999].RequestID || got[10].RequestID != more[9].RequestID {
		t.Errorf("events of one millisecond across a reopen: %d, want the old one then the 10 new ones", len(got))
	}
}

// TestLocalArchiveSync: archived events wait in memory until archiveBuffer of them do or
// Sync is called (the pipeline syncs before it commits offsets), and a reader sees
// them either way.
func TestLocalArchiveSync(t *testing.T) {
	l := newTestLocal(t, Config{DataDir: t.TempDir()})
	ctx := testContext(t)
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	onDisk := func() int {
		n := 0
		if err := l.db.View(func(tx *bolt.Tx) error {
			n = tx.Bucket(bucketEvents).Stats().KeyN
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := l.ArchiveEvents(ctx, testEvents(31, 100, start, time.Millisecond, 4)); err != nil {
		t.Fatal(err)
	}
	if n := onDisk(); n != 0 {
		t.Fatalf("%d events written before Sync, want them waiting", n)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if n := onDisk(); n != 100 {
		t.Fatalf("%d events on disk after Sync, want 100", n)
	}
	big := testEvents(32, archiveBuffer, start.Add(time.Minute), time.Millisecond, 4)
	if err := l.ArchiveEvents(ctx, big); err != nil {
		t.Fatal(err)
	}
	l.writeMu.Lock() // the full buffer is written in the background: wait for that write
	l.writeMu.Unlock()
	if n := onDisk(); n != 100+archiveBuffer {
		t.Errorf("%d events on disk after a full buffer, want %d", n, 100+archiveBuffer)
	}
	if err := l.ArchiveEvents(ctx, testEvents(33, 5, start.Add(time.Hour), time.Millisecond, 4)); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, l, start.Add(time.Hour), start.Add(2*time.Hour), ""); len(got) != 5 {
		t.Errorf("a reader sees %d of 5 waiting events", len(got))
	}
}

func TestLocalRetention(t *testing.T) {
	now := time.Date(2026, 3, 10, 6, 0, 0, 0, time.UTC)
	l, err := NewLocal(Config{DataDir: t.TempDir(), Retention: 48 * time.Hour}, LocalOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close(context.Background()) })
	ctx := testContext(t)
	var all []ingest.Event
	for _, day := range []int{1, 7, 8, 9} { // 6,000 events a day from 00:00, 14.4s apart: 13,500 expire, more than a deleteChunk
		evs := testEvents(uint64(day), 6000, time.Date(2026, 3, day, 0, 0, 0, 0, time.UTC), 14400*time.Millisecond, 9)
		if err := l.ArchiveEvents(ctx, evs); err != nil {
			t.Fatal(err)
		}
		all = append(all, evs...)
	}
	cutoff := now.Add(-48 * time.Hour)
	var keep []ingest.Event
	for _, ev := range all {
		if !ev.Time.Before(cutoff) {
			keep = append(keep, ev)
		}
	}

	// Run deletes at once, then hourly; the first pass is what this test waits for.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- l.Run(runCtx) }()
	// DeleteExpired is idempotent: whichever pass runs first, this one ends with the
	// same archive, so the test need not race Run.
	if _, err := l.DeleteExpired(ctx, now); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	got := readAll(t, l, time.Time{}, now, "")
	if len(got) != len(keep) || got[0].RequestID != keep[0].RequestID {
		t.Fatalf("after retention %d events remain, want %d from %s", len(got), len(keep), cutoff)
	}
	key := all[0].ClientKey
	var wantKey int
	for _, ev := range keep {
		if ev.ClientKey == key || ev.TokenFP == key {
			wantKey++
		}
	}
	if got := readAll(t, l, time.Time{}, now, key); len(got) != wantKey {
		t.Errorf("key %s reads %d events after retention, want %d", key, len(got), wantKey)
	}
	// The index lost the expired entries too: nothing is left under the old days.
	var entries int
	if err := l.db.View(func(tx *bolt.Tx) error {
		entries = tx.Bucket(bucketByKey).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var wantEntries int
	for _, ev := range keep {
		wantEntries++
		if ev.TokenFP != "" && ev.TokenFP != ev.ClientKey {
			wantEntries++
		}
	}
	if entries != wantEntries {
		t.Errorf("events_by_key holds %d entries, want %d", entries, wantEntries)
	}
}
