package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
)

// purgeEvery is how often a replica purges the internal partitions its tasks committed:
// Kafka Streams purges its repartition topics every 30 s (repartition.purge.interval.ms),
// not on every commit, since each purge is a request to every partition leader.
const purgeEvery = 30 * time.Second

// A purger deletes the records of internal partitions below what the tasks committed, as
// Kafka Streams does with its repartition topics, so that the internal topics hold the
// records still to be processed rather than everything their retention keeps.
//
// The offset is the task's committed offset itself, since nothing reads below it. A task
// rebuilt from its commit (after a crash or a rebalance, on any replica) starts reading
// at it (runTask), and the engine acknowledges a batch only once no open window needs
// its events, so the events and the marks (stream times, opened, idle) that rebuild its
// windows and watermark are at or after the commit; what it knows from before comes with
// the commit (the source offsets in its metadata) or from the store (open incidents,
// baselines), and a reload reads nothing from Kafka. A partition with no commit (its
// task reads it from the start) is not purged.
//
// Each replica purges the partitions of its own tasks with their own successful commits
// (Kafka Streams' choice too): no replica has to learn which partitions the others run,
// and no extra OffsetFetch is needed. A partition is purged by whoever runs its task;
// the last commit of a task that moved away is still purged by its old replica, which
// is harmless, since the new owner starts at that commit or a later one (a commit that
// succeeded did so before the group's next generation, in which the new owner reads it).
type purger struct {
	client *kafkago.Client
	every  time.Duration
	log    *slog.Logger
	m      *metrics

	mu   sync.Mutex
	want map[topicPartition]int64 // the last commit of each partition, not yet purged to
}

type topicPartition struct {
	topic     string
	partition int
}

func newPurger(client *kafkago.Client, log *slog.Logger, m *metrics) *purger {
	return &purger{client: client, every: purgeEvery, log: log, m: m, want: map[topicPartition]int64{}}
}

// committed records that a task committed its partition at offset.
func (p *purger) committed(topic string, partition int, offset int64) {
	p.mu.Lock()
	p.want[topicPartition{topic, partition}] = offset
	p.mu.Unlock()
}

// done forgets a purge to offset unless the partition was committed again since.
func (p *purger) done(tp topicPartition, offset int64) {
	p.mu.Lock()
	if p.want[tp] == offset {
		delete(p.want, tp)
	}
	p.mu.Unlock()
}

// run purges every period until ctx ends. A failed purge is counted, logged when
// purging starts and stops failing (not every period), and tried again next period: a
// topic purged late only holds more records for a while.
func (p *purger) run(ctx context.Context) {
	tick := time.NewTicker(p.every)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// A purge under way when the replica stops finishes (within the client's
		// timeout), so that what the brokers deleted is counted.
		err := p.purge(context.WithoutCancel(ctx))
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil:
			p.m.purgeFailures.Inc()
			if !failing {
				p.log.Warn("purging the internal topics below the tasks' commits failed; trying again every period (logged again when it works)", "every", p.every, "err", err)
			}
			failing = true
		case failing:
			p.log.Info("purging the internal topics works again")
			failing = false
		}
	}
}

