package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	kafkago "github.com/segmentio/kafka-go"
)

// A batch is cut by the fetching goroutine from records its partition readers parsed,
// and handed out by Next.
type batch struct {
	err error // a fetch error, in place of a batch

	seq     uint64
	events  []ingest.Event // in the order taken, which is event time across partitions
	runs    []ingest.Run
	offsets []int64 // per event, with Options.Offsets
	dead    []ingest.DeadLetter
	n       int     // records taken, rejected ones included
	size    int     // bytes of the records' values
	spans   []*span // one run of offsets per partition, in the order the partitions first appeared
}

// ack is what acknowledging b does: release its runs and commit what that completes.
func (s *Source) ack(b *batch) func(context.Context) error {
	spans := b.spans // the ack keeps the runs, not the events
	return func(ctx context.Context) error { return s.release(ctx, spans) }
}

// fetch is the fetching goroutine: once every topic exists it joins the group, then
// it cuts batches of the records the partition readers fetched and parsed, and queues
// them, in order, for Next. It ends when ctx does, and then closes the queue.
func (s *Source) fetch(ctx context.Context) {
	defer s.running.Done()
	defer close(s.ready)
	// kafka-go cannot join the group while a topic is missing, and only logs why: check
	// first, so that Next can say what is wrong.
	for {
		err := s.checkTopics(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil || !s.queue(ctx, &batch{err: err}) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(topicRecheck):
		}
	}
	if err := s.join(ctx); err != nil {
		if !errors.Is(err, ErrClosed) {
			s.queue(ctx, &batch{err: err})
		}
		return
	}
	for {
		b := s.fill(ctx)
		if b == nil || !s.queue(ctx, b) {
			return
		}
	}
}

// topicRecheck is how long the fetching goroutine waits before it checks again for
// topics that did not exist.
const topicRecheck = 5 * time.Second

