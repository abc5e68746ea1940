package detectors

import (
	"cmp"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
)

// watermarks keeps event time per partition. A record is late when it is before its
// own partition's largest event time minus allowed_lateness, or before the engine's
// watermark (windows up to it are closed). The engine's watermark is the smallest of the
// partitions' watermarks, never moving back; a partition that delivered nothing for
// idle_timeout (wall clock) does not hold it back, nor does one more than max_skew
// behind the leading partition, nor a record more than max_ahead ahead of its
// partition's stream, which is judged on its own. So the watermark never trails the
// newest record on time by more than allowed_lateness plus max_skew: the span each
// key's windows keep room for.
//
// One partition, the zero ingest.Partition, serves callers that give no partitions
// (Engine.Observe): the watermark is then the largest event time minus the lateness,
// as it always was.
type watermarks struct {
	lateness, maxAhead, maxSkew int64 // ms
	idle                        time.Duration
	log                         *slog.Logger

	parts map[ingest.Partition]*partWM
	// list holds the open partitions too, in no order: recompute runs whenever the
	// lowest partition's stream moves, that is for most records, and ranging over a
	// map starts at a random place each time, which cost as much as the loop.
	list []*partWM
	// wm is the engine's watermark, valid once started; low the smallest watermark of
	// the partitions that hold it back (math.MinInt64 while one has not delivered yet);
	// top the largest event time taken on time, valid once hasTop.
	started bool
	wm      int64
	low     int64
	top     int64
	hasTop  bool
	last    *partWM             // the partition of the previous run: runs of one partition follow each other
	ended   []ingest.Partition  // ended since the engine last reported the partitions
	holding int                 // partitions holding records
	lateLag prometheus.Observer // how far behind late records came, seconds
}

// partWM is one partition's event time.
type partWM struct {
	p     ingest.Partition
	seen  bool      // delivered an event that moved its stream
	maxT  int64     // largest event time of its stream, ms
	maxAt time.Time // wall clock when maxT was set
	// held are records far ahead of the stream, near one another, in the partition's
	// order, until a later record decides what they were (see judge); from the first's
	// time, holdFrom, up to the largest, holdTop.
	held              []ingest.Event
	holdFrom, holdTop int64
	arrived           time.Time // wall clock of its last record, or of its opening
	idle              bool
	ahead             uint64 // records judged ahead of its stream
	late              uint64 // records judged late

	timeGauge prometheus.Gauge // its event-time metric, once it has one
}

func newWatermarks(lateness, maxAhead, maxSkew, idle time.Duration, lateLag prometheus.Observer, log *slog.Logger) *watermarks {
	return &watermarks{
		lateLag:  lateLag,
		lateness: lateness.Milliseconds(),
		maxAhead: maxAhead.Milliseconds(),
		maxSkew:  maxSkew.Milliseconds(),
		idle:     idle,
		log:      log,
		parts:    map[ingest.Partition]*partWM{},
		low:      math.MinInt64,
	}
}

// open starts waiting for partition p, opened at wall clock now: until it delivers or
// goes idle it holds the watermark where it is.
func (w *watermarks) open(p ingest.Partition, now time.Time) *partWM {
	if pw, ok := w.parts[p]; ok {
		return pw
	}
	pw := &partWM{p: p, arrived: now}
	w.parts[p] = pw
	w.list = append(w.list, pw)
	w.recompute()
	return pw
}

// end stops waiting for partition p.
func (w *watermarks) end(p ingest.Partition) {
	pw, ok := w.parts[p]
	if !ok {
		return
	}
	if w.last == pw {
		w.last = nil
	}
	delete(w.parts, p)
	i := slices.Index(w.list, pw)
	w.list = slices.Delete(w.list, i, i+1) // zeroes the freed end
	w.ended = append(w.ended, p)
	w.recompute()
}

// part returns the state of p, opening it on its first event.
func (w *watermarks) part(p ingest.Partition) *partWM {
	if pw := w.last; pw != nil && pw.p == p {
		return pw
	}
	pw, ok := w.parts[p]
	if !ok {
		pw = w.open(p, time.Time{})
	}
	w.last = pw
	return pw
}

// arrived notes that pw delivered records at wall clock now; it wakes pw if it was
// idle.
func (w *watermarks) arrived(pw *partWM, now time.Time) {
	if now.IsZero() {
		return
	}
	pw.arrived = now
	if pw.idle {
		pw.idle = false
		w.log.Info("partition delivers again; it holds back the watermark", "partition", pw.p.String())
		w.recompute()
	}
}