// purge deletes the records of each partition committed since the last purge below its
// commit.
func (p *purger) purge(ctx context.Context) error {
	p.mu.Lock()
	want := maps.Clone(p.want)
	p.mu.Unlock()
	if len(want) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, p.client.Timeout)
	defer cancel()
	// The low watermarks before: what a purge deletes is counted from them, and a
	// partition whose log already starts at its commit (its new owner purged it) needs
	// no request.
	starts, err := p.starts(ctx, want)
	if err != nil {
		return err
	}
	// The brokers wait up to TimeoutMs for the followers to move their first offsets
	// too: half the time, so that their answer comes within ours.
	req := &deleteRecordsRequest{TimeoutMs: int32(p.client.Timeout.Milliseconds() / 2)}
	for _, tp := range slices.SortedFunc(maps.Keys(want), compareTopicPartitions) {
		if starts[tp] >= want[tp] {
			p.done(tp, want[tp])
			continue
		}
		if n := len(req.Topics); n == 0 || req.Topics[n-1].Name != tp.topic {
			req.Topics = append(req.Topics, deleteRecordsTopic{Name: tp.topic})
		}
		t := &req.Topics[len(req.Topics)-1]
		t.Partitions = append(t.Partitions, deleteRecordsPartition{Partition: int32(tp.partition), Offset: want[tp]})
	}
	if len(req.Topics) == 0 {
		return nil
	}
	resp, err := p.client.Transport.RoundTrip(ctx, p.client.Addr, req)
	if err != nil {
		return fmt.Errorf("cluster: delete the internal records below the commits: %w", err)
	}
	var errs []error
	for _, t := range resp.(*deleteRecordsResponse).Topics {
		for _, rp := range t.Partitions {
			tp := topicPartition{t.Name, int(rp.Partition)}
			off, ok := want[tp]
			switch {
			case !ok:
				continue // not asked for: a broker's answer to another request
			case rp.err != nil:
				errs = append(errs, fmt.Errorf("cluster: delete the records of %s/%d below %d: %w", tp.topic, tp.partition, off, rp.err))
				continue
			case rp.ErrorCode != 0:
				errs = append(errs, fmt.Errorf("cluster: delete the records of %s/%d below %d: %w", tp.topic, tp.partition, off, kafkago.Error(rp.ErrorCode)))
				continue
			}
			p.m.purged.WithLabelValues(tp.topic).Add(float64(max(rp.LowWatermark-starts[tp], 0)))
			p.done(tp, off)
		}
	}
	return errors.Join(errs...)
}

// starts returns the low watermark (the first offset) of each partition of want.
func (p *purger) starts(ctx context.Context, want map[topicPartition]int64) (map[topicPartition]int64, error) {
	req := &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{}}
	for tp := range want {
		req.Topics[tp.topic] = append(req.Topics[tp.topic], kafkago.FirstOffsetOf(tp.partition))
	}
	resp, err := p.client.ListOffsets(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("cluster: list the internal partitions' first offsets: %w", err)
	}
	out := make(map[topicPartition]int64, len(want))
	var errs []error
	for topic, ps := range resp.Topics {
		for _, po := range ps {
			if po.Error != nil {
				errs = append(errs, fmt.Errorf("cluster: the first offset of %s/%d: %w", topic, po.Partition, po.Error))
				continue
			}
			out[topicPartition{topic, po.Partition}] = po.FirstOffset
		}
	}
	for tp := range want {
		if _, ok := out[tp]; !ok && len(errs) == 0 {
			errs = append(errs, fmt.Errorf("cluster: the broker returned no first offset for %s/%d", tp.topic, tp.partition))
		}
	}
	return out, errors.Join(errs...)
}

func compareTopicPartitions(a, b topicPartition) int {
	return cmp.Or(strings.Compare(a.topic, b.topic), cmp.Compare(a.partition, b.partition))
}

// The DeleteRecords request (API key 21), which kafka-go does not define: described with
// its protocol tags and registered, it goes through the replica's kafka-go Transport like
// any other request, with the TLS and SASL settings the rest of the cluster's clients
// use. Versions 0 and 1 are the same; 2 is the flexible encoding.
func init() {
	protocol.Register(&deleteRecordsRequest{}, &deleteRecordsResponse{})
}

type deleteRecordsRequest struct {
	// A tagged field marks version 2 as flexible.
	_         struct{}             `kafka:"min=v2,max=v2,tag"`
	Topics    []deleteRecordsTopic `kafka:"min=v0,max=v2"`
	TimeoutMs int32                `kafka:"min=v0,max=v2"`
}

type deleteRecordsTopic struct {
	Name       string                   `kafka:"min=v0,max=v2"`
	Partitions []deleteRecordsPartition `kafka:"min=v0,max=v2"`
}

type deleteRecordsPartition struct {
	Partition int32 `kafka:"min=v0,max=v2"`
	Offset    int64 `kafka:"min=v0,max=v2"` // records below it are deleted
}

func (r *deleteRecordsRequest) ApiKey() protocol.ApiKey { return protocol.DeleteRecords }

