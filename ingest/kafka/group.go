package kafka

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	kafkago "github.com/segmentio/kafka-go"
)

// fetched is one record as a partition reader hands it to the fetching goroutine,
// parsed.
type fetched struct {
	p   *partition
	gen uint64 // the generation the reader ran in
	msg kafkago.Message
	ev  ingest.Event // where err is nil or Kept
	err error
	// at is what the record is ordered by among the partitions (ms since the epoch):
	// its event time, or for a rejected record the last event time its reader parsed
	// (math.MinInt64 before the first), so that it neither holds nor hurries anyone.
	at int64
}

// generation is this member's view of one generation of the group.
type generation struct {
	seq uint64 // counts the generations this source joined, from 1
	gen *kafkago.Generation
}

// runGroup is the group goroutine: it joins each generation of the consumer group,
// takes its assignment (see assign), starts a reader for each assigned partition and
// waits for the generation to end. It returns when ctx ends or the group is closed.
func (s *Source) runGroup(ctx context.Context, group *kafkago.ConsumerGroup) {
	defer s.running.Done()
	for {
		gen, err := group.Next(ctx)
		switch {
		case err == nil:
		case ctx.Err() != nil || errors.Is(err, kafkago.ErrGroupClosed):
			return
		default:
			// kafka-go tries again by itself, after its join backoff; say why meanwhile.
			s.log.Warn("kafka group join failed; trying again", "group", s.cfg.Group, "err", err)
			s.setErr(fmt.Errorf("kafka: join group %s: %w", s.cfg.Group, err))
			continue
		}
		s.setErr(nil)
		g, starts := s.assign(gen)
		for _, st := range starts {
			gen.Start(func(gctx context.Context) { s.readPartition(gctx, g.seq, st.p, st.offset) })
		}
		ended := make(chan struct{})
		gen.Start(func(gctx context.Context) {
			<-gctx.Done()
			close(ended)
		})
		// What was acknowledged while no generation was there, or in the last one, can
		// be committed now for the partitions this member kept.
		if err := s.release(ctx, nil); err != nil && ctx.Err() == nil {
			s.log.Warn("kafka commit at the start of a generation failed; the next acknowledgement tries again", "err", err)
		}
		select {
		case <-ended:
		case <-ctx.Done():
			return
		}
		s.mu.Lock()
		s.gen = nil
		s.mu.Unlock()
		s.log.Info("kafka group generation ended", "group", s.cfg.Group, "generation", gen.ID)
	}
}

// start is where one assigned partition's reader begins.
type start struct {
	p      *partition
	offset int64
}

// assign takes the assignment of a new generation. A partition this member had in
// the previous generation keeps its state: the reader goes on after the last record
// taken into a batch, and batches in flight still commit it when acknowledged. A
// partition it lost is forgotten: its batches in flight commit nothing (its records go
// to its new owner from the group's committed offset) and it is reported as ended. A
// partition new to it starts from the group's committed offset and is reported as
// opened.
func (s *Source) assign(gen *kafkago.Generation) (generation, []start) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.genSeq++
	g := generation{seq: s.genSeq, gen: gen}
	s.gen = &g

	assigned := map[partKey]int64{}
	for topicName, pas := range gen.Assignments {
		for _, pa := range pas {
			assigned[partKey{topicName, pa.ID}] = pa.Offset
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(s.parts), partKey.Compare) {
		if _, ok := assigned[k]; ok {
			continue
		}
		p := s.parts[k]
		p.owner.Store(0)
		p.resets.Add(1)
		clear(p.queue)
		p.queue, p.head = nil, 0
		delete(s.dirty, p)
		delete(s.parts, k)
		s.ended = append(s.ended, p.key)
		p.topic.lag.DeleteLabelValues(p.topic.name, strconv.Itoa(p.id))
		s.log.Info("kafka partition revoked", "topic", k.topic, "partition", k.partition, "generation", gen.ID)
	}
	var starts []start
	s.active = s.active[:0]
	for _, k := range slices.SortedFunc(maps.Keys(assigned), partKey.Compare) {
		committed := assigned[k]
		p := s.parts[k]
		switch {
		case p == nil:
			t := s.topics[k.topic]
			if t == nil {
				s.log.Error("kafka assigned a partition of a topic not subscribed to", "topic", k.topic, "partition", k.partition)
				continue
			}
			p = newPartition(t, k.partition, partitionQueue(s.rcfg.QueueCapacity))
			s.parts[k] = p
			s.opened = append(s.opened, p.key)
			s.log.Info("kafka partition assigned", "topic", k.topic, "partition", k.partition, "offset", committed, "generation", gen.ID)
		case committed >= 0 && p.next.Load() >= 0 && committed > p.next.Load():
			// Someone moved the group's offset past what this member took (an operator
			// reset it while the group was empty). Follow it; the runs in flight no
			// longer stand for what comes next.
			s.log.Warn("kafka partition's committed offset moved past the records taken; following it",
				"topic", k.topic, "partition", k.partition, "committed", committed, "taken", p.next.Load())
			p.resets.Add(1)
			clear(p.queue)
			p.queue, p.head = nil, 0
			p.done, p.committed = -1, -1
			p.next.Store(-1)
			delete(s.dirty, p)
		}
		p.owner.Store(g.seq)
		s.active = append(s.active, p)
		from := committed
		if n := p.next.Load(); n >= 0 {
			from = n
		}
		starts = append(starts, start{p: p, offset: from})
	}
	s.activeV.Add(1)
	return g, starts
}

