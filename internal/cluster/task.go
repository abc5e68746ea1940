package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/ingest"
)

// maxBuffered bounds the items a task holds back while it waits for a slower source
// partition; past it the task lets the earliest go (and counts it), so a stage-one
// member far behind costs order, not memory.
const maxBuffered = 200_000

// messageReader is what a task reads its internal partition with: a kafka-go Reader
// of the partition.
type messageReader interface {
	FetchMessage(ctx context.Context) (kafkago.Message, error)
}

// An item is one source partition's part of an internal record, waiting to be handed
// to the engine.
type item struct {
	off    int64 // the internal record's offset
	what   itemKind
	src    int64 // source offset (events)
	stream int64 // the source partition's stream time, ms; math.MinInt64 before its first event
	late   bool
	ev     ingest.Event
}

type itemKind uint8

const (
	itemEvent  itemKind = iota
	itemStream          // a mark of the partition's stream time
	itemOpened          // a mark that the partition was (re)assigned in stage one
	itemIdle            // a mark that the partition went idle
)

// srcQueue is what a task holds of one source partition.
type srcQueue struct {
	p     ingest.Partition
	items []item
	head  int
	last  int64     // stream of the last item handed out; math.MinInt64 before
	idle  bool      // its last item handed out said idle, or it delivered nothing for idle_timeout: not waited for
	since time.Time // wall clock of its last item taken in, or of the task's start
	high  int64     // highest source offset taken in, for dropping records written twice; -1: none
	tail  int64     // largest stream taken in; math.MinInt64 before
	// tailIdle says the last item taken in is an idle mark.
	tailIdle bool
	// taken are the (internal offset, source offset) of events handed out and not yet
	// covered by a commit.
	taken [][2]int64
}

func (q *srcQueue) empty() bool { return q.head == len(q.items) }

// taskSource is a task's detectors.EventSource. It reads its internal partition and
// hands the items out merged across source partitions by stream time (ties in
// partition order), each as soon as no source partition it waits for can still bring
// an earlier one, as Kafka Streams picks records across a task's inputs. The stage-one
// members write their source partitions at their own pace, so the same records reach
// the partition in any interleaving; merged, the engine sees one order, the same on
// every replica and after every rebuild, and no partition races minutes ahead of
// another.
//
// A batch ends before a mark (stream time, opened) or a late event that would follow
// events, so that each applies where it belongs: a late event comes first in its batch
// after a mark of its partition's stream time, so that the engine judges it late as
// stage one did. An idle mark ends its batch (Batch.Ended).
type taskSource struct {
	s         *stage2
	gen       *kafkago.Generation
	topic     string
	partition int
	r         messageReader

	queues   map[ingest.Partition]*srcQueue
	order    []*srcQueue // sorted by partition
	buffered int
	next     int64            // offset after the last record read; -1 before the first
	pending  *kafkago.Message // fetched, not yet taken in
	rec      record

	committed map[ingest.Partition]int64 // source offsets covered by the last commit snapshot
	stalled   bool                       // the last batch ended because nothing more could be handed out
	forced    bool                       // handing out past a slow partition (maxBuffered)

	position, lag prometheus.Gauge
	end           int64 // the partition's end offset at the last fetch (its high watermark)
	dups, forcedC prometheus.Counter
}

// newTaskSource starts a task's source after commit c, waiting from the start for each
// of sources (the raw topics' partitions), as the engine waits for the partitions a
// consumer opens: a stage-one member slow to start must not find the task past it.
func newTaskSource(s *stage2, gen *kafkago.Generation, topic string, partition int, c commit, sources []ingest.Partition) *taskSource {
	t := &taskSource{s: s, gen: gen, topic: topic, partition: partition,
		queues: map[ingest.Partition]*srcQueue{}, next: c.offset, committed: map[ingest.Partition]int64{},
		position: s.m.position.WithLabelValues(topic, strconv.Itoa(partition)), lag: s.m.lag.WithLabelValues(topic, strconv.Itoa(partition)),
		dups:    s.m.duplicates.WithLabelValues(topic),
		forcedC: s.m.forced.WithLabelValues(topic)}
	for _, p := range sources {
		t.queue(p)
	}
	for p, h := range c.highs {
		t.queue(p).high = h
		t.committed[p] = h
	}
	return t
}