// checkTopics reports an error unless every configured topic exists.
func (s *Source) checkTopics(ctx context.Context) error {
	names := make([]string, len(s.order))
	for i, t := range s.order {
		names[i] = t.name
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	md, err := s.admin.Metadata(ctx, &kafkago.MetadataRequest{Topics: names})
	if err != nil {
		return fmt.Errorf("kafka: read metadata of the topics: %w", err)
	}
	var missing []string
	for _, name := range names {
		i := slices.IndexFunc(md.Topics, func(t kafkago.Topic) bool { return t.Name == name })
		switch {
		case i < 0 || errors.Is(md.Topics[i].Error, kafkago.UnknownTopicOrPartition):
			missing = append(missing, name)
		case md.Topics[i].Error != nil:
			return fmt.Errorf("kafka: topic %s: %w", name, md.Topics[i].Error)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kafka: topic %s does not exist: the group cannot be joined until it does", strings.Join(missing, ", "))
	}
	return nil
}

// queue hands b to Next. It reports false when ctx ended first.
func (s *Source) queue(ctx context.Context, b *batch) bool {
	select {
	case s.ready <- b:
		return true
	case <-ctx.Done():
		return false
	}
}

// fill cuts the next batch: it waits for the first record as long as ctx allows, then
// at most BatchWait for more, up to BatchSize records or ingest.MaxBatchBytes of them. It
// returns nil when ctx ends.
//
// Of the records the partition readers parsed it always takes the one with the
// earliest event time among the partitions' next records (see earliest), so that
// through a backlog every partition advances at the pace of event time instead of at
// the pace of its reader: the engine judges lateness per partition and keeps room for
// only max_skew between them. Kafka timestamps cannot serve: a backlog shipped at once
// is stamped when it was sent, all its records alike.
func (s *Source) fill(ctx context.Context) *batch {
	s.seq++
	b := &batch{seq: s.seq, events: make([]ingest.Event, 0, s.hint)}
	var timer *time.Timer
	var wait <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	s.refill(true)
	now := time.Now()
	for b.n < s.cfg.BatchSize && b.size < ingest.MaxBatchBytes {
		p, at, hold := s.earliest(now)
		if p != nil {
			if s.add(b, p.ahead.front()) {
				p.lastAt = at
			}
			p.ahead.drop()
			s.picks++
			p.lastPick = s.picks
			s.refillOne(p)
			if s.picks%64 == 0 {
				s.refill(false) // partitions that were empty may have records by now
				now = time.Now()
			}
			continue
		}
		if b.n > 0 && timer == nil {
			timer = time.NewTimer(s.cfg.BatchWait)
			wait = timer.C
		}
		var retry <-chan time.Time
		if hold > 0 {
			retry = time.After(min(hold, 10*time.Millisecond))
		}
		select {
		case <-s.wake:
			s.refill(true)
			now = time.Now()
			continue
		case <-retry:
			s.refill(true)
			now = time.Now()
			continue
		case <-wait:
		case <-ctx.Done():
			return nil
		}
		break
	}
	s.seal(b)
	s.hint = min(max(len(b.events), 16), s.cfg.BatchSize)
	return b
}

// refill tops up the records in hand of every partition; reload also picks up a
// change of the partitions assigned.
func (s *Source) refill(reload bool) {
	if reload {
		if v := s.activeV.Load(); v != s.seenV {
			s.mu.Lock()
			s.reading = append(s.reading[:0], s.active...)
			s.seenV = s.activeV.Load()
			s.mu.Unlock()
		}
	}
	for _, p := range s.reading {
		s.refillOne(p)
	}
}

// refillOne takes what p's reader queued into p's records in hand, up to aheadRecords.
func (s *Source) refillOne(p *partition) {
	for !p.ahead.full() {
		select {
		case f := <-p.fetched:
			p.ahead.push(f)
		default:
			return
		}
	}
}

// A partition with no record in hand holds the others back while taking their next
// record would carry them more than alignSkew (in event time) past its last one, for
// at most alignWait, when it is behind in a backlog: its broker holds more of its
// records (its reader is between fetches), it has delivered nothing yet, or the
// others' records are older than backlogAge (history, read faster than it happened,
// perhaps shipped partition after partition). Through a backlog the others' readers
// would otherwise carry their event time minutes past its own in a second, and its
// records would be late. The wait counts from when there were records to hold back,
// not from when the partition was assigned: history shipped into an idle topic gets
// its whole alignWait. A partition that read all its broker has is not waited for
// while the others' records are recent: then it is its shipper that lags, or its
// gateway's clock, and waiting would hold every other partition that far behind the
// present. A longer wait would cost more than it saves: history whose partitions end
// at different times, or a rebalance that assigns partitions already read to their
// end, would stall that long for each.
const (
	alignSkew  = 10 * time.Second
	alignWait  = 10 * time.Second
	backlogAge = time.Minute
	passOver   = 1 << 20 // records, see earliest
)

// earliest returns the partition whose next record comes first and the time it is
// ordered at; nil when none has one, or when one that must be waited for has none in
// hand yet: then hold says for how much longer to wait for it. now is the wall clock.
// The time a record is ordered at becomes its partition's lastAt.
//
// A partition's next record is ordered at the earliest event time among the records it
// has in hand, not its own, as ingest.AppendEarliestAhead orders a partition: records
// stamped ahead of their partition's later ones (a clock glitch) are taken in their
// place, and do not hold the partition's later records back behind everyone else's
// until the others reach their stamp.
//
// Records in hand all more than alignSkew past the partition's last one are a gap in
// its stream or a glitch longer than the lookahead. A gap is the common case: a
// sticky partitioner (librdkafka's, so kcat's and most shippers') sends a backlog to
// one partition for a while, then to another, and the others hold the records of the
// gap. They are ordered at their time, and the others fill the gap first; ordered
// right after the partition's last record, they went minutes ahead of the others'
// records, which came to the engine more than max_skew behind, late. Records still
// that far past after passOver records of the others are a glitch, and are ordered
// alignSkew after the partition's last one, so that the partition does not wait for
// the others to reach their stamp. Counted in records, not wall clock: a sticky
// partitioner's blocks are a count of records (what it sends in its linger time), and
// neither a hold nor a slow engine downstream passes the partition over.
func (s *Source) earliest(now time.Time) (best *partition, bestAt time.Time, hold time.Duration) {
	for _, p := range s.reading {
		if p.ahead.len() == 0 {
			continue
		}
		at := p.ahead.earliest()
		switch {
		case p.lastAt.IsZero() || !at.After(p.lastAt.Add(alignSkew)):
			p.pastFrom = 0
		case p.pastFrom == 0:
			p.pastFrom = s.picks + 1
		case s.picks+1-p.pastFrom >= passOver:
			at = p.lastAt.Add(alignSkew)
		}
		if at.After(now) {
			// Stamped after the wall clock: its gateway's clock runs ahead. Ordered at
			// its stamp, each of the partition's records would wait behind the others'
			// for as long as that clock is ahead, and reach the engine that far behind
			// them in event time, late once it is more than max_skew.
			at = now
		}
		// Equal times go round robin, the partition taken longest ago first, so that
		// no partition is drained before the others start.
		if best == nil || at.Before(bestAt) || (at.Equal(bestAt) && p.lastPick < best.lastPick) {
			best, bestAt = p, at
		}
	}
	if best == nil {
		return nil, time.Time{}, 0 // nothing to take, nothing to hold back
	}
	history := bestAt.Before(now.Add(-backlogAge))
	for _, p := range s.reading {
		switch {
		case p.ahead.len() > 0:
			p.emptySince = time.Time{}
			continue
		case p.lag < 0: // not delivered yet: waited for
		case !bestAt.After(p.lastAt.Add(alignSkew)):
			continue // taking best leaves p no further behind than alignSkew
		case p.lag == 0 && !history:
			continue // it read all its broker had, and the others' records are recent
		}
		if p.emptySince.IsZero() {
			p.emptySince = now
		}
		if h := alignWait - now.Sub(p.emptySince); h > 0 {
			hold = max(hold, h)
		}
	}
	if hold > 0 {
		return nil, time.Time{}, hold
	}
	return best, bestAt, 0
}

// add puts one fetched record into b: its event, or its dead letter, or both for a
// repaired record, extending the batch's run of its partition, and reports whether it
// took an event. A record of a partition
// this member no longer owns, or of a generation that ended, is dropped, and so is one
// fetched again below what this source already took into a batch (a partition kept
// across a rebalance: its reader starts where the last one stopped, and the records
// still queued from the last one are the same records).
func (s *Source) add(b *batch, f *fetched) bool {
	p := f.p
	if p.owner.Load() != f.gen {
		return false
	}
	off := f.msg.Offset
	next := p.next.Load()
	if off < next {
		s.redelivered.Add(1)
		return false
	}
	p.next.Store(off + 1)
	if f.msg.HighWaterMark > 0 {
		p.lag = max(f.msg.HighWaterMark-off-1, 0)
	}
	if p.span == nil || p.mark != b.seq {
		p.mark = b.seq
		p.span = &span{part: p, resets: p.resets.Load(), first: off}
		b.spans = append(b.spans, p.span)
	}
	p.span.last = off
	b.n++
	b.size += len(f.msg.Value)
	t := p.topic
	t.nRecords++
	if f.err != nil {
		b.dead = append(b.dead, ingest.NewDeadLetter(s.now(), t.name, t.format, p.id, off, f.msg.Value, f.err))
		if !ingest.Kept(f.err) { // a repaired record is dead-lettered and its event kept
			return false
		}
	}
	t.nEvents++
	b.events = append(b.events, f.ev)
	if s.offsets {
		b.offsets = append(b.offsets, off)
	}
	if n := len(b.runs); n > 0 && b.runs[n-1].Partition == p.key {
		b.runs[n-1].N++
	} else {
		b.runs = append(b.runs, ingest.Run{Partition: p.key, N: 1})
	}
	return true
}

// seal ends b: it queues its runs of offsets on their partitions in delivery order,
// reports each partition's lag and counts the batch's records in the metrics.
func (s *Source) seal(b *batch) {
	for _, t := range s.order {
		if t.nRecords > 0 {
			t.records.Add(float64(t.nRecords))
			t.events.Add(float64(t.nEvents))
			t.nRecords, t.nEvents = 0, 0
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sp := range b.spans {
		p := sp.part
		p.span = nil
		p.topic.lag.WithLabelValues(p.topic.name, strconv.Itoa(p.id)).Set(float64(p.lag))
		if sp.resets != p.resets.Load() || p.owner.Load() == 0 {
			continue // the partition was revoked or rewound meanwhile: this run commits nothing
		}
		if p.done < 0 {
			// The partition's first run since it was assigned: what lies before it is
			// not this source's to commit.
			p.done, p.committed = sp.first, sp.first
		}
		p.queue = append(p.queue, sp)
	}
}