// readPartition is one assigned partition's reader for generation gen: it fetches
// from offset, parses each record and hands it to the fetching goroutine until the
// generation (ctx) ends. Returning before that would end the generation, so a fetch
// error is logged and retried.
//
// Records are parsed here, one parser a reader, so that the fetching goroutine can
// merge the partitions by event time; parsing is most of a source's work, and the
// readers do it in parallel.
func (s *Source) readPartition(ctx context.Context, gen uint64, p *partition, offset int64) {
	parser, err := p.topic.parser()
	if err != nil {
		s.log.Error("kafka partition reader has no parser", "topic", p.topic.name, "partition", p.id, "err", err)
		<-ctx.Done()
		return
	}
	defer p.topic.putParser(parser)
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:         s.cfg.Brokers,
		Topic:           p.topic.name,
		Partition:       p.id,
		Dialer:          s.rcfg.Dialer,
		QueueCapacity:   partitionQueue(s.rcfg.QueueCapacity),
		MinBytes:        s.rcfg.MinBytes,
		MaxBytes:        partitionFetchBytes(s.rcfg.MaxBytes),
		MaxWait:         s.rcfg.MaxWait,
		ReadLagInterval: -1,
		StartOffset:     s.rcfg.StartOffset,
		ErrorLogger:     s.rcfg.ErrorLogger,
		Logger:          s.rcfg.Logger,
	})
	defer r.Close()
	if err := r.SetOffset(offset); err != nil {
		s.log.Error("kafka partition reader could not start", "topic", p.topic.name, "partition", p.id, "offset", offset, "err", err)
		<-ctx.Done()
		return
	}
	last := int64(math.MinInt64) // event time of the last record parsed, ms
	f := new(fetched)            // reused: the parser's pointer to its event escapes
	for {
		msg, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("kafka fetch failed; trying again", "topic", p.topic.name, "partition", p.id, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		*f = fetched{p: p, gen: gen, msg: msg, at: last}
		if f.err = parser.Parse(&f.ev, msg.Value); f.err == nil || ingest.Kept(f.err) {
			last = f.ev.Time.UnixMilli()
			f.at = last
		}
		select {
		case p.fetched <- *f:
		case <-ctx.Done():
			return
		}
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// partitionQueue is how many records each partition reader holds ahead, in kafka-go's
// queue and in ours: enough to keep the fetching goroutine busy while the reader
// fetches more, few enough that dozens of partitions do not hold a gigabyte.
func partitionQueue(batch int) int { return min(batch, 256) }

// partitionFetchBytes bounds one fetch of one partition at 1 MiB, Kafka's own
// max.partition.fetch.bytes: every partition has a reader of its own, and a response of
// kafka.max_bytes (ten megabytes by default) from a busy or slow broker can take longer
// to arrive than kafka-go's read deadline allows, so the reader would try the same
// offset again, forever (seen against a loaded test broker).
func partitionFetchBytes(maxBytes int) int { return min(maxBytes, 1<<20) }

// lifecycle returns and forgets the partitions opened and ended since the last call.
func (s *Source) lifecycle() (opened, ended []ingest.Partition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	opened, ended = s.opened, s.ended
	s.opened, s.ended = nil, nil
	return opened, ended
}

// setErr records the group's trouble for Next to report while no records come.
func (s *Source) setErr(err error) {
	s.mu.Lock()
	s.groupErr = err
	s.mu.Unlock()
}