// checkIdle marks the partitions that delivered nothing for idle_timeout as idle, so
// they stop holding back the watermark. It reports whether any changed.
func (w *watermarks) checkIdle(now time.Time) bool {
	changed := false
	for _, pw := range w.list {
		if !pw.idle && !pw.arrived.IsZero() && now.Sub(pw.arrived) >= w.idle {
			pw.idle, changed = true, true
			w.log.Info("partition idle; the watermark no longer waits for it", "partition", pw.p.String(), "idle_for", now.Sub(pw.arrived).Round(time.Second))
		}
	}
	if changed {
		w.recompute()
	}
	return changed
}

// A verdict is how a record stands to its partition's stream.
type verdict uint8

const (
	onTime verdict = iota // it enters windows
	late                  // behind its partition's watermark or the engine's: it enters no window
	ahead                 // far ahead of its stream: judged at the stream's time, it does not move the watermark
	held                  // far ahead of its stream: a later record of the partition decides (decide)
)

// judge takes one record of pw with event time t (ms), arriving at wall clock now
// (zero when the engine has no clock), and returns the time it is judged at and its
// verdict.
//
// A record more than max_ahead ahead of its partition's stream is either a clock
// glitch (a gateway stamping records an hour ahead until its clock is stepped back) or
// the first record after a quiet gap. Live, the wall clock tells them apart: a record
// more than max_ahead ahead of the wall clock is ahead, and a jump no larger than the
// wall time since the stream's last step (plus max_ahead) is a gap. So do the other
// partitions: a record at most max_ahead ahead of the newest record on time of any
// partition ends a gap its partition had while the others went on (a backlog a sticky
// partitioner sent block by block, read merged by event time). Otherwise the record is
// held, with the records of the partition that follow near it, and a later record
// decides (decide): back near the old stream, they were a glitch; far ahead of them, or
// once they are many or span a while, the stream jumped. The decision depends only on
// the order of the records, so a replay of them, merged alike, decides alike.
func (w *watermarks) judge(pw *partWM, t int64, now time.Time) (int64, verdict) {
	live := !now.IsZero()
	if w.pastClock(t, now) {
		return w.aheadOf(pw, t)
	}
	if len(pw.held) > 0 { // decide left them undecided: t is near them
		pw.holdTop = max(pw.holdTop, t)
		return t, held
	}
	if pw.seen && t > pw.maxT+w.maxAhead && !(w.hasTop && t <= w.top+w.maxAhead) &&
		!(live && t-pw.maxT <= now.Sub(pw.maxAt).Milliseconds()+w.maxAhead) {
		w.holding++
		pw.holdFrom, pw.holdTop = t, t
		return t, held
	}
	return w.take(pw, t, now)
}

// pastClock reports whether a record at t is more than max_ahead ahead of the wall
// clock now (zero: none): it is judged ahead on its own, and says nothing of its
// partition's stream, nor of the records it holds.
func (w *watermarks) pastClock(t int64, now time.Time) bool {
	return !now.IsZero() && t > now.UnixMilli()+w.maxAhead
}

// A clock glitch is told from a jump of the stream only while its records are held:
// at most maxHeld of them, spanning less than holdSpan of their own time. That covers a
// host whose clock is stepped back soon after it starts (chrony and ntpd step a clock
// off by more than a threshold within their first updates), at a few tens of requests
// a second. A glitch lasting longer is taken for a jump, as it cannot be told from
// one: the stream after a gap spans more than holdSpan soon.
const (
	maxHeld  = 4096
	holdSpan = 2 * time.Minute
)

// decide decides pw's held records given the time of the partition's next record
// (hasNext false: there is none, the input ended, and a gap is assumed): whether the
// stream jumped to them, or they were a glitch. With wait, a next record near them
// that leaves it open (they are few and close together) joins them instead, and decide
// reports undecided.
func (w *watermarks) decide(pw *partWM, next int64, hasNext, wait bool) (jump, decided bool) {
	switch {
	case !hasNext:
		jump = true
	case next <= pw.maxT+w.maxAhead, next < pw.holdFrom-w.maxAhead:
		// Back near the stream, or between it and them: they were a glitch.
	case next > pw.holdTop+w.maxAhead, !wait, len(pw.held) >= maxHeld,
		max(pw.holdTop, next)-pw.holdFrom >= holdSpan.Milliseconds():
		jump = true
	default:
		return false, false
	}
	w.holding--
	return jump, true
}

// holds returns the records the partitions hold, each partition's in its order; nil
// when none does.
func (w *watermarks) holds() [][]ingest.Event {
	if w.holding == 0 {
		return nil
	}
	var h [][]ingest.Event
	for _, pw := range w.list {
		if len(pw.held) > 0 {
			h = append(h, pw.held)
		}
	}
	return h
}

