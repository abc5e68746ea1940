package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// stage2 is a member of the tasks' consumer group over the internal topics. For each
// internal partition a generation assigns it, it runs a task: a detectors.Engine with
// the detectors keyed by the partition's topic, fed from the partition alone. A task
// commits its partition's offset together with the highest source offset it took of
// each source partition (in the commit's metadata), so that a task rebuilt from the
// commit, here or on another replica, drops the records stage one wrote twice.
type stage2 struct {
	cfg     Config
	group   string
	brokers []string
	dialer  *kafkago.Dialer
	client  *kafkago.Client
	timeout time.Duration
	batch   int           // most events in a task's batch
	wait    time.Duration // longest a partial batch waits for more records
	newTask func(k Kind, partition int) (*detectors.Engine, func(), error)
	sink    detectors.AlertSink
	log     *slog.Logger
	m       *metrics
}

// run takes part in the group until ctx ends, running the tasks of each generation.
// A task that fails ends run with its error.
func (s *stage2) run(ctx context.Context) error {
	topics := make([]string, numKinds)
	for k := range numKinds {
		topics[k] = s.cfg.Topic(k)
	}
	g, err := kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID:                s.group,
		Brokers:           s.brokers,
		Dialer:            s.dialer,
		Topics:            topics,
		StartOffset:       kafkago.FirstOffset,
		HeartbeatInterval: 3 * time.Second,
		SessionTimeout:    30 * time.Second,
		RebalanceTimeout:  30 * time.Second,
		JoinGroupBackoff:  time.Second,
		Timeout:           s.timeout,
	})
	if err != nil {
		return fmt.Errorf("cluster: tasks group: %w", err)
	}
	defer g.Close()
	failed := make(chan error, 1)
	for {
		gen, err := g.Next(ctx)
		switch {
		case err == nil:
		case ctx.Err() != nil || errors.Is(err, kafkago.ErrGroupClosed):
			return nil
		default:
			s.log.Warn("tasks group join failed; trying again", "group", s.group, "err", err)
			continue
		}
		committed, err := s.committed(ctx, gen)
		if err != nil {
			s.log.Warn("reading the tasks' commits failed; the generation runs no task until the next", "group", s.group, "err", err)
		}
		n := 0
		for _, topic := range slices.Sorted(maps.Keys(gen.Assignments)) {
			k, ok := s.cfg.kindOf(topic)
			if !ok || err != nil {
				continue
			}
			for _, pa := range gen.Assignments[topic] {
				c := committed[topic][pa.ID]
				n++
				gen.Start(func(gctx context.Context) {
					if err := s.runTask(gctx, gen, k, pa.ID, c); err != nil {
						select {
						case failed <- err:
						default:
						}
					}
				})
			}
		}
		s.log.Info("tasks assigned", "group", s.group, "generation", gen.ID, "tasks", n)
		ended := make(chan struct{})
		gen.Start(func(gctx context.Context) {
			<-gctx.Done()
			close(ended)
		})
		select {
		case <-ended:
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return err
		}
	}
}

// commit is a task's committed offset and the source offsets taken before it.
type commit struct {
	offset int64 // -1: none
	highs  map[ingest.Partition]int64
}

// committed reads the commits of the partitions gen assigns.
func (s *stage2) committed(ctx context.Context, gen *kafkago.Generation) (map[string]map[int]commit, error) {
	req := &kafkago.OffsetFetchRequest{GroupID: s.group, Topics: map[string][]int{}}
	for topic, pas := range gen.Assignments {
		for _, pa := range pas {
			req.Topics[topic] = append(req.Topics[topic], pa.ID)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.client.OffsetFetch(ctx, req)
	if err == nil {
		err = resp.Error
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: fetch the tasks' offsets: %w", err)
	}
	out := map[string]map[int]commit{}
	for topic, ps := range resp.Topics {
		out[topic] = map[int]commit{}
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("cluster: fetch the offset of %s/%d: %w", topic, p.Partition, p.Error)
			}
			highs, err := decodeHighs(p.Metadata)
			if err != nil {
				return nil, fmt.Errorf("cluster: the commit of %s/%d: %w", topic, p.Partition, err)
			}
			out[topic][p.Partition] = commit{offset: p.CommittedOffset, highs: highs}
		}
	}
	return out, nil
}

