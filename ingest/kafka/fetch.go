package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
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
	epoch uint64 // the generation count read when its first record arrived
	recs  []record
	spans []*span      // one run per partition, in the order the partitions first appeared
	parts []*partition // partitions a record was fetched from, dropped records included

	// Filled by the parsing goroutines, each at the indexes of the records it parsed.
	events  []ingest.Event // events[i] is recs[i]'s event where errs[i] is nil
	errs    []error
	parsing atomic.Int32  // jobs not finished
	parsed  chan struct{} // closed when the last one finished

	// Set by Next.
	assembled bool
	dead      []ingest.DeadLetter
}

// record is one fetched record of a batch.
type record struct {
	topic     *topic
	partition int
	offset    int64
	value     []byte
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

// fetch is the fetching goroutine: it cuts batches, hands each to the parsing goroutines
// of its topics and queues it, in order, for Next. It ends when ctx does or the reader
// is closed, and then closes the queues.
func (s *Source) fetch(ctx context.Context, r *kafkago.Reader) {
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
	for {
		b, err := s.fill(ctx, r)
		if b != nil && !s.queue(ctx, b) {
			return
		}
		switch {
		case err == nil:
		case errors.Is(err, ErrClosed) || ctx.Err() != nil:
			return
		default:
			if !s.queue(ctx, &batch{err: err}) {
				return
			}
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

// fill cuts the next batch with at least one record to hand out. A batch may come with
// an error met after it was cut; the error is reported after the batch.
func (s *Source) fill(ctx context.Context, r *kafkago.Reader) (*batch, error) {
	for {
		b, flush, err := s.fillOnce(ctx, r)
		if b != nil && len(b.recs) == 0 {
			b = nil
		}
		if b != nil || err != nil {
			return b, err
		}
		// Only records fetched again after a rebalance arrived. They confirmed that this
		// member still owns their partitions, so commit what was held back meanwhile.
		if flush {
			if err := s.release(ctx, nil); err != nil && ctx.Err() == nil {
				s.log.Warn("kafka commit after a rebalance failed", "err", err)
			}
		}
	}
}

// fillOnce fetches records into a new batch: it waits for the first record as long as
// ctx allows, then at most BatchWait for more. flush reports that a partition with
// released but uncommitted runs was confirmed.
func (s *Source) fillOnce(ctx context.Context, r *kafkago.Reader) (b *batch, flush bool, err error) {
	s.seq++
	b = &batch{seq: s.seq, recs: make([]record, 0, s.hint)}
	msg, err := r.FetchMessage(ctx)
	if err != nil {
		return nil, false, fetchError(ctx, err)
	}
	// The first record starts the batch. The generation count is read after it arrived:
	// the records of the batch were fetched in that generation or a later one.
	b.epoch = s.observeGenerations(r)
	s.add(b, &msg)
	wait, cancel := context.WithTimeout(ctx, s.cfg.BatchWait)
	defer cancel()
	for len(b.recs) < s.cfg.BatchSize {
		msg, err = r.FetchMessage(wait)
		if err != nil {
			if wait.Err() != nil && ctx.Err() == nil {
				err = nil // the batch wait is over
			} else {
				err = fetchError(ctx, err)
			}
			break
		}
		s.add(b, &msg)
	}
	flush = s.seal(b, r)
	s.hint = min(max(len(b.recs), 16), s.cfg.BatchSize)
	return b, flush, err
}

// fetchError turns a FetchMessage error into what Next reports.
func fetchError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, io.EOF):
		return ErrClosed
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("kafka: fetch: %w", err)
}

// add puts one fetched record into b, extending the batch's run of its partition. A
// record fetched again after a rebalance, below what this source already took into a
// batch, is dropped.
func (s *Source) add(b *batch, msg *kafkago.Message) {
	p := s.partition(msg.Topic, msg.Partition)
	if p == nil {
		return
	}
	if p.mark != b.seq {
		p.mark = b.seq
		p.fresh = p.next < 0 || msg.Offset < p.next
		b.parts = append(b.parts, p)
	}
	if msg.Offset < p.next {
		if msg.Offset >= p.low {
			s.redelivered.Add(1)
			return
		}
		s.rewind(p, msg.Offset)
	}
	if p.next < 0 {
		p.low = msg.Offset
	}
	p.next = msg.Offset + 1
	if p.span == nil {
		p.span = &span{part: p, resets: p.resets, first: msg.Offset}
		b.spans = append(b.spans, p.span)
	}
	p.span.last = msg.Offset
	if t := p.topic; t.mark != b.seq {
		t.mark, t.count = b.seq, 1
	} else {
		t.count++
	}
	b.recs = append(b.recs, record{topic: p.topic, partition: msg.Partition, offset: msg.Offset, value: msg.Value})
}

// partition returns the state of one partition, creating it when first seen. It
// returns nil for a topic the source does not read: kafka-go assigns only GroupTopics,
// so that would be a kafka-go bug, and such records are neither parsed nor committed.
func (s *Source) partition(topicName string, id int) *partition {
	if p := s.last; p != nil && p.id == id && p.topic.name == topicName {
		return p
	}
	k := partKey{topicName, id}
	p := s.parts[k]
	if p == nil {
		t := s.topics[topicName]
		if t == nil {
			s.log.Error("kafka record of a topic not subscribed to", "topic", topicName, "partition", id)
			return nil
		}
		p = &partition{topic: t, id: id, next: -1, low: -1, done: -1, committed: -1}
		s.parts[k] = p
	}
	s.last = p
	return p
}

// seal ends b: it queues b's runs on their partitions in delivery order and confirms
// the partitions b fetched from for the generation they were fetched in. It reports
// whether a partition with released but uncommitted runs was confirmed.
//
// The records of b were fetched in generation b.epoch or later. If a later generation
// was seen to start by now, b straddles the change and only some records are known to
// be from it: those of a partition b fetched again (kafka-go does that only in a new
// generation) or fetched for the first time. Their partitions are confirmed for the new
// generation; the others for b.epoch, and the next record of theirs confirms them.
func (s *Source) seal(b *batch, r *kafkago.Reader) (flush bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sp := range b.spans {
		p := sp.part
		if sp.resets != p.resets {
			continue // the partition was rewound within this batch; its newer run is queued
		}
		if p.done < 0 {
			// The partition's first run since it was seen or rewound: what lies before it
			// is not this source's to commit.
			p.done, p.committed = sp.first, sp.first
		}
		p.queue = append(p.queue, sp)
	}
	s.observeGenerationsLocked(r)
	for _, p := range b.parts {
		p.span = nil
		if p.fresh {
			p.epoch = s.epoch
		} else {
			p.epoch = max(p.epoch, b.epoch)
		}
		if _, ok := s.dirty[p]; ok && p.epoch == s.epoch {
			flush = true
		}
	}
	return flush
}
