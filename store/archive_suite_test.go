package store

import (
	"context"
	"iter"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// archive is what replay and forensics need of an event archive. Every archive
// implementation passes testArchive.
type archive interface {
	ArchiveEvents(ctx context.Context, evs []ingest.Event) error
	Flush(ctx context.Context) error
	ReadEvents(ctx context.Context, from, to time.Time, key string) iter.Seq2[ingest.Event, error]
}

// testArchive is the behavioural suite of an event archive. open returns an empty
// archive for one subtest.
func testArchive(t *testing.T, open func(t *testing.T) archive) {
	// Two days around midnight, across hour boundaries, several events per millisecond
	// at times: 3 batches of 1500 events, 37ms apart, from 23:10 on 2026-03-01.
	start := time.Date(2026, 3, 1, 23, 10, 0, 0, time.UTC)
	var all []ingest.Event
	for i := range 3 {
		all = append(all, testEvents(uint64(10+i), 1500, start.Add(time.Duration(i)*1500*37*time.Millisecond), 37*time.Millisecond, 20)...)
	}
	end := all[len(all)-1].Time.Add(time.Millisecond)

	read := func(t *testing.T, a archive, from, to time.Time, key string) []ingest.Event {
		t.Helper()
		var out []ingest.Event
		for ev, err := range a.ReadEvents(testContext(t), from, to, key) {
			if err != nil {
				t.Fatalf("ReadEvents(%s, %s, %q): %v", from, to, key, err)
			}
			out = append(out, ev)
		}
		return out
	}
	// want is evs in [from, to) with key, in time order, archive order within a millisecond.
	want := func(evs []ingest.Event, from, to time.Time, key string) []ingest.Event {
		var out []ingest.Event
		for _, ev := range evs {
			if !ev.Time.Before(from) && ev.Time.Before(to) && (key == "" || ev.ClientKey == key || ev.TokenFP == key) {
				out = append(out, ev)
			}
		}
		slices.SortStableFunc(out, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
		return out
	}
	same := func(t *testing.T, what string, got, want []ingest.Event) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d events, want %d", what, len(got), len(want))
		}
		for i := range got {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Fatalf("%s: event %d\n got %+v\nwant %+v", what, i, got[i], want[i])
			}
		}
	}

	t.Run("everything back in order", func(t *testing.T) {
		a := open(t)
		fill(t, a, all)
		same(t, "whole range", read(t, a, start.Add(-time.Hour), end.Add(time.Hour), ""), want(all, start, end, ""))
		same(t, "from the zero time", read(t, a, time.Time{}, end.Add(24*time.Hour), ""), want(all, start, end, ""))
	})

	t.Run("ranges are half-open to the millisecond", func(t *testing.T) {
		a := open(t)
		fill(t, a, all)
		for _, r := range []struct{ from, to time.Time }{
			{all[100].Time, all[2000].Time},                                 // crosses midnight and hours
			{all[100].Time.Add(time.Millisecond), all[101].Time},            // nothing between two events
			{all[100].Time, all[100].Time.Add(time.Millisecond)},            // exactly one millisecond
			{time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), all[3000].Time},   // from midnight
			{all[10].Time.Add(500 * time.Microsecond), all[20].Time.Add(1)}, // sub-millisecond bounds
			{end, end.Add(time.Hour)},                                       // after everything
			{all[50].Time, all[40].Time},                                    // empty: from after to
		} {
			same(t, r.from.String()+".."+r.to.String(), read(t, a, r.from, r.to, ""), want(all, r.from, r.to, ""))
		}
	})

	t.Run("by client key or token fingerprint", func(t *testing.T) {
		a := open(t)
		fill(t, a, all)
		for _, key := range []string{all[0].ClientKey, all[1].TokenFP, "key-999", all[7].ClientKey} {
			got := read(t, a, start, end, key)
			w := want(all, start, end, key)
			same(t, "key "+key, got, w)
		}
		if n := len(read(t, a, start, end, all[0].ClientKey)); n == 0 {
			t.Fatalf("key %s: no events", all[0].ClientKey)
		}
	})

	t.Run("archive order within a millisecond", func(t *testing.T) {
		a := open(t)
		at := time.Date(2026, 3, 5, 10, 0, 0, 5e6, time.UTC)
		evs := testEvents(99, 600, at, 0, 4) // all in one millisecond
		fill(t, a, evs)
		same(t, "one millisecond", read(t, a, at, at.Add(time.Millisecond), ""), evs)
		same(t, "read again", read(t, a, at, at.Add(time.Millisecond), ""), evs)
	})

	t.Run("out of time order", func(t *testing.T) {
		evs := shuffledEvents()
		a := open(t)
		fill(t, a, evs)
		from, to := evs[0].Time.Add(-time.Hour), evs[0].Time.Add(time.Hour)
		// Within a millisecond the order is the archive's own (ClickHouse's blocks
		// are not ArchiveEvents' calls): compare those as sets.
		byMs := func(evs []ingest.Event) []ingest.Event {
			slices.SortStableFunc(evs, func(a, b ingest.Event) int {
				if c := a.Time.Compare(b.Time); c != 0 {
					return c
				}
				return strings.Compare(a.RequestID, b.RequestID)
			})
			return evs
		}
		same(t, "whole range", byMs(read(t, a, from, to, "")), byMs(want(evs, from, to, "")))
		for _, key := range []string{evs[0].ClientKey, evs[5].TokenFP} {
			same(t, "key "+key, byMs(read(t, a, from, to, key)), byMs(want(evs, from, to, key)))
		}
	})

	t.Run("stopping early", func(t *testing.T) {
		a := open(t)
		fill(t, a, all)
		n := 0
		for _, err := range a.ReadEvents(testContext(t), start, end, "") {
			if err != nil {
				t.Fatal(err)
			}
			if n++; n == 10 {
				break
			}
		}
		if n != 10 {
			t.Errorf("read %d events before stopping, want 10", n)
		}
	})
}

// fill archives evs into a in calls of 250 events, as ingest batches come, then flushes.
func fill(t *testing.T, a archive, evs []ingest.Event) {
	t.Helper()
	ctx := testContext(t)
	for chunk := range slices.Chunk(evs, 250) {
		if err := a.ArchiveEvents(ctx, chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// shuffledEvents are events out of time order, as batches merged from partitions whose
// shippers lag by different amounts arrive: 3,000 events over 6 seconds, each run of 100
// shuffled, milliseconds shared in pairs (within a run).
func shuffledEvents() []ingest.Event {
	evs := testEvents(7, 3000, time.Date(2026, 3, 6, 10, 0, 0, 0, time.UTC), 2*time.Millisecond, 20)
	for i := range evs {
		evs[i].Time = evs[i-i%2].Time
	}
	r := rand.New(rand.NewPCG(7, 7))
	for run := range slices.Chunk(evs, 100) {
		r.Shuffle(len(run), func(i, j int) { run[i], run[j] = run[j], run[i] })
	}
	return evs
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