func (t *taskSource) queue(p ingest.Partition) *srcQueue {
	q := t.queues[p]
	if q == nil {
		q = &srcQueue{p: p, last: math.MinInt64, tail: math.MinInt64, high: -1, since: t.s.now()}
		t.queues[p] = q
		i, _ := slices.BinarySearchFunc(t.order, p, func(q *srcQueue, p ingest.Partition) int { return comparePartitions(q.p, p) })
		t.order = slices.Insert(t.order, i, q)
	}
	return q
}

func comparePartitions(a, b ingest.Partition) int {
	return cmp.Or(strings.Compare(a.Source, b.Source), cmp.Compare(a.ID, b.ID))
}

// Next hands out what can be handed out of the records that arrive within a tick.
func (t *taskSource) Next(ctx context.Context) (*ingest.Batch, error) {
	if t.stalled && t.next >= 0 {
		// The engine has seen every item of the records read so far that could be
		// handed out.
		t.position.Set(float64(t.next))
	}
	if t.next >= 0 {
		// Every batch, busy or not: records written to the partition and not yet read.
		t.lag.Set(float64(max(t.end-t.next, 0)))
	}
	var b batchParts
	deadline := time.Now().Add(tick)
	for {
		cut := t.handOut(&b)
		if cut || len(b.events) >= t.s.batch {
			t.stalled = false
			break
		}
		msg, err := t.fetch(ctx, deadline)
		if err != nil {
			return nil, err
		}
		if msg == nil {
			t.stalled = true
			break
		}
		if err := t.takeIn(msg); err != nil {
			return nil, err
		}
		if len(b.events) > 0 && time.Until(deadline) > t.s.wait {
			deadline = time.Now().Add(t.s.wait)
		}
	}
	if len(b.events) == 0 && len(b.marks) == 0 && len(b.opened) == 0 && len(b.ended) == 0 {
		return &ingest.Batch{}, nil
	}
	nb := ingest.NewBatch(b.events, t.ack(t.snapshot()))
	nb.Runs, nb.Marks, nb.Opened, nb.Ended = b.runs, b.marks, b.opened, b.ended
	return nb, nil
}

// fetch returns the next record, nil when none came before deadline.
func (t *taskSource) fetch(ctx context.Context, deadline time.Time) (*kafkago.Message, error) {
	if m := t.pending; m != nil {
		t.pending = nil
		return m, nil
	}
	fctx, cancel := context.WithDeadline(ctx, deadline)
	m, err := t.r.FetchMessage(fctx)
	cancel()
	switch {
	case err == nil:
		t.end = max(t.end, m.HighWaterMark)
		return &m, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded):
		return nil, nil
	}
	return nil, fmt.Errorf("cluster: read %s/%d: %w", t.topic, t.partition, err)
}

// takeIn queues the items of one internal record, dropping events at or below the
// highest source offset already taken in of their partition.
func (t *taskSource) takeIn(msg *kafkago.Message) error {
	if err := decodeRecord(&t.rec, msg.Value); err != nil {
		return fmt.Errorf("cluster: %s/%d offset %d: %w", t.topic, t.partition, msg.Offset, err)
	}
	t.next = msg.Offset + 1
	if t.rec.typ == typeMark {
		// A mark that says nothing new of its partition (written again, or after the
		// partition's own events here) is dropped, so that the marks a task keeps do not
		// depend on which records stage one wrote twice.
		for _, m := range t.rec.marks {
			_, known := t.queues[m.pos.part]
			q := t.queue(m.pos.part)
			if m.flags&flagOpened != 0 && !known {
				t.push(q, item{off: msg.Offset, what: itemOpened, stream: m.stream})
			}
			if m.stream > q.tail {
				t.push(q, item{off: msg.Offset, what: itemStream, stream: m.stream})
			}
			if m.flags&flagIdle != 0 && !q.tailIdle {
				t.push(q, item{off: msg.Offset, what: itemIdle, stream: m.stream})
			}
		}
		return nil
	}
	q := t.queue(t.rec.pos.part)
	if t.rec.pos.offset <= q.high {
		t.dups.Inc()
		return nil
	}
	q.high = t.rec.pos.offset
	t.push(q, item{off: msg.Offset, what: itemEvent, src: t.rec.pos.offset, stream: t.rec.stream, late: t.rec.late, ev: t.rec.ev})
	return nil
}

