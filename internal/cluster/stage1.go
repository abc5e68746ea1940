package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// tick is how long stage one waits for records before it looks at the wall clock
// anyway: a source partition that went silent must be reported idle to every task.
const tick = time.Second

// stage1 reads the raw topics (its own consumer group), decides lateness per source
// partition, and writes each event to the internal topics of the keys it has, followed
// by in-band marks of each source partition's stream time. A batch is acknowledged,
// which commits its raw offsets, only once the brokers acknowledged every record it
// became.
type stage1 struct {
	keys     keyBuf // where the keys of events are built
	cfg      Config
	src      detectors.EventSource // the raw topics' Kafka source, with kafka.Options.Offsets
	w        *kafkago.Writer
	lateness int64 // ms
	idle     time.Duration
	now      func() time.Time
	log      *slog.Logger
	m        *metrics

	parts map[ingest.Partition]*srcPart
	dirty map[ingest.Partition]struct{} // parts whose state the tasks have not been told

	buf  []byte
	msgs []kafkago.Message
}

// srcPart is what stage one knows of one source partition it reads.
type srcPart struct {
	seen    bool
	stream  int64 // largest event time read, ms; valid when seen
	last    int64 // offset of the last record read; -1 before the first
	arrived time.Time
	idle    bool
	flags   uint64 // flagOpened, flagIdle: to relay with the next marks
}

func (s *stage1) part(p ingest.Partition) *srcPart {
	sp := s.parts[p]
	if sp == nil {
		sp = &srcPart{last: -1}
		s.parts[p] = sp
	}
	return sp
}

// run moves batches until ctx ends. A batch whose records could not all be written is
// not acknowledged: its records are read again after a restart or by the partition's
// next owner, and written again, identically.
func (s *stage1) run(ctx context.Context) error {
	for {
		tctx, cancel := context.WithTimeout(ctx, tick)
		b, err := s.src.Next(tctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, context.DeadlineExceeded):
		case err != nil:
			return fmt.Errorf("cluster: stage one: %w", err)
		}
		now := s.now()
		if b != nil {
			s.take(b, now)
		}
		s.checkIdle(now)
		if len(s.dirty) > 0 {
			// With the batch's records, so that an acknowledged batch has told every
			// task how far its partitions got: a task that gets none of a partition's
			// events does not wait for it.
			s.appendMarks()
		}
		if err := s.write(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if b != nil {
			if Failpoint != nil && len(b.Events) > 0 {
				Failpoint(StepWritten)
			}
			if err := b.Ack(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("stage one could not acknowledge a batch; its records are read and written again", "err", err)
			}
		}
	}
}

// take turns b's events into internal records.
func (s *stage1) take(b *ingest.Batch, now time.Time) {
	for _, p := range b.Opened {
		s.part(p).flags |= flagOpened
		s.dirty[p] = struct{}{}
	}
	i := 0
	for _, r := range b.Runs {
		sp := s.part(r.Partition)
		sp.arrived, sp.idle = now, false
		sp.flags &^= flagIdle
		for j := i; j < i+r.N; j++ {
			ev := &b.Events[j]
			t := ev.Time.UnixMilli()
			if !sp.seen || t > sp.stream {
				sp.seen, sp.stream = true, t
			}
			pos := position{part: r.Partition, offset: b.Offsets[j]}
			sp.last = pos.offset
			s.appendEvent(pos, sp.stream, t < sp.stream-s.lateness, ev)
		}
		s.dirty[r.Partition] = struct{}{}
		i += r.N
	}
	for _, p := range b.Ended {
		// Revoked: the partition's next owner reads it from the committed offset and
		// relays its stream time from there.
		delete(s.parts, p)
		delete(s.dirty, p)
	}
}

// appendEvent queues ev's record for the topic of each key it has.
func (s *stage1) appendEvent(pos position, stream int64, late bool, ev *ingest.Event) {
	for k := range numKinds {
		spec := &kinds[k]
		key := spec.key(ev, &s.keys)
		if key == "" {
			continue
		}
		start := len(s.buf)
		s.buf = appendEvent(s.buf, pos, stream, late, spec.fields, ev)
		s.msgs = append(s.msgs, kafkago.Message{
			Topic:     s.cfg.Topic(k),
			Partition: partitionOf(key, s.cfg.Partitions),
			Value:     s.buf[start:len(s.buf):len(s.buf)],
			Time:      ev.Time,
		})
	}
}

// checkIdle marks the source partitions that delivered nothing for idle_timeout as
// idle: the tasks stop waiting for them.
func (s *stage1) checkIdle(now time.Time) {
	for p, sp := range s.parts {
		if !sp.idle && !sp.arrived.IsZero() && now.Sub(sp.arrived) >= s.idle {
			sp.idle = true
			sp.flags |= flagIdle
			s.dirty[p] = struct{}{}
			s.log.Info("source partition idle; the tasks no longer wait for it", "partition", p.String())
		}
	}
}

// appendMarks queues one marks record, of every partition whose state changed, to
// every partition of every internal topic.
func (s *stage1) appendMarks() {
	ps := slices.SortedFunc(maps.Keys(s.dirty), comparePartitions)
	marks := make([]mark, 0, len(ps))
	for _, p := range ps {
		sp := s.parts[p]
		m := mark{pos: position{part: p, offset: sp.last}, stream: math.MinInt64, flags: sp.flags}
		if sp.seen {
			m.stream = sp.stream
		}
		marks = append(marks, m)
		sp.flags = 0
	}
	clear(s.dirty)
	start := len(s.buf)
	s.buf = appendMarks(s.buf, marks)
	value := s.buf[start:len(s.buf):len(s.buf)]
	for k := range numKinds {
		for p := range s.cfg.Partitions {
			s.msgs = append(s.msgs, kafkago.Message{Topic: s.cfg.Topic(k), Partition: p, Value: value})
		}
	}
}

// write writes the queued records and returns once the brokers have every one. A
// failed write is tried again, whole (records written twice are identical, and the
// tasks drop the second), until ctx ends.
func (s *stage1) write(ctx context.Context) error {
	if len(s.msgs) == 0 {
		return nil
	}
	wait := 100 * time.Millisecond
	for {
		err := s.w.WriteMessages(ctx, s.msgs...)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("writing to the internal topics failed; trying again", "records", len(s.msgs), "err", err)
		s.m.writeRetries.Inc()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
	for i := range s.msgs {
		s.m.produced.Inc()
		s.m.producedBytes.Add(float64(len(s.msgs[i].Value)))
	}
	clear(s.msgs)
	s.msgs, s.buf = s.msgs[:0], s.buf[:0]
	return nil
}

// byPartition is the writer's balancer: stage one picks each record's partition itself
// (partitionOf), the same on every replica.
type byPartition struct{}

func (byPartition) Balance(msg kafkago.Message, partitions ...int) int { return msg.Partition }
