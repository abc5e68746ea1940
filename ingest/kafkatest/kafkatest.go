// Package kafkatest runs a real Kafka-protocol broker inside the test process, so tests of
// gatewatch's Kafka source, dead-letter writer and replay need no external Kafka.
//
// The broker is github.com/twmb/franz-go/pkg/kfake listening on 127.0.0.1 on a random
// port; it speaks the wire protocol to any client (kafka-go, kcat/librdkafka). Each
// cluster is closed by t.Cleanup. The helpers around it (Produce, ReadAll, Committed,
// WaitGroup) use github.com/segmentio/kafka-go, the client gatewatch itself uses, and
// fail the test on error, always within a deadline.
package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// DefaultPartitions is how many partitions Start gives each topic unless told otherwise.
const DefaultPartitions = 4

// helperTimeout bounds every helper call, so a broken broker fails a test instead of hanging it.
const helperTimeout = 30 * time.Second

// Options configures Start. The zero value starts one broker with no topics.
type Options struct {
	Topics     []string    // created at start
	Partitions int32       // per topic; 0: DefaultPartitions
	Brokers    int         // 0: 1
	Kfake      []kfake.Opt // more broker options (kfake.TLS, kfake.EnableSASL, kfake.Superuser, ...)

	// Dialer and Transport are what the helpers connect with, for a cluster that needs
	// TLS or SASL; nil: plain TCP.
	Dialer    *kafka.Dialer
	Transport *kafka.Transport
}

// A Cluster is a running in-process broker.
type Cluster struct {
	Addrs []string       // host:port of each broker, on 127.0.0.1
	Fake  *kfake.Cluster // for ControlKey and the other fault injections

	dialer    *kafka.Dialer
	transport *kafka.Transport
}

// StartKafka starts one broker with each topic seeded with DefaultPartitions partitions
// and returns it; t.Cleanup closes it.
func StartKafka(t testing.TB, topics ...string) *Cluster {
	t.Helper()
	return Start(t, Options{Topics: topics})
}

// Start starts a cluster as o says; t.Cleanup closes it.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	parts := o.Partitions
	if parts <= 0 {
		parts = DefaultPartitions
	}
	brokers := o.Brokers
	if brokers <= 0 {
		brokers = 1
	}
	opts := []kfake.Opt{kfake.NumBrokers(brokers)}
	if len(o.Topics) > 0 {
		opts = append(opts, kfake.SeedTopics(parts, o.Topics...))
	}
	opts = append(opts, o.Kfake...)
	fake, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("kafkatest: start kfake: %v", err)
	}
	t.Cleanup(fake.Close)
	c := &Cluster{Addrs: fake.ListenAddrs(), Fake: fake, dialer: o.Dialer, transport: o.Transport}
	if c.dialer == nil {
		c.dialer = &kafka.Dialer{Timeout: helperTimeout, DualStack: true}
	}
	if c.transport == nil {
		c.transport = &kafka.Transport{}
	}
	return c
}

// Produce writes msgs to topic and returns once every broker replica has them
// (acks=all). Messages without a Key are spread round robin over the partitions; with
// a Key they go to the partition the key hashes to.
func (c *Cluster) Produce(t testing.TB, topic string, msgs ...kafka.Message) {
	t.Helper()
	c.produce(t, topic, &produceBalancer{}, msgs)
}

// ProduceTo writes msgs to one partition of topic, as Produce does.
func (c *Cluster) ProduceTo(t testing.TB, topic string, partition int, msgs ...kafka.Message) {
	t.Helper()
	c.produce(t, topic, kafka.BalancerFunc(func(kafka.Message, ...int) int { return partition }), msgs)
}

func (c *Cluster) produce(t testing.TB, topic string, b kafka.Balancer, msgs []kafka.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	w := &kafka.Writer{
		Addr:         kafka.TCP(c.Addrs...),
		Topic:        topic,
		Balancer:     b,
		RequiredAcks: kafka.RequireAll,
		BatchSize:    1000,
		BatchBytes:   1_000_000, // below the broker's default message.max.bytes
		BatchTimeout: time.Millisecond,
		Transport:    c.transport,
	}
	defer w.Close()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		var werrs kafka.WriteErrors
		if errors.As(err, &werrs) {
			for _, e := range werrs {
				if e != nil {
					err = fmt.Errorf("%d of %d failed, the first with: %w", werrs.Count(), len(werrs), e)
					break
				}
			}
		}
		t.Fatalf("kafkatest: produce %d messages to %s: %v", len(msgs), topic, err)
	}
}

// produceBalancer hashes keyed messages and spreads the others round robin.
type produceBalancer struct {
	hash kafka.Hash
	rr   kafka.RoundRobin
}

func (b *produceBalancer) Balance(msg kafka.Message, partitions ...int) int {
	if len(msg.Key) > 0 {
		return b.hash.Balance(msg, partitions...)
	}
	return b.rr.Balance(msg, partitions...)
}

// Partitions returns the partition ids of topic, sorted.
func (c *Cluster) Partitions(t testing.TB, topic string) []int {
	t.Helper()
	tm, ok := c.metadata(t, topic)
	if !ok {
		t.Fatalf("kafkatest: topic %s does not exist", topic)
	}
	if tm.Error != nil {
		t.Fatalf("kafkatest: metadata of %s: %v", topic, tm.Error)
	}
	ids := make([]int, 0, len(tm.Partitions))
	for _, p := range tm.Partitions {
		ids = append(ids, p.ID)
	}
	slices.Sort(ids)
	return ids
}

// HasTopic reports whether topic exists: a topic that a process under test creates may
// not yet when a test first looks for it.
func (c *Cluster) HasTopic(t testing.TB, topic string) bool {
	t.Helper()
	tm, ok := c.metadata(t, topic)
	return ok && tm.Error == nil
}

