package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	kafkago "github.com/segmentio/kafka-go"
)

// A batch travels from the fetching goroutine, which cuts it and records its runs of
// offsets, through the parsing goroutines of its topics, to Next, which assembles it.
type batch struct {
	err error // a fetch error, in place of a batch

	seq   uint64
	recs  []record
	size  int     // bytes of the records' values
	spans []*span // one run per partition, in the order the partitions first appeared

	// Filled by the parsing goroutines, each at the indexes of the records it parsed.
	events  []ingest.Event // events[i] is recs[i]'s event where errs[i] is nil
	errs    []error
	parsing atomic.Int32  // jobs not finished
	parsed  chan struct{} // closed when the last one finished

	// Set by Next.
	assembled bool
	dead      []ingest.DeadLetter
	runs      []ingest.Run
	offsets   []int64 // per event, with Options.Offsets
}

// record is one fetched record of a batch.
type record struct {
	topic  *topic
	p      *partition
	offset int64
	value  []byte
}

// A job is a part of a batch for a parsing goroutine of topic: the records of the topic
// among recs[lo:hi].
type job struct {
	b      *batch
	lo, hi int
}

// minJob is the fewest records of one topic worth a job of their own.
const minJob = 64

// ack is what acknowledging b does: release its runs and commit what that completes.
func (s *Source) ack(b *batch) func(context.Context) error {
	spans := b.spans // the ack keeps the runs, not the events
	return func(ctx context.Context) error { return s.release(ctx, spans) }
}

