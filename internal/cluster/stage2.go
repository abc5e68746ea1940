package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

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
	raw     []string      // the raw topics: every task waits for each of their partitions
	idle    time.Duration // idle_timeout: how long a task waits for a source partition that delivers nothing
	now     func() time.Time
	newTask func(k Kind, partition int) (*detectors.Engine, func(), error)
	purge   *purger // told of every commit that succeeded
	sink    detectors.AlertSink
	// handover delivers what the tasks of a generation raised, between their end and the
	// group's next generation (Options.Handover); nil: nothing to wait for.
	handover func(context.Context) error
	log      *slog.Logger
	m        *metrics
	// wrapTask, when set, wraps each task's source: the benchmarks time when a task's
	// engine takes each event (BenchmarkHopLatency). Nil in production.
	wrapTask func(k Kind, src detectors.EventSource) detectors.EventSource
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
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
			continue
		}
		n := 0
		var tasks sync.WaitGroup
		for _, topic := range slices.Sorted(maps.Keys(gen.Assignments)) {
			k, ok := s.cfg.kindOf(topic)
			if !ok {
				continue
			}
			for _, pa := range gen.Assignments[topic] {
				n++
				tasks.Add(1)
				gen.Start(func(gctx context.Context) {
					defer tasks.Done()
					if err := s.runTask(gctx, gen, k, pa.ID); err != nil {
						select {
						case failed <- err:
						default:
						}
					}
				})
			}
		}
		s.log.Info("tasks assigned", "group", s.group, "generation", gen.ID, "tasks", n)
		// kafka-go rejoins the group (or leaves it, on Close) only once every function
		// a generation started has returned: the handover runs in one, after the tasks.
		ended := make(chan struct{})
		gen.Start(func(gctx context.Context) {
			<-gctx.Done()
			tasks.Wait()
			s.handOver(gen.ID)
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

// handoverTimeout bounds a handover: while it runs, the group waits for this replica
// (no task of the group runs anywhere), so a receiver that is down must not hold the
// tasks back for long; what is still undelivered after it stays in the outbox.
const handoverTimeout = 10 * time.Second

// handOver delivers what the tasks of generation gen raised (stage2.handover).
func (s *stage2) handOver(gen int32) {
	if s.handover == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), handoverTimeout)
	defer cancel()
	start := s.now()
	if err := s.handover(ctx); err != nil {
		s.log.Warn("tasks handed over with their alerts undelivered; their next owner may post some incidents a second time",
			"group", s.group, "generation", gen, "err", err)
		return
	}
	s.log.Debug("tasks handed over", "group", s.group, "generation", gen, "took", s.now().Sub(start))
}

// commit is a task's committed offset and the source offsets taken before it.
type commit struct {
	offset int64 // -1: none
	highs  map[ingest.Partition]int64
}

// committed reads the commit of one internal partition.
func (s *stage2) committed(ctx context.Context, topic string, partition int) (commit, error) {
	req := &kafkago.OffsetFetchRequest{GroupID: s.group, Topics: map[string][]int{topic: {partition}}}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.client.OffsetFetch(ctx, req)
	if err == nil {
		err = resp.Error
	}
	if err != nil {
		return commit{}, fmt.Errorf("cluster: fetch the offset of %s/%d: %w", topic, partition, err)
	}
	for _, p := range resp.Topics[topic] {
		if p.Partition != partition {
			continue
		}
		if p.Error != nil {
			return commit{}, fmt.Errorf("cluster: fetch the offset of %s/%d: %w", topic, partition, p.Error)
		}
		highs, err := decodeHighs(p.Metadata)
		if err != nil {
			return commit{}, fmt.Errorf("cluster: the commit of %s/%d: %w", topic, partition, err)
		}
		return commit{offset: p.CommittedOffset, highs: highs}, nil
	}
	return commit{}, fmt.Errorf("cluster: the broker returned no offset for %s/%d", topic, partition)
}

// sources returns the partitions of the raw topics.
func (s *stage2) sources(ctx context.Context) ([]ingest.Partition, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	md, err := s.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: s.raw})
	if err != nil {
		return nil, fmt.Errorf("cluster: read the raw topics' metadata: %w", err)
	}
	var out []ingest.Partition
	for _, t := range md.Topics {
		if t.Error != nil {
			return nil, fmt.Errorf("cluster: raw topic %s: %w", t.Name, t.Error)
		}
		for _, p := range t.Partitions {
			out = append(out, ingest.Partition{Source: t.Name, ID: int32(p.ID)})
		}
	}
	return out, nil
}

// runTask runs the task of one internal partition until the generation ends: it reads
// the partition's commit and the raw topics' partitions (trying again while the brokers
// do not answer), builds the engine and runs it.
func (s *stage2) runTask(ctx context.Context, gen *kafkago.Generation, k Kind, partition int) error {
	topic := s.cfg.Topic(k)
	var c commit
	var sources []ingest.Partition
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		var err error
		if c, err = s.committed(ctx, topic, partition); err == nil {
			sources, err = s.sources(ctx)
		}
		if err == nil {
			break
		}
		s.log.Warn("task cannot start yet; trying again", "topic", topic, "partition", partition, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	eng, done, err := s.newTask(k, partition)
	if err != nil {
		return err
	}
	defer done()
	defer s.m.position.DeleteLabelValues(topic, strconv.Itoa(partition))
	defer s.m.lag.DeleteLabelValues(topic, strconv.Itoa(partition))
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
	src := newTaskSource(s, gen, topic, partition, c, sources)
	src.r = r
	s.log.Debug("task started", "topic", topic, "partition", partition, "offset", c.offset)
	var es detectors.EventSource = src
	if s.wrapTask != nil {
		es = s.wrapTask(k, src)
	}
	sink := s.sink
	if Failpoint != nil {
		sink = failpointSink{sink}
	}
	err = eng.Run(ctx, es, sink)
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("cluster: task %s/%d: %w", topic, partition, err)
}

// ack is what acknowledging a batch does: commit the task's partition at next, with
// the source offsets taken up to it. The engine acknowledges batches in order.
func (t *taskSource) ack(next int64, highs string) func(context.Context) error {
	return func(ctx context.Context) error {
		if next < 0 {
			return nil // nothing read yet
		}
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
			return nil
		}
		t.s.purge.committed(t.topic, t.partition, next)
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
	ps := slices.SortedFunc(maps.Keys(highs), comparePartitions)
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