// metadata returns what the broker says of topic; ok is false when it says nothing.
func (c *Cluster) metadata(t testing.TB, topic string) (tm kafka.Topic, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	resp, err := c.client().Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatalf("kafkatest: metadata of %s: %v", topic, err)
	}
	for _, tm := range resp.Topics {
		if tm.Name == topic {
			return tm, true
		}
	}
	return tm, false
}

// EndOffsets returns the high watermark of each partition of topic: the offset the next
// record produced to it will get.
func (c *Cluster) EndOffsets(t testing.TB, topic string) map[int]int64 {
	t.Helper()
	return c.offsets(t, topic, kafka.LastOffset)
}

// StartOffsets returns the low watermark of each partition of topic: the offset of its
// first record kept (0 until records are deleted).
func (c *Cluster) StartOffsets(t testing.TB, topic string) map[int]int64 {
	t.Helper()
	return c.offsets(t, topic, kafka.FirstOffset)
}

// offsets lists the first (kafka.FirstOffset) or end (kafka.LastOffset) offset of each
// partition of topic.
func (c *Cluster) offsets(t testing.TB, topic string, which int64) map[int]int64 {
	t.Helper()
	parts := c.Partitions(t, topic)
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	reqs := make([]kafka.OffsetRequest, 0, len(parts))
	for _, p := range parts {
		reqs = append(reqs, kafka.OffsetRequest{Partition: p, Timestamp: which})
	}
	resp, err := c.client().ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatalf("kafkatest: list offsets of %s: %v", topic, err)
	}
	out := make(map[int]int64, len(parts))
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("kafkatest: list offsets of %s/%d: %v", topic, po.Partition, po.Error)
		}
		if which == kafka.FirstOffset {
			out[po.Partition] = po.FirstOffset
		} else {
			out[po.Partition] = po.LastOffset
		}
	}
	return out
}

// ReadAll returns every record of topic kept below the high watermarks at the time of
// the call, partition by partition in offset order, without joining a consumer group.
func (c *Cluster) ReadAll(t testing.TB, topic string) []kafka.Message {
	t.Helper()
	start, end := c.StartOffsets(t, topic), c.EndOffsets(t, topic)
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	var all []kafka.Message
	for _, p := range c.Partitions(t, topic) {
		if end[p] <= start[p] {
			continue // no record, or every one deleted
		}
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers:   c.Addrs,
			Topic:     topic,
			Partition: p,
			Dialer:    c.dialer,
			MaxWait:   500 * time.Millisecond,
		})
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				r.Close()
				t.Fatalf("kafkatest: read %s/%d: %v", topic, p, err)
			}
			all = append(all, m)
			if m.Offset >= end[p]-1 {
				break
			}
		}
		r.Close()
	}
	return all
}

// Committed returns the offsets group has committed for topic, by partition; a
// partition without a committed offset is absent.
func (c *Cluster) Committed(t testing.TB, group, topic string) map[int]int64 {
	t.Helper()
	parts := c.Partitions(t, topic)
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	resp, err := c.client().OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err == nil {
		err = resp.Error
	}
	if errors.Is(err, kafka.GroupIdNotFound) {
		return map[int]int64{} // the group never committed
	}
	if err != nil {
		t.Fatalf("kafkatest: fetch offsets of group %s: %v", group, err)
	}
	got := make(map[int]int64)
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			t.Fatalf("kafkatest: fetch offset of group %s on %s/%d: %v", group, topic, p.Partition, p.Error)
		}
		if p.CommittedOffset >= 0 {
			got[p.Partition] = p.CommittedOffset
		}
	}
	return got
}

// WaitGroup waits until group is stable with exactly members members, each of them
// assigned at least one partition, and returns each member's partitions of topic by
// member id. It polls the broker; the test fails if that does not happen in time.
func (c *Cluster) WaitGroup(t testing.TB, group, topic string, members int) map[string][]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		got, state, err := c.describeGroup(ctx, group, topic)
		switch {
		case err != nil:
			last = err.Error()
		case state == "Stable" && len(got) == members && allAssigned(got):
			return got
		default:
			last = fmt.Sprintf("state %s with %d members: %v", state, len(got), got)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kafkatest: group %s did not become stable with %d members: last seen %s", group, members, last)
		case <-tick.C:
		}
	}
}

func allAssigned(m map[string][]int) bool {
	for _, ps := range m {
		if len(ps) == 0 {
			return false
		}
	}
	return true
}

func (c *Cluster) describeGroup(ctx context.Context, group, topic string) (map[string][]int, string, error) {
	resp, err := c.client().DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return nil, "", err
	}
	if len(resp.Groups) != 1 {
		return nil, "", errors.New("no such group")
	}
	g := resp.Groups[0]
	if g.Error != nil {
		return nil, "", g.Error
	}
	got := make(map[string][]int, len(g.Members))
	for _, m := range g.Members {
		var ps []int
		for _, tp := range m.MemberAssignments.Topics {
			if tp.Topic == topic {
				ps = append(ps, tp.Partitions...)
			}
		}
		slices.Sort(ps)
		got[m.MemberID] = ps
	}
	return got, g.GroupState, nil
}

func (c *Cluster) client() *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(c.Addrs...), Timeout: helperTimeout, Transport: c.transport}
}

// Require returns the path of an external program a test checks against (kcat, say).
// When it is not installed the test is skipped, except in CI (CI set in the
// environment), where every test runs and a missing program is a failure.
func Require(t testing.TB, program string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	switch {
	case err != nil && os.Getenv("CI") != "":
		t.Fatalf("CI runs every test: %s is required: %v", program, err)
	case err != nil:
		t.Skipf("%s not installed: %v", program, err)
	}
	return path
}
