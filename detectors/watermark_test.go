package detectors

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	partA = ingest.Partition{Source: "waf-logs", ID: 0}
	partB = ingest.Partition{Source: "waf-logs", ID: 1}
)

// partRun is events of one partition, in that partition's order.
type partRun struct {
	p      ingest.Partition
	events []ingest.Event
}

// interleave cuts each partition's events into runs of n and hands them out in batches
// of one run per partition, round robin, as a consumer reading them side by side would.
func interleave(n int, parts ...partRun) []*ingest.Batch {
	var out []*ingest.Batch
	for off := 0; ; off += n {
		b := &ingest.Batch{}
		for _, pr := range parts {
			if off >= len(pr.events) {
				continue
			}
			run := pr.events[off:min(off+n, len(pr.events))]
			b.Events = append(b.Events, run...)
			b.Runs = append(b.Runs, ingest.Run{Partition: pr.p, N: len(run)})
		}
		if len(b.Events) == 0 {
			return out
		}
		if off == 0 {
			for _, pr := range parts {
				b.Opened = append(b.Opened, pr.p)
			}
		}
		out = append(out, b)
	}
}

// runBatches feeds batches to a new engine with clock now (nil: none) and returns every
// alert and the engine.
func runBatches(t testing.TB, cfg Config, now func() time.Time, batches []*ingest.Batch) ([]Alert, *Engine, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	e, err := NewEngine(cfg, Options{Registerer: reg, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadBaselines(context.Background()); err != nil {
		t.Fatal(err)
	}
	var alerts []Alert
	for _, b := range batches {
		alerts = append(alerts, e.ObserveBatch(b)...)
	}
	return append(alerts, e.Flush()...), e, reg
}

// steady is one request a second from a healthy client for d, from start.
func steady(start time.Time, d time.Duration, key string) []ingest.Event {
	return repeat(int(d/time.Second), start, time.Second, func(_ int, ts time.Time) ingest.Event {
		return req(ts, client(key), status(200))
	})
}

// burst403 is n 403s to client key, one every 100ms from start.
func burst403(n int, start time.Time, key string) []ingest.Event {
	return repeat(n, start, 100*time.Millisecond, func(_ int, ts time.Time) ingest.Event {
		return req(ts, client(key), status(403))
	})
}

// A partition whose shipper runs two minutes behind the other still catches the burst
// in it: lateness is judged within the partition, and the watermark waits for it.
func TestLaggingPartitionIsNotBlind(t *testing.T) {
	cfg := only(ForbiddenBurst)
	a := steady(t0, 10*time.Minute, "healthy")
	// Partition B carries the same span of time two minutes behind A, with a burst of
	// 30 403s at t0+5m: B's records arrive side by side with A's from two minutes later.
	b := concat(steady(t0.Add(-2*time.Minute), 7*time.Minute, "other"), burst403(30, t0.Add(5*time.Minute), "attacker"),
		steady(t0.Add(5*time.Minute+3*time.Second), 3*time.Minute, "other"))
	slices.SortStableFunc(b, func(x, y ingest.Event) int { return x.Time.Compare(y.Time) })

	alerts, _, reg := runBatches(t, cfg, nil, interleave(50, partRun{partA, a}, partRun{partB, b}))
	if got := keysOf(alerts); !slices.Equal(got, []string{"attacker"}) {
		t.Errorf("alerts for %v, want one incident for attacker", got)
	}
	if late := counterValue(t, reg, "gatewatch_detectors_late_events_total"); late != 0 {
		t.Errorf("%v events late, want none", late)
	}

	// The negative control: the same records as one stream, as before partitions were
	// told apart, make B's burst late and raise nothing.
	var flat []ingest.Event
	for _, bt := range interleave(50, partRun{partA, a}, partRun{partB, b}) {
		flat = append(flat, bt.Events...)
	}
	if got := keysOf(run(t, cfg, nil, 0, flat).alerts); len(got) != 0 {
		t.Errorf("one stream: alerts for %v, want none (the burst is late there)", got)
	}
}

// One record stamped 20 hours ahead changes nothing: without a clock (replay) it is
// held until the next record of its partition shows it was a glitch; with one (live)
// it is ahead of the wall clock at once. Either way it counts once as ahead, is judged
// at the stream's time, and every attack is still caught.
func TestRecordFarAheadChangesNothing(t *testing.T) {
	cfg := only(ForbiddenBurst)
	base := concat(steady(t0, 5*time.Minute, "healthy"), burst403(30, t0.Add(5*time.Minute), "attacker"),
		steady(t0.Add(5*time.Minute+3*time.Second), 5*time.Minute, "healthy"))
	glitch := req(t0.Add(20*time.Hour), client("healthy"), status(200))
	withGlitch := slices.Insert(slices.Clone(base), 100, glitch)

	checkGlitchChangesNothing(t, cfg, base, withGlitch, 1, replayClock, clock{"live", func() time.Time { return t0.Add(10 * time.Minute) }})
}

// clock is a wall clock for runBatches, named.
type clock struct {
	name string
	now  func() time.Time
}

// replayClock is none: replay's.
var replayClock = clock{"replay", nil}

// checkGlitchChangesNothing runs glitched, base with records stamped ahead, through
// engines with cfg and each of clocks, in batches of several sizes: the alerts are
// base's, the glitch's records (ahead of them) are counted ahead, none is late and
// the watermark keeps its place.
func checkGlitchChangesNothing(t *testing.T, cfg Config, base, glitched []ingest.Event, ahead float64, clocks ...clock) {
	t.Helper()
	want, _, _ := runBatches(t, cfg, nil, interleave(64, partRun{partA, base}))
	for _, c := range clocks {
		t.Run(c.name, func(t *testing.T) {
			for _, batch := range []int{1, 7, 64, len(glitched)} {
				got, e, reg := runBatches(t, cfg, c.now, interleave(batch, partRun{partA, glitched}))
				if alertsJSON(t, got) != alertsJSON(t, want) {
					t.Errorf("batches of %d: alerts\n%s\nwant\n%s", batch, alertsJSON(t, got), alertsJSON(t, want))
				}
				if n := counterValue(t, reg, "gatewatch_detectors_ahead_events_total"); n != ahead {
					t.Errorf("batches of %d: %v events ahead, want %v", batch, n, ahead)
				}
				if late := counterValue(t, reg, "gatewatch_detectors_late_events_total"); late != 0 {
					t.Errorf("batches of %d: %v events late, want none", batch, late)
				}
				if wm := e.Watermark(); wm.After(t0.Add(time.Hour)) {
					t.Errorf("batches of %d: watermark %s moved with the glitch", batch, wm)
				}
			}
		})
	}
}

// A gateway whose clock ran an hour ahead for a few seconds, until it was stepped
// back, changes nothing either: its records are held until the stream comes back, then
// judged at the stream's time. Taken for a jump, as when one held record was decided
// by the next one, the stream moved an hour on with them, and every later record of
// the partition was late (400 of 630 here, the attack among them).
func TestClockGlitchChangesNothing(t *testing.T) {
	cfg := only(ForbiddenBurst)
	base := concat(steady(t0, 5*time.Minute, "healthy"), burst403(30, t0.Add(5*time.Minute), "attacker"),
		steady(t0.Add(5*time.Minute+3*time.Second), 5*time.Minute, "healthy"))
	glitched := slices.Clone(base)
	for i := 200; i < 230; i++ { // 30 records, 30 seconds of the stream, stamped an hour on
		glitched[i].Time = glitched[i].Time.Add(time.Hour)
	}
	// Read from a backlog, three hours after the fact, the glitch is in the past.
	backlog := clock{"backlog", func() time.Time { return t0.Add(3 * time.Hour) }}
	checkGlitchChangesNothing(t, cfg, base, glitched, 30, replayClock, backlog)
	// Live, a record stamped past the wall clock among them is judged ahead on its
	// own, and does not decide the held ones: taken for a record far ahead of them, it
	// made them a jump of the stream. (Without a clock it is one: see decide.)
	t.Run("past the clock", func(t *testing.T) {
		future := slices.Insert(slices.Clone(glitched), 210, req(t0.Add(20*time.Hour), client("healthy"), status(200)))
		checkGlitchChangesNothing(t, cfg, base, future, 31, backlog)
	})
	// Past what a glitch may be (more than holdSpan of its own time), the same records
	// are a jump of the stream, and the rest of the partition is late.
	long := slices.Clone(base)
	for i := range long {
		if d := long[i].Time.Sub(t0); d >= 100*time.Second && d < 100*time.Second+holdSpan+10*time.Second {
			long[i].Time = long[i].Time.Add(time.Hour)
		}
	}
	if _, _, reg := runBatches(t, cfg, nil, interleave(64, partRun{partA, long})); counterValue(t, reg, "gatewatch_detectors_late_events_total") == 0 {
		t.Error("a glitch longer than holdSpan: no event late; the test expects it taken for a jump")
	}
}

// A stream that resumes after a gap with many records at once (a gateway back after
// an outage, read from a backlog) is judged at its own times once its records span
// holdSpan, not at the old stream's: none of them is ahead, and the burst right after
// the gap is seen where it happened.
func TestResumedStreamIsNotAhead(t *testing.T) {
	cfg := only(ForbiddenBurst)
	resume := t0.Add(35 * time.Minute)
	events := concat(steady(t0, 5*time.Minute, "healthy"), burst403(30, resume, "attacker"),
		repeat(3000, resume.Add(3*time.Second), 100*time.Millisecond, func(_ int, ts time.Time) ingest.Event {
			return req(ts, client("healthy"), status(200))
		}))
	for _, batch := range []int{1, 64, len(events)} {
		alerts, _, reg := runBatches(t, cfg, nil, interleave(batch, partRun{partA, events}))
		if got := keysOf(alerts); !slices.Equal(got, []string{"attacker"}) {
			t.Fatalf("batches of %d: alerts for %v, want attacker", batch, got)
		}
		if !alerts[0].FirstSeen.Equal(resume) {
			t.Errorf("batches of %d: first seen at %s, want the burst's own start %s", batch, alerts[0].FirstSeen, resume)
		}
		for _, m := range []string{"gatewatch_detectors_ahead_events_total", "gatewatch_detectors_late_events_total"} {
			if n := counterValue(t, reg, m); n != 0 {
				t.Errorf("batches of %d: %s %v, want 0", batch, m, n)
			}
		}
	}
}

// TestLateLag: a late event's lag behind its partition's newest event time is kept in
// a histogram, so that an operator sees what allowed_lateness would have taken it.
func TestLateLag(t *testing.T) {
	cfg := only(ForbiddenBurst) // allowed_lateness 30s
	events := concat(steady(t0, 2*time.Minute, "healthy"),
		[]ingest.Event{req(t0.Add(29*time.Second), client("healthy")), req(t0.Add(109*time.Second), client("healthy"))})
	_, _, reg := runBatches(t, cfg, nil, interleave(64, partRun{partA, events}))
	if n := counterValue(t, reg, "gatewatch_detectors_late_events_total"); n != 1 {
		t.Fatalf("%v events late, want the one 90s behind", n)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "gatewatch_detectors_late_lag_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() != 1 || h.GetSampleSum() != 90 {
				t.Errorf("late lag: %d samples summing to %vs, want one of 90s", h.GetSampleCount(), h.GetSampleSum())
			}
			return
		}
	}
	t.Error("no gatewatch_detectors_late_lag_seconds")
}