// Split sends the partitions of each leader to that leader (Transport.RoundTrip routes a
// request by its Broker): only a partition's leader deletes its records.
func (r *deleteRecordsRequest) Split(cluster protocol.Cluster) ([]protocol.Message, protocol.Merger, error) {
	byLeader := map[int32]*deleteRecordsRequest{}
	var leaders []int32
	for _, t := range r.Topics {
		for _, p := range t.Partitions {
			leader := int32(-1) // unknown to the transport's metadata: any broker answers, with an error
			if pm, ok := cluster.Topics[t.Name].Partitions[p.Partition]; ok {
				leader = pm.Leader
			}
			req := byLeader[leader]
			if req == nil {
				req = &deleteRecordsRequest{TimeoutMs: r.TimeoutMs}
				byLeader[leader] = req
				leaders = append(leaders, leader)
			}
			if n := len(req.Topics); n == 0 || req.Topics[n-1].Name != t.Name {
				req.Topics = append(req.Topics, deleteRecordsTopic{Name: t.Name})
			}
			rt := &req.Topics[len(req.Topics)-1]
			rt.Partitions = append(rt.Partitions, p)
		}
	}
	msgs := make([]protocol.Message, len(leaders))
	for i, l := range leaders {
		msgs[i] = byLeader[l]
	}
	return msgs, new(deleteRecordsResponse), nil
}

// Broker is the leader of the request's first partition: Split gives each request the
// partitions of one leader.
func (r *deleteRecordsRequest) Broker(cluster protocol.Cluster) (protocol.Broker, error) {
	t := r.Topics[0]
	if pm, ok := cluster.Topics[t.Name].Partitions[t.Partitions[0].Partition]; ok {
		if b, ok := cluster.Brokers[pm.Leader]; ok {
			return b, nil
		}
	}
	return protocol.Broker{ID: -1}, nil
}

type deleteRecordsResponse struct {
	_              struct{}                     `kafka:"min=v2,max=v2,tag"`
	ThrottleTimeMs int32                        `kafka:"min=v0,max=v2"`
	Topics         []deleteRecordsResponseTopic `kafka:"min=v0,max=v2"`
}

type deleteRecordsResponseTopic struct {
	Name       string                           `kafka:"min=v0,max=v2"`
	Partitions []deleteRecordsResponsePartition `kafka:"min=v0,max=v2"`
}

type deleteRecordsResponsePartition struct {
	Partition    int32 `kafka:"min=v0,max=v2"`
	LowWatermark int64 `kafka:"min=v0,max=v2"` // the partition's first offset after the deletion
	ErrorCode    int16 `kafka:"min=v0,max=v2"`
	err          error // the request to its leader failed (not on the wire)
}

func (r *deleteRecordsResponse) ApiKey() protocol.ApiKey { return protocol.DeleteRecords }

// Merge joins the leaders' answers; the partitions of a leader that did not answer
// carry its error.
func (r *deleteRecordsResponse) Merge(reqs []protocol.Message, results []any) (protocol.Message, error) {
	out := &deleteRecordsResponse{}
	for i, res := range results {
		m, err := protocol.Result(res)
		if err == nil {
			resp := m.(*deleteRecordsResponse)
			out.ThrottleTimeMs = max(out.ThrottleTimeMs, resp.ThrottleTimeMs)
			out.Topics = append(out.Topics, resp.Topics...)
			continue
		}
		for _, t := range reqs[i].(*deleteRecordsRequest).Topics {
			rt := deleteRecordsResponseTopic{Name: t.Name}
			for _, p := range t.Partitions {
				rt.Partitions = append(rt.Partitions, deleteRecordsResponsePartition{Partition: p.Partition, err: err})
			}
			out.Topics = append(out.Topics, rt)
		}
	}
	return out, nil
}

var (
	_ protocol.Splitter      = (*deleteRecordsRequest)(nil)
	_ protocol.BrokerMessage = (*deleteRecordsRequest)(nil)
	_ protocol.Merger        = (*deleteRecordsResponse)(nil)
)