func (t *taskSource) push(q *srcQueue, it item) {
	if q.head > 0 && q.head == len(q.items) {
		clear(q.items)
		q.items, q.head = q.items[:0], 0
	}
	q.items = append(q.items, it)
	q.tail = max(q.tail, it.stream)
	q.tailIdle = it.what == itemIdle
	t.buffered++
	q.since = t.s.now()
	if it.what != itemIdle {
		q.idle = false // it delivers again: wait for it
	}
}

// pick returns the queue whose head comes next in the merge, nil when that is not
// decided yet: a source partition the task waits for has nothing queued and could
// still bring an earlier item.
func (t *taskSource) pick() *srcQueue {
	var best *srcQueue
	for _, q := range t.order {
		if !q.empty() && (best == nil || q.items[q.head].stream < best.items[best.head].stream) {
			best = q
		}
	}
	if best == nil {
		return nil
	}
	h := best.items[best.head].stream
	var now time.Time
	for _, q := range t.order {
		// A partition's items come in stream order: its next has a stream of at least
		// its last, and at an equal stream it comes first when it sorts first.
		if q.empty() && !q.idle && (q.last < h || q.last == h && comparePartitions(q.p, best.p) < 0) {
			if now.IsZero() {
				now = t.s.now()
			}
			if now.Sub(q.since) >= t.s.idle {
				// Nothing from it for idle_timeout (its stage-one member is down, or it
				// never had a record): wait for it no longer, as the engine would not.
				q.idle = true
				t.s.log.Info("task no longer waits for an idle source partition", "topic", t.topic, "partition", t.partition, "source", q.p.String())
				continue
			}
			if t.buffered < maxBuffered {
				t.forced = false
				return nil
			}
			if !t.forced {
				t.forced = true
				t.s.log.Warn("task holds too much while it waits for a slow source partition; it goes on without it, in arrival order",
					"topic", t.topic, "partition", t.partition, "waiting_for", q.p.String(), "buffered", t.buffered)
			}
			t.forcedC.Inc()
			return best
		}
	}
	return best
}

// handOut moves items into b while the merge decides them, and reports whether b
// must end here (see taskSource).
func (t *taskSource) handOut(b *batchParts) (cut bool) {
	for len(b.events) < t.s.batch {
		q := t.pick()
		if q == nil {
			return false
		}
		it := &q.items[q.head]
		hasEvents := len(b.events) > 0
		if hasEvents && (it.what == itemStream || it.what == itemOpened || it.late) {
			return true
		}
		q.head++
		t.buffered--
		q.last = max(q.last, it.stream)
		switch it.what {
		case itemOpened:
			b.opened = append(b.opened, q.p)
		case itemStream:
			b.marks = append(b.marks, ingest.Mark{Partition: q.p, Time: time.UnixMilli(it.stream).UTC()})
		case itemIdle:
			q.idle = true
			b.ended = append(b.ended, q.p)
			*it = item{}
			return true // Ended applies after the batch's events: nothing may follow it
		case itemEvent:
			if it.late {
				b.marks = append(b.marks, ingest.Mark{Partition: q.p, Time: time.UnixMilli(it.stream).UTC()})
			}
			b.events = append(b.events, it.ev)
			if n := len(b.runs); n > 0 && b.runs[n-1].Partition == q.p {
				b.runs[n-1].N++
			} else {
				b.runs = append(b.runs, ingest.Run{Partition: q.p, N: 1})
			}
			q.taken = append(q.taken, [2]int64{it.off, it.src})
		}
		*it = item{}
	}
	return false
}

// snapshot returns what a commit after the items handed out so far says: the offset
// of the earliest record with an item still queued (or after the last read), and per
// source partition the highest source offset handed out from records before it. A
// task rebuilt from it reads those records again and drops what it already took.
func (t *taskSource) snapshot() (int64, string) {
	next := t.next
	for _, q := range t.order {
		if !q.empty() {
			next = min(next, q.items[q.head].off)
		}
	}
	for _, q := range t.order {
		n := 0
		for n < len(q.taken) && q.taken[n][0] < next {
			t.committed[q.p] = max(t.committed[q.p], q.taken[n][1])
			n++
		}
		q.taken = append(q.taken[:0], q.taken[n:]...)
	}
	return next, encodeHighs(t.committed)
}

// batchParts is a task's batch being assembled.
type batchParts struct {
	events        []ingest.Event
	runs          []ingest.Run
	marks         []ingest.Mark
	opened, ended []ingest.Partition
}