// Late records are warned of as they come, with their partition and how far behind
// they are: the first, and then each time the partition's count doubles.
func TestLateRecordsAreWarnedOf(t *testing.T) {
	var logs bytes.Buffer
	e, err := NewEngine(only(ForbiddenBurst), Options{
		Registerer: prometheus.NewPedanticRegistry(),
		Logger:     slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	events := steady(t0, 2*time.Minute, "healthy")
	for range 5 { // 90 s behind, allowed_lateness 30s
		events = append(events, req(t0.Add(29*time.Second), client("healthy")))
	}
	for _, b := range interleave(64, partRun{partA, events}) {
		e.ObserveBatch(b)
	}
	var got []string
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "record late") {
			got = append(got, line[strings.Index(line, "partition="):])
		}
	}
	want := []string{
		"partition=waf-logs/0 record_time=2026-03-02T10:00:29.000Z stream_time=2026-03-02T10:01:59.000Z watermark=2026-03-02T10:01:29.000Z late_records=1\n",
		"partition=waf-logs/0 record_time=2026-03-02T10:00:29.000Z stream_time=2026-03-02T10:01:59.000Z watermark=2026-03-02T10:01:29.000Z late_records=2\n",
		"partition=waf-logs/0 record_time=2026-03-02T10:00:29.000Z stream_time=2026-03-02T10:01:59.000Z watermark=2026-03-02T10:01:29.000Z late_records=4\n",
	}
	if !slices.Equal(got, want) {
		t.Errorf("late warnings:\n%s\nwant\n%s", strings.Join(got, ""), strings.Join(want, ""))
	}
}