// runTask runs the task of one internal partition until the generation ends.
func (s *stage2) runTask(ctx context.Context, gen *kafkago.Generation, k Kind, partition int, c commit) error {
	eng, done, err := s.newTask(k, partition)
	if err != nil {
		return err
	}
	defer done()
	topic := s.cfg.Topic(k)
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:         s.brokers,
		Topic:           topic,
		Partition:       partition,
		Dialer:          s.dialer,
		MinBytes:        1,
		MaxBytes:        1 << 20,
		MaxWait:         250 * time.Millisecond,
		ReadLagInterval: -1,
		StartOffset:     kafkago.FirstOffset,
	})
	defer r.Close()
	if c.offset >= 0 {
		if err := r.SetOffset(c.offset); err != nil {
			return fmt.Errorf("cluster: task %s/%d: start at %d: %w", topic, partition, c.offset, err)
		}
	}
	highs := c.highs
	if highs == nil {
		highs = map[ingest.Partition]int64{}
	}
	src := &taskSource{s: s, gen: gen, topic: topic, partition: partition, r: r, highs: highs,
		records: s.m.consumed.WithLabelValues(topic), dups: s.m.duplicates.WithLabelValues(topic)}
	s.log.Debug("task started", "topic", topic, "partition", partition, "offset", c.offset)
	err = eng.Run(ctx, src, s.sink)
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("cluster: task %s/%d: %w", topic, partition, err)
}

// taskSource is a task's detectors.EventSource: the records of its internal partition
// as batches of events, each event of a run of its source partition, with the marks of
// stage one as Batch.Marks, Opened and Ended at the place they were written.
type taskSource struct {
	s         *stage2
	gen       *kafkago.Generation
	topic     string
	partition int
	r         *kafkago.Reader
	highs     map[ingest.Partition]int64 // highest source offset taken, per source partition
	pending   *kafkago.Message           // fetched, for the next batch
	rec       record
	handed    int // records of the batch handed out last: counted once the engine asks for more
	records   prometheus.Counter
	dups      prometheus.Counter
}

// Next returns the records that arrive within a tick, up to a batch of them. A batch
// ends before a marks record or a late event that follows events, so that each mark is
// applied where stage one wrote it; a late event comes first in its batch, after a mark
// of its source partition's stream time, so that the engine judges it late as stage one
// did.
func (t *taskSource) Next(ctx context.Context) (*ingest.Batch, error) {
	t.records.Add(float64(t.handed))
	t.handed = 0
	var b batchParts
	last := int64(-1) // offset of the last record the batch took
	deadline := time.Now().Add(tick)
	for len(b.events) < t.s.batch {
		msg := t.pending
		t.pending = nil
		if msg == nil {
			fctx, cancel := context.WithDeadline(ctx, deadline)
			m, err := t.r.FetchMessage(fctx)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if errors.Is(err, context.DeadlineExceeded) {
					break
				}
				return nil, fmt.Errorf("cluster: read %s/%d: %w", t.topic, t.partition, err)
			}
			msg = &m
		}
		if err := decodeRecord(&t.rec, msg.Value); err != nil {
			return nil, fmt.Errorf("cluster: %s/%d offset %d: %w", t.topic, t.partition, msg.Offset, err)
		}
		if t.rec.typ == typeMark {
			if len(b.events) > 0 {
				t.pending = msg
				break
			}
			idle := b.takeMarks(t.rec.marks)
			last = msg.Offset
			t.handed++
			if idle {
				break // Ended applies after the batch's events: nothing may follow it
			}
			continue
		}
		p := t.rec.pos.part
		if h, ok := t.highs[p]; ok && t.rec.pos.offset <= h {
			t.dups.Inc()
			last = msg.Offset
			t.handed++
			continue
		}
		if t.rec.late {
			if len(b.events) > 0 {
				t.pending = msg
				break
			}
			b.marks = append(b.marks, ingest.Mark{Partition: p, Time: time.UnixMilli(t.rec.stream).UTC()})
		}
		t.highs[p] = t.rec.pos.offset
		b.events = append(b.events, t.rec.ev)
		if n := len(b.runs); n > 0 && b.runs[n-1].Partition == p {
			b.runs[n-1].N++
		} else {
			b.runs = append(b.runs, ingest.Run{Partition: p, N: 1})
		}
		last = msg.Offset
		t.handed++
		if len(b.events) == 1 {
			deadline = time.Now().Add(t.s.wait)
		}
	}
	var ack func(context.Context) error
	if last >= 0 {
		ack = t.ack(last+1, encodeHighs(t.highs))
	}
	nb := ingest.NewBatch(b.events, ack)
	nb.Runs, nb.Marks, nb.Opened, nb.Ended = b.runs, b.marks, b.opened, b.ended
	return nb, nil
}