// take moves pw's stream up to t and says whether t is late.
func (w *watermarks) take(pw *partWM, t int64, now time.Time) (int64, verdict) {
	switch {
	case !pw.seen:
		pw.seen, pw.maxT, pw.maxAt = true, t, now
		w.raiseTop(t, now)
		w.recompute()
	case t > pw.maxT:
		low := pw.maxT-w.lateness == w.low
		pw.maxT, pw.maxAt = t, now
		w.raiseTop(t, now)
		if low {
			w.recompute()
		} else {
			w.advance()
		}
	}
	if t < pw.maxT-w.lateness || (w.started && t < w.wm) {
		newest := pw.maxT
		if w.started {
			newest = max(newest, w.wm+w.lateness)
		}
		w.lateLag.Observe(float64(newest-t) / 1e3)
		pw.late++
		if pw.late&(pw.late-1) == 0 { // the first, and then each time the count doubles
			w.log.Warn("record late: behind its partition's event time by more than allowed_lateness, or behind the watermark; it enters no window",
				"partition", pw.p.String(), "record_time", msTime(t), "stream_time", msTime(pw.maxT), "watermark", msTime(w.wm), "late_records", pw.late)
		}
		return t, late
	}
	return t, onTime
}

// aheadOf counts a record at t judged ahead of pw's stream and returns the time it is
// judged at: the stream's current time, or the engine's watermark before pw delivered.
func (w *watermarks) aheadOf(pw *partWM, t int64) (int64, verdict) {
	pw.ahead++
	if pw.ahead&(pw.ahead-1) == 0 { // the first, and then each time the count doubles
		w.log.Warn("record far ahead of its partition's event time; judged at the stream's time, the watermark keeps its place",
			"partition", pw.p.String(), "record_time", msTime(t), "stream_time", msTime(pw.maxT), "ahead_records", pw.ahead)
	}
	switch {
	case pw.seen:
		if pw.maxT < w.wm {
			return pw.maxT, late
		}
		return pw.maxT, ahead
	case w.started:
		return w.wm, ahead
	}
	return t, late // nothing to judge it against: it enters no window
}

// raiseTop notes t, taken on time at wall clock now (zero without a clock), as the
// newest record's time.
func (w *watermarks) raiseTop(t int64, now time.Time) {
	if !now.IsZero() {
		// Live, a record stamped after the wall clock counts as stamped now: its
		// gateway's clock runs ahead (by less than max_ahead, or it would not be taken
		// on time), and its partition, leading by that much, must not make every
		// other partition's records late by being more than max_skew ahead of them.
		t = min(t, now.UnixMilli())
	}
	if !w.hasTop || t > w.top {
		w.top, w.hasTop = t, true
	}
}

// recompute sets low to the smallest watermark of the partitions that hold the
// watermark back, and advances the watermark.
func (w *watermarks) recompute() {
	low, any := int64(math.MaxInt64), false
	for _, pw := range w.list {
		switch {
		case pw.idle:
		case !pw.seen:
			low, any = math.MinInt64, true
		default:
			low, any = min(low, pw.maxT-w.lateness), true
		}
	}
	if !any {
		// Every partition is idle (or none is open): the watermark follows the
		// partitions that delivered, so the windows they fed can close.
		low = math.MinInt64
		for _, pw := range w.list {
			if pw.seen {
				low = max(low, pw.maxT-w.lateness)
			}
		}
	}
	w.low = low
	w.advance()
}

// advance moves the watermark up to low, or to allowed_lateness plus max_skew behind
// the newest record on time when low trails further: a partition that far behind, or
// one that has not delivered yet, no longer holds it back.
func (w *watermarks) advance() {
	cand := w.low
	if w.hasTop {
		cand = max(cand, w.top-w.lateness-w.maxSkew)
	}
	if cand == math.MinInt64 {
		return
	}
	if !w.started {
		w.started, w.wm = true, cand
		return
	}
	if cand > w.wm {
		w.wm = cand
	}
}

// sortedParts returns the open partitions in order, for decisions that must not depend
// on the order they opened and ended in.
func (w *watermarks) sortedParts() []*partWM {
	ps := slices.Clone(w.list)
	slices.SortFunc(ps, func(a, b *partWM) int {
		return cmp.Or(strings.Compare(a.p.Source, b.p.Source), cmp.Compare(a.p.ID, b.p.ID))
	})
	return ps
}

// idleCount returns how many open partitions are idle.
func (w *watermarks) idleCount() int {
	n := 0
	for _, pw := range w.list {
		if pw.idle {
			n++
		}
	}
	return n
}