// A stream with gaps longer than max_ahead (a quiet API at night) is not a stream of
// glitches: the second record after a gap confirms it, and each record is judged at its
// own time. Live, the wall clock confirms the gap at once.
func TestGapIsNotAhead(t *testing.T) {
	cfg := only(ForbiddenBurst)
	var events []ingest.Event
	for h := range 6 { // a burst every two hours, nothing in between
		events = append(events, burst403(25, t0.Add(time.Duration(2*h)*time.Hour), fmt.Sprintf("k%d", h))...)
	}
	alerts, _, reg := runBatches(t, cfg, nil, interleave(10, partRun{partA, events}))
	if got := keysOf(alerts); len(got) != 6 {
		t.Errorf("alerts for %v, want one for each of the 6 bursts", got)
	}
	if n := counterValue(t, reg, "gatewatch_detectors_ahead_events_total"); n != 0 {
		t.Errorf("%v events ahead, want none", n)
	}
	for _, a := range alerts {
		if a.FirstSeen.Minute() != 0 || a.FirstSeen.Second() != 0 {
			t.Errorf("%s first seen at %s, want the burst's own start", a.Key, a.FirstSeen)
		}
	}
}

// A partition whose stream resumes after a gap longer than max_ahead while the other
// partitions delivered the records of the gap, as a backlog sent by a sticky
// partitioner (kcat's, librdkafka's) is read merged by event time, is judged at its own
// time at once: its records are near the newest of the others', so they are no clock
// glitch. Held until its next record decided, a block of it ending in another gap was
// judged after the others had gone on minutes past it, late, and its attack unseen.
func TestGapFilledByOtherPartitions(t *testing.T) {
	cfg := only(ForbiddenBurst)
	resume := t0.Add(20 * time.Minute)
	a := steady(t0, 40*time.Minute, "healthy")
	b := concat(steady(t0, 5*time.Minute, "other"), burst403(30, resume, "attacker"))
	for _, batch := range []int{1, 16, 256} {
		alerts, _, reg := runBatches(t, cfg, nil, byTime(batch, partRun{partA, a}, partRun{partB, b}))
		if got := keysOf(alerts); !slices.Equal(got, []string{"attacker"}) {
			t.Errorf("batches of %d: alerts for %v, want attacker", batch, got)
		}
		for _, m := range []string{"gatewatch_detectors_ahead_events_total", "gatewatch_detectors_late_events_total"} {
			if n := counterValue(t, reg, m); n != 0 {
				t.Errorf("batches of %d: %s %v, want 0", batch, m, n)
			}
		}
	}
}