// batchParts is a task's batch being assembled.
type batchParts struct {
	events        []ingest.Event
	runs          []ingest.Run
	marks         []ingest.Mark
	opened, ended []ingest.Partition
}

// takeMarks adds a marks record to a batch that has no events yet, and reports whether
// one of them ended a source partition (idle), which must end the batch.
func (b *batchParts) takeMarks(marks []mark) (idle bool) {
	for _, m := range marks {
		p := m.pos.part
		if m.flags&flagOpened != 0 {
			b.opened = append(b.opened, p)
		}
		if m.stream != math.MinInt64 {
			b.marks = append(b.marks, ingest.Mark{Partition: p, Time: time.UnixMilli(m.stream).UTC()})
		}
		if m.flags&flagIdle != 0 {
			b.ended = append(b.ended, p)
			idle = true
		}
	}
	return idle
}

// ack is what acknowledging a batch does: commit the task's partition at next, with
// the source offsets taken up to it. The engine acknowledges batches in order.
func (t *taskSource) ack(next int64, highs string) func(context.Context) error {
	return func(ctx context.Context) error {
		if len(highs) > maxHighs {
			t.s.log.Error("task cannot commit: its source offsets exceed what Kafka keeps with a commit; a rebuilt task reads from the previous one",
				"topic", t.topic, "partition", t.partition, "bytes", len(highs))
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, t.s.timeout)
		defer cancel()
		resp, err := t.s.client.OffsetCommit(ctx, &kafkago.OffsetCommitRequest{
			GroupID:      t.s.group,
			GenerationID: int(t.gen.ID),
			MemberID:     t.gen.MemberID,
			Topics: map[string][]kafkago.OffsetCommit{
				t.topic: {{Partition: t.partition, Offset: next, Metadata: highs}},
			},
		})
		if err == nil {
			for _, p := range resp.Topics[t.topic] {
				err = cmp.Or(err, p.Error)
			}
		}
		if err != nil {
			// Not fatal: the task's partition is read again from the last commit, with
			// the source offsets of that commit, which rebuilds the same state.
			t.s.log.Warn("task commit failed; a rebuilt task reads from the previous one", "topic", t.topic, "partition", t.partition, "err", err)
		}
		return nil
	}
}

// maxHighs bounds the source partitions a task's commit names: Kafka keeps at most
// offset.metadata.max.bytes (4096 by default) of metadata per commit.
const maxHighs = 4000

// encodeHighs writes the source offsets taken as the commit's metadata:
// "topic/partition=offset" sorted, separated by commas (Kafka topic names have neither
// '/' nor ',').
func encodeHighs(highs map[ingest.Partition]int64) string {
	ps := slices.SortedFunc(maps.Keys(highs), func(a, b ingest.Partition) int {
		return cmp.Or(strings.Compare(a.Source, b.Source), cmp.Compare(a.ID, b.ID))
	})
	var sb strings.Builder
	for i, p := range ps {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(p.Source)
		sb.WriteByte('/')
		sb.WriteString(strconv.Itoa(int(p.ID)))
		sb.WriteByte('=')
		sb.WriteString(strconv.FormatInt(highs[p], 10))
	}
	return sb.String()
}

// decodeHighs reads what encodeHighs wrote; "" is no source offsets.
func decodeHighs(s string) (map[ingest.Partition]int64, error) {
	highs := map[ingest.Partition]int64{}
	if s == "" {
		return highs, nil
	}
	for item := range strings.SplitSeq(s, ",") {
		name, off, ok1 := strings.Cut(item, "=")
		topic, id, ok2 := strings.Cut(name, "/")
		n, err1 := strconv.ParseInt(id, 10, 32)
		o, err2 := strconv.ParseInt(off, 10, 64)
		if !ok1 || !ok2 || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("cluster: commit metadata %q is not the source offsets a task writes", item)
		}
		highs[ingest.Partition{Source: topic, ID: int32(n)}] = o
	}
	return highs, nil
}