// fetch is the fetching goroutine: once every topic exists it joins the group, then
// it cuts batches of the records the partition readers fetch, hands each to the parsing
// goroutines of its topics and queues it, in order, for Next. It ends when ctx does,
// and then closes the queues.
func (s *Source) fetch(ctx context.Context) {
	defer s.running.Done()
	defer func() {
		close(s.ready)
		for _, t := range s.order {
			close(t.jobs)
		}
	}()
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

// queue hands b to the parsing goroutines of its topics and then to Next. It reports
// false when ctx ended first. A topic's records are split into up to one job per parsing
// goroutine of the topic.
func (s *Source) queue(ctx context.Context, b *batch) bool {
	if b.err == nil {
		n := len(b.recs)
		jobs := 0
		for _, t := range s.order {
			if t.mark == b.seq {
				jobs += s.jobsFor(t)
			}
		}
		b.events = make([]ingest.Event, n)
		b.errs = make([]error, n)
		b.parsed = make(chan struct{})
		b.parsing.Store(int32(jobs))
		for _, t := range s.order {
			if t.mark != b.seq {
				continue
			}
			k := s.jobsFor(t)
			for i := range k {
				select {
				case t.jobs <- job{b: b, lo: i * n / k, hi: (i + 1) * n / k}:
				case <-ctx.Done():
					return false
				}
			}
		}
	}
	select {
	case s.ready <- b:
		return true
	case <-ctx.Done():
		return false
	}
}

// jobsFor returns into how many jobs the current batch's records of t are split.
func (s *Source) jobsFor(t *topic) int {
	return max(1, min(len(t.parsers), t.count/minJob))
}

// parse is a parsing goroutine of topic t, the only user of parser p. It parses the
// records of t in each job it gets into the batch's events at the records' indexes.
func (s *Source) parse(t *topic, p ingest.Parser) {
	defer s.running.Done()
	for j := range t.jobs {
		b := j.b
		for i := j.lo; i < j.hi; i++ {
			if r := &b.recs[i]; r.topic == t {
				b.errs[i] = p.Parse(&b.events[i], r.value)
			}
		}
		if b.parsing.Add(-1) == 0 {
			close(b.parsed)
		}
	}
}

// fill cuts the next batch: it waits for the first record as long as ctx allows, then
// at most BatchWait for more, up to BatchSize records or ingest.MaxBatchBytes of them. It
// returns nil when ctx ends.
//
// Of the records the partition readers queued it always takes the one with the
// earliest Kafka timestamp among the partitions' next records, as Kafka Streams picks
// records, so that through a backlog every partition advances at the pace of event
// time instead of at the pace of its reader: the engine judges lateness per partition
// and keeps room for only max_skew between them.
func (s *Source) fill(ctx context.Context) *batch {
	s.seq++
	b := &batch{seq: s.seq, recs: make([]record, 0, s.hint)}
	var timer *time.Timer
	var wait <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	s.refill(true)
	now := time.Now()
	for len(b.recs) < s.cfg.BatchSize && b.size < ingest.MaxBatchBytes {
		p, hold := s.earliest(now)
		if p != nil {
			f := p.ahead.pop()
			s.add(b, &f)
			s.picks++
			p.lastPick = s.picks
			s.refillOne(p)
			if s.picks%64 == 0 {
				s.refill(false) // partitions that were empty may have records by now
				now = time.Now()
			}
			continue
		}
		if len(b.recs) > 0 && timer == nil {
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
	s.hint = min(max(len(b.recs), 16), s.cfg.BatchSize)
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
// record would carry them more than alignSkew (by Kafka timestamp) past its last one,
// for at most alignWait: its reader is between fetches, or its shipper between
// batches. Through a backlog the others' readers would otherwise carry their event time
// minutes past its own in a second, and its records would be late. A partition that
// stays empty longer (its traffic stopped) is no longer waited for; the engine's idle
// rule takes over.
const (
	alignSkew = 10 * time.Second
	alignWait = 10 * time.Second
)

// earliest returns the partition whose next record comes first, nil when none has
// one, or when one that must be waited for has none in hand yet: then hold says for
// how much longer to wait for it. now is the wall clock.
//
// A partition's next record is ordered at the earliest timestamp among the records it
// has in hand, not its own, as the batch merge orders events (ingest.MergeOrder):
// records stamped ahead of their partition's later ones (a clock glitch) are taken in
// their place, and do not hold the partition's later records back behind everyone
// else's until the others reach their stamp.
func (s *Source) earliest(now time.Time) (best *partition, hold time.Duration) {
	var bestAt time.Time
	for _, p := range s.reading {
		if p.ahead.len() == 0 {
			continue
		}
		at := p.ahead.earliest()
		if !p.lastTime.IsZero() && at.After(p.lastTime.Add(alignSkew)) {
			// A record stamped far past its partition's last one (a clock glitch with
			// none of the partition's later records in hand yet, or the end of a quiet
			// spell) is ordered as if it came right after it.
			at = p.lastTime.Add(alignSkew)
		}
		if at.After(now) {
			// Stamped after the wall clock: its producer's clock runs ahead. Ordered
			// at its stamp, each of the partition's records would wait behind the
			// others' for as long as that clock is ahead, and reach the engine that
			// far behind them in event time, late once it is more than max_skew.
			at = now
		}
		// Equal stamps (a producer that stamps a whole batch at once) go round robin,
		// the partition taken longest ago first, so that no partition is drained
		// before the others start.
		if best == nil || at.Before(bestAt) || (at.Equal(bestAt) && p.lastPick < best.lastPick) {
			best, bestAt = p, at
		}
	}
	for _, p := range s.reading {
		switch {
		case p.ahead.len() > 0:
			p.emptySince = time.Time{}
			continue
		case best != nil && !p.lastTime.IsZero() && !bestAt.After(p.lastTime.Add(alignSkew)):
			continue // taking best leaves p no further behind than alignSkew
		}
		if p.emptySince.IsZero() {
			p.emptySince = now
		}
		if h := alignWait - now.Sub(p.emptySince); h > 0 {
			hold = max(hold, h)
		}
	}
	if hold > 0 {
		return nil, hold
	}
	return best, 0
}

// add puts one fetched record into b, extending the batch's run of its partition. A
// record of a partition this member no longer owns, or of a generation that ended, is
// dropped, and so is one fetched again below what this source already took into a
// batch (a partition kept across a rebalance: its reader starts where the last one
// stopped, and the records still queued from the last one are the same records).
func (s *Source) add(b *batch, f *fetched) {
	p := f.p
	if p.owner.Load() != f.gen {
		return
	}
	off := f.msg.Offset
	next := p.next.Load()
	if off < next {
		s.redelivered.Add(1)
		return
	}
	p.next.Store(off + 1)
	if f.msg.HighWaterMark > 0 {
		p.lag = max(f.msg.HighWaterMark-off-1, 0)
	}
	p.lastTime = f.msg.Time
	if p.span == nil || p.mark != b.seq {
		p.mark = b.seq
		p.span = &span{part: p, resets: p.resets.Load(), first: off}
		b.spans = append(b.spans, p.span)
	}
	p.span.last = off
	if t := p.topic; t.mark != b.seq {
		t.mark, t.count = b.seq, 1
	} else {
		t.count++
	}
	b.recs = append(b.recs, record{topic: p.topic, p: p, offset: off, value: f.msg.Value})
	b.size += len(f.msg.Value)
}

// seal ends b: it orders its records by partition (each partition's in fetch order),
// so the engine gets long runs of one partition, queues its runs of offsets on their
// partitions in delivery order, and reports each partition's lag.
func (s *Source) seal(b *batch) {
	if len(b.spans) > 1 {
		order := make(map[*partition]int, len(b.spans))
		for i, sp := range b.spans {
			order[sp.part] = i
		}
		slices.SortStableFunc(b.recs, func(x, y record) int { return order[x.p] - order[y.p] })
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