// byTime merges the partitions' events by event time (equal times in the order of
// parts) and hands them out in batches of n, as the Kafka source does.
func byTime(n int, parts ...partRun) []*ingest.Batch {
	type ev struct {
		p  ingest.Partition
		ev ingest.Event
	}
	var all []ev
	for _, pr := range parts {
		for _, e := range pr.events {
			all = append(all, ev{pr.p, e})
		}
	}
	slices.SortStableFunc(all, func(x, y ev) int { return x.ev.Time.Compare(y.ev.Time) })
	var out []*ingest.Batch
	for chunk := range slices.Chunk(all, n) {
		b := &ingest.Batch{}
		if len(out) == 0 {
			for _, pr := range parts {
				b.Opened = append(b.Opened, pr.p)
			}
		}
		for _, e := range chunk {
			if k := len(b.Runs); k > 0 && b.Runs[k-1].Partition == e.p {
				b.Runs[k-1].N++
			} else {
				b.Runs = append(b.Runs, ingest.Run{Partition: e.p, N: 1})
			}
			b.Events = append(b.Events, e.ev)
		}
		out = append(out, b)
	}
	return out
}

// A partition opened but silent holds the watermark back (never further than
// allowed_lateness plus max_skew behind the others) until idle_timeout of wall clock has
// passed; then it no longer does, and when it delivers again its records are judged
// against the watermark, which never moves back.
func TestIdlePartition(t *testing.T) {
	cfg := only(ForbiddenBurst)
	cfg.IdleTimeout = time.Minute
	wall := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) // the wall clock has nothing to do with event time
	now := func() time.Time { return wall }
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	observe := func(p ingest.Partition, events []ingest.Event, opened ...ingest.Partition) []Alert {
		b := ingest.NewBatch(events, nil)
		b.Runs = []ingest.Run{{Partition: p, N: len(events)}}
		b.Opened = opened
		return e.ObserveBatch(b)
	}
	if got := observe(partA, burst403(30, t0, "attacker"), partA, partB); len(got) != 0 {
		t.Fatalf("alerts %v while B holds the watermark", keysOf(got))
	}
	holding := t0.Add(2900*time.Millisecond - cfg.AllowedLateness - cfg.MaxSkew)
	if wm := e.Watermark(); !wm.Equal(holding) {
		t.Fatalf("watermark %s before B delivered or went idle, want allowed_lateness plus max_skew behind A: %s", wm, holding)
	}
	wall = wall.Add(30 * time.Second)
	if got := observe(partA, steady(t0.Add(3*time.Second), 2*time.Minute, "healthy")); len(got) != 0 {
		t.Fatalf("30s of wall clock: alerts %v; want none, B is not idle yet", keysOf(got))
	}
	wall = wall.Add(31 * time.Second)
	got := observe(partA, steady(t0.Add(123*time.Second), time.Second, "healthy"))
	if keys := keysOf(got); !slices.Equal(keys, []string{"attacker"}) {
		t.Fatalf("after idle_timeout: alerts %v, want attacker", keys)
	}
	if wm, want := e.Watermark(), t0.Add(123*time.Second-cfg.AllowedLateness); !wm.Equal(want) {
		t.Errorf("watermark %s, want A's %s", wm, want)
	}
	// B wakes up with records from before the watermark: they are late, and the
	// watermark never moves back.
	wm := e.Watermark()
	observe(partB, steady(t0, time.Second, "other"))
	if !e.Watermark().Equal(wm) {
		t.Errorf("watermark moved from %s to %s", wm, e.Watermark())
	}
}

// A record held far ahead of its lagging partition's stream (read from a backlog, so
// the wall clock cannot tell a gap from a glitch) when the partition then goes idle
// is judged ahead, not as the end of a gap: taken as a gap, the glitch two hours on
// made every later record of the partition late (690 of them here), an attack among
// them half unseen.
func TestHeldRecordOnIdlePartition(t *testing.T) {
	cfg := only(ForbiddenBurst)
	cfg.IdleTimeout = time.Minute
	wall := t0.Add(3 * time.Hour) // the partitions' shippers are three hours behind
	reg := prometheus.NewPedanticRegistry()
	e, err := NewEngine(cfg, Options{Registerer: reg, Now: func() time.Time { return wall }})
	if err != nil {
		t.Fatal(err)
	}
	var alerts []Alert
	observe := func(parts ...partRun) {
		for _, b := range interleave(20, parts...) {
			b.Opened = nil
			if len(e.wms.parts) == 0 {
				b.Opened = []ingest.Partition{partA, partB}
			}
			alerts = append(alerts, e.ObserveBatch(b)...)
		}
	}
	glitch := req(t0.Add(2*time.Hour), client("healthy"), status(200))
	observe(partRun{partA, append(steady(t0, 2*time.Minute, "healthy"), glitch)}, partRun{partB, steady(t0, 2*time.Minute, "other")})
	wall = wall.Add(2 * time.Minute) // A says nothing for longer than idle_timeout
	observe(partRun{partB, steady(t0.Add(2*time.Minute), time.Minute, "other")})
	if !e.wms.parts[partA].idle {
		t.Fatal("A is not idle after idle_timeout of silence")
	}
	wall = wall.Add(time.Second)
	observe(partRun{partA, concat(burst403(30, t0.Add(3*time.Minute), "attacker"), steady(t0.Add(3*time.Minute+3*time.Second), 5*time.Minute, "healthy"))},
		partRun{partB, steady(t0.Add(3*time.Minute), 5*time.Minute, "other")})
	alerts = append(alerts, e.Flush()...)
	if keys := keysOf(alerts); !slices.Equal(keys, []string{"attacker"}) {
		t.Errorf("alerts %v, want attacker", keys)
	}
	if n := counterValue(t, reg, "gatewatch_detectors_late_events_total"); n != 0 {
		t.Errorf("%v events late, want none", n)
	}
	if n := counterValue(t, reg, "gatewatch_detectors_ahead_events_total"); n != 1 {
		t.Errorf("%v events ahead, want the glitch", n)
	}
}

// A partition more than max_skew behind the leading one no longer holds the watermark
// back: the windows of the others close, and its records are late until it catches up.
func TestPartitionTooFarBehind(t *testing.T) {
	cfg := only(ForbiddenBurst)
	a := concat(burst403(30, t0, "attacker"), steady(t0.Add(3*time.Second), 10*time.Minute, "healthy"))
	b := steady(t0.Add(-20*time.Minute), 10*time.Minute, "other") // twenty minutes behind
	alerts, e, reg := runBatches(t, cfg, nil, interleave(20, partRun{partA, a}, partRun{partB, b}))
	if keys := keysOf(alerts); !slices.Equal(keys, []string{"attacker"}) {
		t.Errorf("alerts %v, want attacker", keys)
	}
	if late := counterValue(t, reg, "gatewatch_detectors_late_events_total"); late == 0 {
		t.Error("no record of the partition far behind was late")
	}
	if n := counterValue(t, reg, "gatewatch_detectors_partitions_behind"); n != 1 && !e.wms.parts[partB].idle {
		t.Errorf("%v partitions behind, want B", n)
	}
}

// Live, a gateway whose clock runs five minutes ahead (less than max_ahead, so its
// records are taken on time) does not lead the others by more than max_skew: the
// watermark follows the wall clock, not its stamps, and the burst in the partition
// whose clock is right is caught, nothing late. Without a clock (replay), five minutes
// ahead is a partition leading by more than max_skew, and the others are late.
func TestGatewayClockAhead(t *testing.T) {
	cfg := only(ForbiddenBurst)
	a := concat(steady(t0, 6*time.Minute, "healthy"), burst403(30, t0.Add(6*time.Minute), "attacker"),
		steady(t0.Add(6*time.Minute+3*time.Second), 4*time.Minute, "healthy"))
	b := steady(t0.Add(5*time.Minute), 10*time.Minute, "other") // logged at t0 on, stamped five minutes ahead
	for _, c := range []struct {
		name     string
		live     bool
		wantLate bool
	}{
		{"live", true, false},
		{"replay", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			var wall time.Time
			o := Options{Registerer: reg}
			if c.live {
				o.Now = func() time.Time { return wall }
			}
			e, err := NewEngine(cfg, o)
			if err != nil {
				t.Fatal(err)
			}
			var alerts []Alert
			for _, bt := range interleave(20, partRun{partA, a}, partRun{partB, b}) {
				wall = bt.Events[bt.Runs[0].N-1].Time // A's clock is right: read as A's records are logged
				alerts = append(alerts, e.ObserveBatch(bt)...)
			}
			alerts = append(alerts, e.Flush()...)
			late := counterValue(t, reg, "gatewatch_detectors_late_events_total")
			if c.wantLate {
				if late == 0 {
					t.Error("no record late: the negative control does not lead by more than max_skew")
				}
				return
			}
			if keys := keysOf(alerts); !slices.Equal(keys, []string{"attacker"}) {
				t.Errorf("alerts %v, want attacker", keys)
			}
			if late != 0 {
				t.Errorf("%v records late, want none", late)
			}
		})
	}
}

// A partition that ended (a file read to its end, a partition revoked) stops holding
// the watermark back.
func TestEndedPartition(t *testing.T) {
	cfg := only(ForbiddenBurst)
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	a, bb := burst403(30, t0, "attacker"), steady(t0.Add(-2*time.Minute), time.Second, "old")
	b := &ingest.Batch{Events: concat(a, bb), Runs: []ingest.Run{{Partition: partA, N: len(a)}, {Partition: partB, N: len(bb)}},
		Opened: []ingest.Partition{partA, partB}}
	e.ObserveBatch(b)
	if wm := e.Watermark(); !wm.Equal(t0.Add(-2*time.Minute - cfg.AllowedLateness)) {
		t.Fatalf("watermark %s, want B's", wm)
	}
	got := e.ObserveBatch(&ingest.Batch{Ended: []ingest.Partition{partB}})
	if wm := e.Watermark(); !wm.Equal(t0.Add(2900*time.Millisecond - cfg.AllowedLateness)) {
		t.Errorf("after B ended: watermark %s, want A's", wm)
	}
	got = append(got, e.ObserveBatch(&ingest.Batch{Events: steady(t0.Add(2*time.Minute), time.Second, "x"), Runs: []ingest.Run{{Partition: partA, N: 1}}})...)
	if keys := keysOf(got); !slices.Equal(keys, []string{"attacker"}) {
		t.Errorf("alerts %v, want attacker", keys)
	}
}

// The alerts depend on each partition's records and their order, not on how the
// partitions' records interleave within the allowed lateness, nor on batch sizes.
func TestPartitionInterleavingDeterminism(t *testing.T) {
	cfg := DefaultConfig()
	cfg.QuietEndpointSpike.Enabled = false // learns for 24h
	cfg.NewCountry.Enabled = false
	a := concat(steady(t0, 4*time.Minute, "healthy"), burst403(30, t0.Add(4*time.Minute), "attacker-a"),
		steady(t0.Add(4*time.Minute+3*time.Second), 6*time.Minute, "healthy"))
	b := concat(steady(t0, 6*time.Minute, "other"), burst403(40, t0.Add(6*time.Minute), "attacker-b"),
		steady(t0.Add(6*time.Minute+4*time.Second), 4*time.Minute, "other"))
	want, _, _ := runBatches(t, cfg, nil, interleave(10, partRun{partA, a}, partRun{partB, b}))
	if got := keysOf(want); !slices.Equal(got, []string{"attacker-a", "attacker-b"}) {
		t.Fatalf("alerts for %v, want both attackers", got)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		// Random runs of each partition, in a random order, never more than 20s of
		// event time apart (allowed_lateness is 30s).
		var batches []*ingest.Batch
		ia, ib := 0, 0
		for ia < len(a) || ib < len(b) {
			n := 1 + rng.IntN(15)
			pick := partA
			if ia >= len(a) || (ib < len(b) && (rng.IntN(2) == 0 || a[ia].Time.Sub(b[ib].Time) > 10*time.Second)) {
				pick = partB
			}
			if pick == partA && ia < len(a) && ib < len(b) && a[ia].Time.Sub(b[ib].Time) > 10*time.Second {
				pick = partB
			}
			bt := &ingest.Batch{}
			if pick == partA {
				n = min(n, len(a)-ia)
				bt.Events, bt.Runs = a[ia:ia+n], []ingest.Run{{Partition: partA, N: n}}
				ia += n
			} else {
				n = min(n, len(b)-ib)
				bt.Events, bt.Runs = b[ib:ib+n], []ingest.Run{{Partition: partB, N: n}}
				ib += n
			}
			batches = append(batches, bt)
		}
		got, _, _ := runBatches(t, cfg, nil, batches)
		if finalJSON(t, got) != finalJSON(t, want) {
			t.Fatalf("interleaving changed the alerts:\n%s\nwant\n%s", finalJSON(t, got), finalJSON(t, want))
		}
	}
}

// finalJSON is each incident's final alert, sorted by id.
func finalJSON(t testing.TB, alerts []Alert) string {
	var fin []Alert
	for _, g := range incidentsOf(alerts) {
		fin = append(fin, final(g))
	}
	slices.SortFunc(fin, func(x, y Alert) int { return strings.Compare(x.ID, y.ID) })
	return alertsJSON(t, fin)
}

// keysOf returns the keys of the incidents in alerts, sorted.
func keysOf(alerts []Alert) []string {
	var keys []string
	for _, g := range incidentsOf(alerts) {
		keys = append(keys, g[0].Key)
	}
	slices.Sort(keys)
	return keys
}
