package kafka

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/internal/config"
	"github.com/gatewatch/gatewatch/internal/promtest"
	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestSourceConsumesAndCommits: every record produced arrives once, and once every batch
// is acknowledged the group's committed offsets are the ends of the partitions.
func TestSourceConsumesAndCommits(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf")
	want := records("r", 300)
	c.Produce(t, "waf", want...)
	ctx := testContext(t)

	reg := prometheus.NewPedanticRegistry()
	o := testOptions(&memDeadLetters{})
	o.Registerer = reg
	s := newSource(t, testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"}), o)
	got := consume(ctx, t, s, len(want), true)
	sameSet(t, "consumed", got, values(want))
	wantCommitted(t, c, "g", "waf", c.EndOffsets(t, "waf"))

	if n := promtest.Value(t, reg, "gatewatch_ingest_records_total", "source", "waf"); n != 300 {
		t.Errorf("records counted = %v, want 300", n)
	}
	if n := promtest.Value(t, reg, "gatewatch_ingest_events_total", "source", "waf"); n != 300 {
		t.Errorf("events counted = %v, want 300", n)
	}
}

// TestSourceRestartResumesFromCommitted: a source that acknowledged some batches and held
// others stops; the next member of the group gets exactly what was not acknowledged,
// the held batches included, and nothing that was.
func TestSourceRestartResumesFromCommitted(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf")
	all := values(records("r", 400))
	c.Produce(t, "waf", records("r", 400)...)
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})

	s1 := newSource(t, cfg, testOptions(&memDeadLetters{}))
	var acked, held []string
	for len(acked) < 200 {
		b := next(ctx, t, s1)
		if err := b.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		acked = append(acked, ids(b)...)
	}
	for range 2 {
		held = append(held, ids(next(ctx, t, s1))...) // never acknowledged
	}
	if err := s1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s2 := newSource(t, cfg, testOptions(&memDeadLetters{}))
	rest := consume(ctx, t, s2, len(all)-len(acked), true)
	sameSet(t, "after restart", rest, without(all, acked))
	for _, h := range held {
		if !slices.Contains(rest, h) {
			t.Fatalf("record %s of a batch never acknowledged was not delivered again", h)
		}
	}
	wantNoMore(t, s2)
	wantCommitted(t, c, "g", "waf", c.EndOffsets(t, "waf"))
}

// TestSourceOutOfOrderAcks: acknowledging a later batch commits nothing until the earlier
// ones of its partition are acknowledged too; then the whole prefix commits.
func TestSourceOutOfOrderAcks(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf"}, Partitions: 1})
	c.Produce(t, "waf", records("r", 30)...)
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	cfg.BatchSize = 10
	cfg.BatchWait = 5 * time.Second // all 30 are there: batches are full
	s := newSource(t, cfg, testOptions(&memDeadLetters{}))

	b := [3]*ingest.Batch{next(ctx, t, s), next(ctx, t, s), next(ctx, t, s)}
	for i, bb := range b {
		if got, want := ids(bb), values(records("r", 30)[10*i:10*i+10]); !slices.Equal(got, want) {
			t.Fatalf("batch %d = %v, want %v", i, got, want)
		}
	}
	steps := []struct {
		ack  int
		want map[int]int64
	}{
		{2, map[int]int64{}},      // offsets 20-29 done, 0-19 not: nothing
		{0, map[int]int64{0: 10}}, // 0-9 done: commit 10
		{0, map[int]int64{0: 10}}, // a second Ack changes nothing
		{1, map[int]int64{0: 30}}, // 10-19 done: 0-29 all done
	}
	for _, st := range steps {
		if err := b[st.ack].Ack(ctx); err != nil {
			t.Fatalf("Ack of batch %d: %v", st.ack, err)
		}
		wantCommitted(t, c, "g", "waf", st.want)
	}
}

// TestSourceGroupSplitAndTakeover: two members split the partitions; when one leaves
// holding a batch it never acknowledged, the other takes every partition over and
// consumes everything: nothing is lost, nothing it or the first member acknowledged
// arrives again, and the batch that was never acknowledged does.
func TestSourceGroupSplitAndTakeover(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf")
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	s := [2]*Source{newSource(t, cfg, testOptions(&memDeadLetters{})), newSource(t, cfg, testOptions(&memDeadLetters{}))}

	type delivery struct {
		member int
		b      *ingest.Batch
	}
	out := make(chan delivery)
	var stop [2]context.CancelFunc
	var stopped [2]chan struct{}
	for i, src := range s {
		mctx, cancel := context.WithCancel(ctx)
		stop[i], stopped[i] = cancel, make(chan struct{})
		go func() {
			defer close(stopped[i])
			for {
				b, err := src.Next(mctx)
				if err != nil {
					return // closed, or the test is over
				}
				select {
				case out <- delivery{i, b}:
				case <-mctx.Done():
					return
				}
			}
		}()
	}
	t.Cleanup(func() {
		for i := range stop {
			stop[i]()
			<-stopped[i]
		}
	})
	parts := c.WaitGroup(t, "g", "waf", 2)
	for m, ps := range parts {
		if len(ps) != 2 {
			t.Fatalf("member %s got partitions %v, want 2 of 4: %v", m, ps, parts)
		}
	}

	// Phase 1: both members consume their half and acknowledge everything.
	phase1 := values(records("a", 200))
	c.Produce(t, "waf", records("a", 200)...)
	var got [2][]string
	for n := 0; n < len(phase1); {
		d := recv(ctx, t, out)
		if err := d.b.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		got[d.member] = append(got[d.member], ids(d.b)...)
		n += len(d.b.Events)
	}
	sameSet(t, "phase 1", append(slices.Clone(got[0]), got[1]...), phase1)
	if len(got[0]) == 0 || len(got[1]) == 0 {
		t.Fatalf("one member got nothing: %d and %d records", len(got[0]), len(got[1]))
	}

	// Phase 2: member 0 takes one batch, never acknowledges it and leaves; member 1
	// acknowledges everything and ends up with every partition.
	phase2 := values(records("b", 200))
	c.Produce(t, "waf", records("b", 200)...)
	acked := slices.Clone(got[0]) // what member 0 acknowledged
	var unacked, second []string
	closed := false
	for !covers(append(slices.Clone(acked), second...), phase2) {
		d := recv(ctx, t, out)
		if d.member == 0 {
			unacked = append(unacked, ids(d.b)...)
			if !closed {
				closed = true
				if err := s[0].Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
			}
			continue
		}
		if err := d.b.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		second = append(second, ids(d.b)...)
	}
	if len(unacked) == 0 {
		t.Fatal("member 0 got no batch in phase 2")
	}
	for _, r := range second {
		if slices.Contains(acked, r) {
			t.Fatalf("record %s, acknowledged by member 0, was delivered again to member 1", r)
		}
	}
	for _, r := range unacked {
		if !slices.Contains(second, r) {
			t.Fatalf("record %s, never acknowledged by member 0, did not reach member 1", r)
		}
	}
	member1 := append(slices.Clone(got[1]), second...)
	sameSet(t, "member 1", member1, slices.Concat(without(phase1, got[0]), without(phase2, acked)))

	// Member 1 commits every partition. Its Next, with nothing left to hand out, lets
	// the partitions it kept confirm their ownership in the new generation.
	stop[1]()
	<-stopped[1]
	end := c.EndOffsets(t, "waf")
	wait, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for !equalOffsets(c.Committed(t, "g", "waf"), end) {
		if wait.Err() != nil {
			t.Fatalf("committed %v, want %v", c.Committed(t, "g", "waf"), end)
		}
		short, cancel := context.WithTimeout(wait, 200*time.Millisecond)
		b, err := s[1].Next(short)
		cancel()
		if err == nil {
			t.Fatalf("member 1 got records %v after everything was consumed", ids(b))
		}
	}
}

// TestSourceTopicsWithOwnFormats: each topic's records go through the real parser of
// the topic's format (built by the source from ParserOptions): the events are exactly
// what that parser makes of the documented vendor samples, the records it rejects are
// dead letters, and each topic's offsets are committed.
func TestSourceTopicsWithOwnFormats(t *testing.T) {
	topics := []struct {
		ingest.TopicConfig
		file string
	}{
		{ingest.TopicConfig{Name: "waf", Format: ingest.FormatAWSWAF}, "weblog.log"},
		{ingest.TopicConfig{Name: "edge", Format: ingest.FormatNginx}, "combined.log"},
		{ingest.TopicConfig{Name: "gw", Format: ingest.FormatKong}, "file-log.log"},
	}
	c := kafkatest.StartKafka(t, "waf", "edge", "gw")
	ctx := testContext(t)
	popts := testParserOptions(t)
	var cfgTopics []ingest.TopicConfig
	var wantEvents []string
	wantRejects := 0
	for _, tc := range topics {
		recs := samples(t, tc.Format, tc.file)
		c.Produce(t, tc.Name, recs...)
		cfgTopics = append(cfgTopics, tc.TopicConfig)
		p, err := ingest.NewParser(tc.Format, popts)
		if err != nil {
			t.Fatal(err)
		}
		ok := 0
		for _, r := range recs {
			var ev ingest.Event
			if err := p.Parse(&ev, r.Value); err != nil {
				wantRejects++
				continue
			}
			ok++
			wantEvents = append(wantEvents, string(ev.AppendJSON(nil)))
		}
		if ok == 0 {
			t.Fatalf("the %s parser accepts none of its samples", tc.Format)
		}
	}

	dl := &memDeadLetters{}
	o := testOptions(dl)
	o.Parser, o.ParserOptions = nil, popts
	s := newSource(t, testConfig(c, "g", cfgTopics...), o)
	var got []string
	for len(got) < len(wantEvents) {
		b := next(ctx, t, s)
		for i := range b.Events {
			got = append(got, string(b.Events[i].AppendJSON(nil)))
		}
		if err := b.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	sameSet(t, "events of three topics in three formats", got, wantEvents)
	wantNoMore(t, s) // and lets rejects after the last event reach the sink
	formats := map[string]string{}
	for _, tc := range topics {
		formats[tc.Name] = tc.Format
	}
	letters := dl.all()
	for _, d := range letters {
		if d.Format != formats[d.Source] {
			t.Errorf("dead letter from %s has format %q, want %q", d.Source, d.Format, formats[d.Source])
		}
	}
	if len(letters) != wantRejects {
		t.Errorf("%d dead letters, want %d", len(letters), wantRejects)
	}
	for _, tc := range topics {
		wantCommitted(t, c, "g", tc.Name, c.EndOffsets(t, tc.Name))
	}
}

// TestSourceBatchOfOnlyDeadLetters: a batch whose records were all rejected is stored,
// counts as handled and commits without anybody acknowledging it.
func TestSourceBatchOfOnlyDeadLetters(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf"}, Partitions: 1})
	bad := records("bad", 20)
	c.Produce(t, "waf", append(bad, kafkago.Message{Value: []byte("good")})...)
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	cfg.BatchSize = 5
	cfg.BatchWait = 200 * time.Millisecond // all 21 records are there: batches of 5, then "good" alone
	dl := &memDeadLetters{}
	s := newSource(t, cfg, testOptions(dl))

	b := next(ctx, t, s)
	if got := ids(b); !slices.Equal(got, []string{"good"}) {
		t.Fatalf("events = %v, want [good]", got)
	}
	if got := len(dl.all()); got != 20 {
		t.Fatalf("%d dead letters stored before the batch was handed out, want 20", got)
	}
	wantCommitted(t, c, "g", "waf", map[int]int64{0: 20}) // the four batches of dead letters
	if err := b.Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	wantCommitted(t, c, "g", "waf", map[int]int64{0: 21})
}

// TestSourceBoundsBatchBytes: large records end a batch before batch_size, so that the
// batches in flight do not hold a gigabyte each (1,000 records near Kafka's message
// cap); every record still comes, in order.
func TestSourceBoundsBatchBytes(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf"}, Partitions: 1})
	const n, size = 300, 60 << 10 // under lineParser's 64 KiB
	big := records("big", n)
	for i := range big {
		big[i].Value = append(big[i].Value, bytes.Repeat([]byte("x"), size)...)
	}
	for i := 0; i < n; i += 50 {
		c.Produce(t, "waf", big[i:i+50]...)
	}
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	cfg.BatchSize = 1000
	cfg.BatchWait = time.Second // every record is there: only a bound ends a batch early
	s := newSource(t, cfg, testOptions(&memDeadLetters{}))
	got, most := 0, 0
	for got < n {
		b := next(ctx, t, s)
		for _, id := range ids(b) {
			if want := fmt.Sprintf("big-%04d", got); !strings.HasPrefix(id, want) {
				t.Fatalf("record %d is %.12q, want %s...", got, id, want)
			}
			got++
		}
		most = max(most, len(b.Events))
		if err := b.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if limit := ingest.MaxBatchBytes/size + 1; most > limit {
		t.Errorf("a batch of %d records of %d bytes, want at most %d", most, size, limit)
	}
}

// TestSourceKeepsRepairedRecords: a repaired record is both an event, in its place, and a
// dead letter that keeps the raw record.
func TestSourceKeepsRepairedRecords(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf"}, Partitions: 1})
	c.Produce(t, "waf", kafkago.Message{Value: []byte("ok-1")}, kafkago.Message{Value: []byte("kept-2")}, kafkago.Message{Value: []byte("ok-3")})
	ctx := testContext(t)
	dl := &memDeadLetters{}
	s := newSource(t, testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "nginx"}), testOptions(dl))
	got := consume(ctx, t, s, 3, true)
	if !slices.Equal(got, []string{"ok-1", "kept-2", "ok-3"}) {
		t.Fatalf("events = %v, want all three in order", got)
	}
	letters := dl.all()
	if len(letters) != 1 || !letters[0].Kept || letters[0].Record != "kept-2" || letters[0].Reason != ingest.ReasonBadUTF8 || letters[0].Offset != 1 {
		t.Fatalf("dead letters = %+v, want the repaired record, kept", letters)
	}
	wantCommitted(t, c, "g", "waf", map[int]int64{0: 3})
}

// TestSourceDeadLetterSinkDown: when the sink fails, Next reports it and keeps the batch;
// the next call stores the dead letters and hands the batch out. Nothing is skipped or
// committed early.
func TestSourceDeadLetterSinkDown(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf"}, Partitions: 1})
	c.Produce(t, "waf", slices.Concat(records("bad", 5), records("ok", 5))...)
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	cfg.BatchWait = 5 * time.Second
	cfg.BatchSize = 10
	dl := &memDeadLetters{fail: 1}
	s := newSource(t, cfg, testOptions(dl))

	if b, err := s.Next(ctx); err == nil || !strings.Contains(err.Error(), "dead-letter sink down") {
		t.Fatalf("Next with the sink down = %v, %v; want the sink's error", b, err)
	}
	wantCommitted(t, c, "g", "waf", map[int]int64{})
	b := next(ctx, t, s)
	if got, want := ids(b), values(records("ok", 5)); !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	if got := dl.all(); len(got) != 5 || got[0].Record != "bad-0000" || got[0].Offset != 0 || got[4].Offset != 4 {
		t.Fatalf("dead letters = %+v, want bad-0000..bad-0004 at offsets 0..4", got)
	}
	if err := b.Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	wantCommitted(t, c, "g", "waf", map[int]int64{0: 10})
}

// TestSourceCommitFailure: a commit the broker rejects does not fail the Ack (a commit
// refused during a rebalance must not stop the engine); the batch still counts as done,
// and the next Ack commits past it.
func TestSourceCommitFailure(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf"}, Partitions: 1})
	c.Produce(t, "waf", records("r", 20)...)
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	cfg.BatchSize = 10
	cfg.BatchWait = 5 * time.Second
	s := newSource(t, cfg, testOptions(&memDeadLetters{}))
	b1, b2 := next(ctx, t, s), next(ctx, t, s)

	// The coordinator rejects the first commit, as it does while the group rebalances:
	// the Ack still succeeds (the engine goes on), nothing is committed, and the next
	// acknowledgement commits both batches.
	var rejected atomic.Int32
	c.Fake.ControlKey(int16(kmsg.OffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		rejected.Add(1)
		return rejectCommit(req.(*kmsg.OffsetCommitRequest), kerr.RebalanceInProgress), nil, true
	})
	if err := b1.Ack(ctx); err != nil {
		t.Fatalf("Ack with the coordinator rejecting the commit = %v, want nil: a failed commit is tried again", err)
	}
	if rejected.Load() != 1 {
		t.Fatalf("%d commits rejected, want 1", rejected.Load())
	}
	wantCommitted(t, c, "g", "waf", map[int]int64{})
	if err := b2.Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	wantCommitted(t, c, "g", "waf", map[int]int64{0: 20})
}

// rejectCommit answers req with code for every partition.
func rejectCommit(req *kmsg.OffsetCommitRequest, code *kerr.Error) *kmsg.OffsetCommitResponse {
	resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
	for _, rt := range req.Topics {
		st := kmsg.NewOffsetCommitResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewOffsetCommitResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = code.Code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// TestSourceRebalanceKeepsPartitions: in a rebalance in which the member keeps its
// partitions, its readers go on after the records already taken (not from the group's
// committed offsets), batches held across the rebalance still commit when acknowledged,
// and no record arrives twice.
func TestSourceRebalanceKeepsPartitions(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf")
	first := values(records("a", 200))
	c.Produce(t, "waf", records("a", 200)...)
	ctx := testContext(t)
	s := newSource(t, testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"}), testOptions(&memDeadLetters{}))

	// Acknowledge about half, hold the rest.
	var got []string
	var held []*ingest.Batch
	for len(got) < len(first) {
		b := next(ctx, t, s)
		got = append(got, ids(b)...)
		if len(got) <= len(first)/2 {
			if err := b.Ack(ctx); err != nil {
				t.Fatalf("Ack: %v", err)
			}
		} else {
			held = append(held, b)
		}
	}

	// The coordinator tells the member to rejoin; wait until it does.
	failed, rejoined := make(chan struct{}), make(chan struct{})
	c.Fake.ControlKey(int16(kmsg.Heartbeat), func(req kmsg.Request) (kmsg.Response, error, bool) {
		resp := req.(*kmsg.HeartbeatRequest).ResponseKind().(*kmsg.HeartbeatResponse)
		resp.ErrorCode = kerr.RebalanceInProgress.Code
		close(failed)
		return resp, nil, true
	})
	c.Fake.ControlKey(int16(kmsg.JoinGroup), func(kmsg.Request) (kmsg.Response, error, bool) {
		select {
		case <-failed:
			close(rejoined)
		default:
			c.Fake.KeepControl() // a join before the failed heartbeat is not the one we wait for
		}
		return nil, nil, false
	})
	select {
	case <-rejoined:
	case <-ctx.Done():
		t.Fatal("the member did not rejoin after the coordinator asked it to")
	}

	second := values(records("b", 100))
	c.Produce(t, "waf", records("b", 100)...)
	got = append(got, consume(ctx, t, s, len(second), true)...)
	sameSet(t, "across the rebalance", got, slices.Concat(first, second))
	s.mu.Lock()
	gens := s.genSeq
	s.mu.Unlock()
	if gens < 2 {
		t.Fatalf("the member joined %d generations, want a second one; the test did not test what it says", gens)
	}
	for _, b := range held {
		if err := b.Ack(ctx); err != nil {
			t.Fatalf("Ack of a batch held across the rebalance: %v", err)
		}
	}
	wantCommitted(t, c, "g", "waf", c.EndOffsets(t, "waf"))
}

// TestNewSourceRejects: NewSource reports a config or options it cannot work with.
func TestNewSourceRejects(t *testing.T) {
	good := func() (ingest.KafkaConfig, Options) {
		cfg := ingest.DefaultConfig().Kafka
		cfg.Brokers = []string{"127.0.0.1:9"}
		cfg.Topics = []ingest.TopicConfig{{Name: "waf", Format: "awswaf"}}
		return cfg, testOptions(&memDeadLetters{})
	}
	tests := []struct {
		name   string
		change func(*ingest.KafkaConfig, *Options)
		want   string
	}{
		{"no brokers", func(c *ingest.KafkaConfig, _ *Options) { c.Brokers = nil }, "no brokers"},
		{"no topics", func(c *ingest.KafkaConfig, _ *Options) { c.Topics = nil }, "no topics"},
		{"topic twice", func(c *ingest.KafkaConfig, _ *Options) { c.Topics = append(c.Topics, c.Topics[0]) }, "listed twice"},
		{"no dead letters", func(_ *ingest.KafkaConfig, o *Options) { o.DeadLetters = nil }, "DeadLetters is required"},
		{"no registerer", func(_ *ingest.KafkaConfig, o *Options) { o.Registerer = nil }, "Registerer is required"},
		{"bad start offset", func(c *ingest.KafkaConfig, _ *Options) { c.StartOffset = "middle" }, "start_offset"},
		{"unknown format", func(c *ingest.KafkaConfig, o *Options) {
			o.Parser, o.ParserOptions.Secret, c.Topics[0].Format = nil, ingest.RandomTokenSecret(), "syslog"
		}, "unknown format"},
		{"no token secret", func(_ *ingest.KafkaConfig, o *Options) { o.Parser = nil }, "token secret"},
		{"missing ca", func(c *ingest.KafkaConfig, _ *Options) { c.TLS.CAFile = "/nonexistent/ca.pem" }, "ca_file"},
		{"sasl without password", func(c *ingest.KafkaConfig, _ *Options) { c.SASL = config.SASL{Mechanism: "plain", Username: "u"} }, "password_file or password_env"},
		{"sasl password env unset", func(c *ingest.KafkaConfig, _ *Options) {
			c.SASL = config.SASL{Mechanism: "scram-sha-256", Username: "u", PasswordEnv: "GATEWATCH_TEST_UNSET_PASSWORD"}
		}, "GATEWATCH_TEST_UNSET_PASSWORD is not set"},
		{"sasl mechanism", func(c *ingest.KafkaConfig, _ *Options) {
			c.SASL = config.SASL{Mechanism: "gssapi", Username: "u", PasswordEnv: "HOME"}
		}, "gssapi"},
		{"min bytes above max", func(c *ingest.KafkaConfig, o *Options) { c.MaxBytes = 2048; o.MinBytes = 4096 }, "MinBytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, o := good()
			tt.change(&cfg, &o)
			_, err := NewSource(cfg, o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewSource(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
		})
	}
	cfg, o := good()
	if _, err := NewSource(cfg, o); err != nil {
		t.Fatalf("NewSource(good) = %v", err)
	}
}

// without returns the records of all not in drop.
func without(all, drop []string) []string {
	out := make([]string, 0, len(all))
	for _, r := range all {
		if !slices.Contains(drop, r) {
			out = append(out, r)
		}
	}
	return out
}

// covers reports whether got holds every record of want.
func covers(got, want []string) bool {
	for _, r := range want {
		if !slices.Contains(got, r) {
			return false
		}
	}
	return true
}

func equalOffsets(a, b map[int]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func recv[T any](ctx context.Context, t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-ctx.Done():
		var zero T
		t.Fatalf("nothing received: %v", ctx.Err())
		return zero
	}
}

// wantNoMore fails t if s hands out anything within a second: everything produced was
// consumed, so a batch now would be a record delivered twice.
func wantNoMore(t *testing.T, s *Source) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if b, err := s.Next(ctx); err == nil {
		t.Fatalf("records %v delivered again", ids(b))
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next = %v, want the deadline to pass", err)
	}
}

// TestSourceClose: Close ends a Next waiting for records, later calls return ErrClosed,
// and a batch acknowledged after Close is not committed (it will be delivered again).
func TestSourceClose(t *testing.T) {
	c := kafkatest.Start(t, kafkatest.Options{Topics: []string{"waf"}, Partitions: 1})
	c.Produce(t, "waf", records("r", 10)...)
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	cfg.BatchWait = time.Second
	s := newSource(t, cfg, testOptions(&memDeadLetters{}))
	b := next(ctx, t, s)

	waiting := make(chan error, 1)
	go func() {
		_, err := s.Next(ctx) // nothing more to fetch: waits
		waiting <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := recv(ctx, t, waiting); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next waiting during Close = %v, want ErrClosed", err)
	}
	if _, err := s.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close = %v, want ErrClosed", err)
	}
	if err := b.Ack(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ack after Close = %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	wantCommitted(t, c, "g", "waf", map[int]int64{})
}

// TestSourceMissingTopic: a topic that does not exist is reported by Next, by name,
// instead of leaving it waiting for a group kafka-go cannot join.
func TestSourceMissingTopic(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf")
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"}, ingest.TopicConfig{Name: "wfa", Format: "awswaf"})
	s := newSource(t, cfg, testOptions(&memDeadLetters{}))
	if _, err := s.Next(ctx); err == nil || !strings.Contains(err.Error(), "topic wfa does not exist") {
		t.Fatalf("Next with a missing topic = %v, want it named", err)
	}
}

// TestAddAllocatesNothing: taking a fetched record into a batch costs no allocation per
// record (the record's bytes are kafka-go's; the batch's slices are sized ahead).
func TestAddAllocatesNothing(t *testing.T) {
	cfg := ingest.DefaultConfig().Kafka
	cfg.Brokers = []string{"127.0.0.1:9"}
	cfg.Topics = []ingest.TopicConfig{{Name: "waf", Format: "awswaf"}}
	s, err := NewSource(cfg, testOptions(&memDeadLetters{}))
	if err != nil {
		t.Fatal(err)
	}
	const runs = 1000
	b := &batch{seq: 1, events: make([]ingest.Event, 0, runs+2)}
	p := newPartition(s.topics["waf"], 3, 1)
	p.owner.Store(1)
	f := fetched{p: p, gen: 1, msg: kafkago.Message{Topic: "waf", Partition: 3, Value: []byte("r")}}
	s.add(b, &f) // the partition's first record starts its run
	if n := testing.AllocsPerRun(runs, func() {
		f.msg.Offset++
		s.add(b, &f)
	}); n != 0 {
		t.Fatalf("add allocates %v times per record, want 0", n)
	}
}

// TestSourceReportsPartitions: batches say which partition each run of events came
// from, the first batch lists every partition assigned (before their events), and when
// a second member joins, the first one's next batch lists the partitions it lost.
func TestSourceReportsPartitions(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf")
	ctx := testContext(t)
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	c.Produce(t, "waf", records("a", 100)...)
	s1 := newSource(t, cfg, testOptions(&memDeadLetters{}))

	// Each record's partition, as the broker has it.
	partOf := map[string]int32{}
	for _, m := range c.ReadAll(t, "waf") {
		partOf[string(m.Value)] = int32(m.Partition)
	}
	var opened []ingest.Partition
	for n := 0; n < 100; {
		b := next(ctx, t, s1)
		if n == 0 {
			opened = b.Opened
		} else if len(b.Opened) > 0 {
			t.Errorf("batch after the first lists opened partitions %v", b.Opened)
		}
		i := 0
		for _, r := range b.Runs {
			if r.Partition.Source != "waf" {
				t.Errorf("run of %s, want topic waf", r.Partition)
			}
			for _, ev := range b.Events[i : i+r.N] {
				if partOf[ev.RequestID] != r.Partition.ID {
					t.Errorf("record %s of partition %d in a run of %s", ev.RequestID, partOf[ev.RequestID], r.Partition)
				}
			}
			i += r.N
		}
		if i != len(b.Events) {
			t.Fatalf("runs cover %d of %d events", i, len(b.Events))
		}
		n += len(b.Events)
		if err := b.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if want := kafkatest.DefaultPartitions; len(opened) != want {
		t.Fatalf("first batch opened %v, want all %d partitions", opened, want)
	}

	s2 := newSource(t, cfg, testOptions(&memDeadLetters{}))
	go func() { // s2 must ask for records to join the group
		for {
			b, err := s2.Next(ctx)
			if err != nil {
				return
			}
			b.Ack(ctx)
		}
	}()
	c.WaitGroup(t, "g", "waf", 2)
	var ended []ingest.Partition
	for len(ended) == 0 {
		c.Produce(t, "waf", records("b", 20)...)
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		b, err := s1.Next(short)
		cancel()
		if err != nil && ctx.Err() != nil {
			t.Fatal("member 1 never reported the partitions it lost")
		}
		if b != nil {
			ended = b.Ended
			b.Ack(ctx)
		}
	}
	if len(ended) != kafkatest.DefaultPartitions/2 {
		t.Errorf("member 1 lost %v, want half of the %d partitions", ended, kafkatest.DefaultPartitions)
	}
}

// TestSourceAlignsPartitionsByEventTime: through a backlog, the partitions advance
// together by event time, whatever pace their readers fetch at: no event is handed out
// after one more than alignSkew later. Records of a partition stamped an hour ahead of
// its later ones (a gateway's clock glitch) are taken in their place and do not count:
// without the records in hand after them, the second of them waited for every other
// partition to reach its time, and the partition's later records behind it.
func TestSourceAlignsPartitionsByEventTime(t *testing.T) {
	for _, glitch := range [][]int{nil, {800, 804, 808, 812, 816}} {
		t.Run(fmt.Sprintf("glitch %v", glitch), func(t *testing.T) {
			c := kafkatest.StartKafka(t, "waf")
			msgs := records("r", 2000) // round robin: each partition every 4th second, as logged
			for _, i := range glitch { // the same partition's, in a row
				msgs[i].Value = fmt.Appendf(nil, "glitch-%04d", i+3600)
			}
			c.Produce(t, "waf", msgs...)
			ctx := testContext(t)
			cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
			cfg.BatchSize = 100
			s := newSource(t, cfg, testOptions(&memDeadLetters{}))
			wantEventTimeOrder(ctx, t, s, len(msgs), func(ev *ingest.Event) bool { return strings.HasPrefix(ev.RequestID, "glitch") })
		})
	}
}

// TestSourceMergesABacklogByEventTime: a backlog whose Kafka timestamps say nothing of
// when its records happened (every record stamped at once when a shipper caught up, or
// the partitions shipped one after the other) is handed out in event time, whatever
// the partitions' record rates: no event comes after one more than alignSkew later.
// Partition 0 holds a burst, twelve times as many records a second as the others for
// twenty minutes; by Kafka timestamp (round robin on equal stamps) its events fell
// further behind the others with each record of the burst. A sticky partitioner (kcat's,
// librdkafka's) fills one partition for a while, then another, so each partition's
// stream has gaps of minutes where the others have the records; the first record after
// a gap was ordered right after the one before it, and the others' records of the gap
// came minutes behind it: more than max_skew, late for the engine.
func TestSourceMergesABacklogByEventTime(t *testing.T) {
	shipped := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name  string
		stamp func(partition int) time.Time
		// gap, when set, is how long after the first partition the others are
		// shipped, while the source reads, itself started before: more than alignWait
		// after the source started, within it after the first partition came.
		gap time.Duration
	}{
		{"stamped at once", func(int) time.Time { return shipped }, 0},
		{"partitions shipped one after the other", func(p int) time.Time { return shipped.Add(time.Duration(p) * time.Hour) }, 0},
		{"partitions shipped apart, while read", func(int) time.Time { return time.Time{} }, alignWait / 2},
		{"sticky partitioner", nil, 0}, // blocks stamped at once
	} {
		t.Run(c.name, func(t *testing.T) {
			k := kafkatest.StartKafka(t, "waf")
			parts := make([][]kafkago.Message, kafkatest.DefaultPartitions)
			var total int
			if c.stamp == nil {
				// Blocks of 20 s to 5 min of records (two a second) go to one
				// partition, then to another, as a sticky partitioner sends them.
				r := rand.New(rand.NewPCG(7, 7))
				for sec, p := 0, 0; sec < 3600; p = (p + 1 + r.IntN(len(parts)-1)) % len(parts) {
					for end := min(sec+20+r.IntN(280), 3600); sec < end; sec++ {
						for i := range 2 {
							parts[p] = append(parts[p], kafkago.Message{Value: fmt.Appendf(nil, "p%d.%d-%04d", p, i, sec), Time: shipped})
						}
					}
				}
				// Each partition ends at the same second, so that none that read its
				// all is waited for while the others finish (history: see TestEarliest).
				for p := range parts {
					parts[p] = append(parts[p], kafkago.Message{Value: fmt.Appendf(nil, "p%d.end-3600", p), Time: shipped})
				}
			}
			for p := range parts {
				for sec := p; c.stamp != nil && sec < 3600; sec += kafkatest.DefaultPartitions {
					n := 1
					if p == 0 && sec >= 600 && sec < 1800 {
						n = 12 // the burst
					}
					for i := range n {
						parts[p] = append(parts[p], kafkago.Message{Value: fmt.Appendf(nil, "p%d.%d-%04d", p, i, sec), Time: c.stamp(p)})
					}
				}
				total += len(parts[p])
			}
			ctx := testContext(t)
			cfg := testConfig(k, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
			cfg.BatchSize = 100
			s := newSource(t, cfg, testOptions(&memDeadLetters{}))
			if c.gap == 0 {
				for p, msgs := range parts {
					k.ProduceTo(t, "waf", p, msgs...)
				}
				wantEventTimeOrder(ctx, t, s, total, nil)
				return
			}
			type result struct {
				evs []ingest.Event
				err error
			}
			done := make(chan result, 1)
			go func() {
				evs, err := consumeEvents(ctx, s, total)
				done <- result{evs, err}
			}()
			// The source has its partitions and idles, with nothing to hold back.
			for deadline := time.Now().Add(testTimeout); ; time.Sleep(10 * time.Millisecond) {
				s.mu.Lock()
				n := len(s.active)
				s.mu.Unlock()
				if n == len(parts) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d partitions assigned", n, len(parts))
				}
			}
			time.Sleep(alignWait)
			k.ProduceTo(t, "waf", 0, parts[0]...)
			time.Sleep(c.gap)
			for p := 1; p < len(parts); p++ {
				k.ProduceTo(t, "waf", p, parts[p]...)
			}
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			checkEventTimeOrder(t, r.evs, nil)
		})
	}
}

// wantEventTimeOrder consumes n records of s, acknowledging each batch, and fails the
// test at the first event handed out after one more than alignSkew later, leaving out
// the events skip says (and from the events they are compared with).
func wantEventTimeOrder(ctx context.Context, t *testing.T, s *Source, n int, skip func(*ingest.Event) bool) {
	t.Helper()
	evs, err := consumeEvents(ctx, s, n)
	if err != nil {
		t.Fatal(err)
	}
	checkEventTimeOrder(t, evs, skip)
}

// consumeEvents consumes n records of s, acknowledging each batch, and returns their
// events; it may run on a goroutine of its own.
func consumeEvents(ctx context.Context, s *Source, n int) ([]ingest.Event, error) {
	var evs []ingest.Event
	for got := 0; got < n; {
		b, err := s.Next(ctx)
		if err != nil {
			return evs, fmt.Errorf("after %d of %d records: %w", got, n, err)
		}
		got += len(b.Events)
		evs = append(evs, b.Events...)
		if err := b.Ack(ctx); err != nil {
			return evs, err
		}
	}
	return evs, nil
}

// checkEventTimeOrder fails the test at the first of evs more than alignSkew older than
// one before it, leaving out the events skip says.
func checkEventTimeOrder(t *testing.T, evs []ingest.Event, skip func(*ingest.Event) bool) {
	t.Helper()
	var newest time.Time
	for i := range evs {
		ev := &evs[i]
		if skip != nil && skip(ev) {
			continue
		}
		if newest.Sub(ev.Time) > alignSkew {
			t.Fatalf("event %s of %s handed out after one of %s (%d of %d events)", ev.RequestID, ev.Time, newest, i+1, len(evs))
		}
		if ev.Time.After(newest) {
			newest = ev.Time
		}
	}
}

// TestEarliest: which partition's next record goes into the batch, from the event
// times of the records in hand and of the last ones taken, and from whether the broker
// holds more of an empty partition's records.
func TestEarliest(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	sec := func(n int) time.Time { return now.Add(time.Duration(n) * time.Second) }
	type part struct {
		head, last time.Time   // zero head: none in hand; zero last: none taken yet
		then       []time.Time // the records in hand after head
		onBroker   int64       // records after the last one taken (its lag)
		emptyFor   time.Duration
		passedOver uint64 // records of the others taken while its records in hand were far past last
	}
	// The time the record taken is ordered at, which becomes its partition's lastAt:
	// after a gap, its own; of a glitch, once waited for, right after the partition's
	// last; of a gateway clock ahead, now.
	orderedAt := map[string]time.Time{"gap": sec(-40), "glitch": sec(-42), "gateway clock ahead": now}
	for _, c := range []struct {
		name  string
		parts []part
		want  int // index of the partition taken, -1 for none
		hold  bool
	}{
		{"earliest event", []part{{head: sec(-5), last: sec(-6)}, {head: sec(-7), last: sec(-8)}}, 1, false},
		{"an empty partition close behind is not waited for",
			[]part{{head: sec(-5), last: sec(-6)}, {last: sec(-10), onBroker: 100}}, 0, false},
		{"an empty partition far behind, with records on the broker, is waited for",
			[]part{{head: sec(-5), last: sec(-6)}, {last: sec(-60), onBroker: 100}}, -1, true},
		{"for at most alignWait",
			[]part{{head: sec(-5), last: sec(-6)}, {last: sec(-60), onBroker: 100, emptyFor: alignWait}}, 0, false},
		// Its next record is not written yet: a shipper a minute behind, or a gateway
		// whose clock is, must not hold every other partition up.
		{"an empty partition far behind that read all its broker had is not waited for",
			[]part{{head: sec(-5), last: sec(-6)}, {last: sec(-60)}}, 0, false},
		// Unless the others' records are history: a backlog still being written,
		// partition after partition.
		{"in history, an empty partition far behind is waited for",
			[]part{{head: sec(-3600), last: sec(-3601)}, {last: sec(-3660)}}, -1, true},
		{"in history, for at most alignWait",
			[]part{{head: sec(-3600), last: sec(-3601)}, {last: sec(-3660), emptyFor: alignWait}}, 0, false},
		{"nothing in hand: nothing to hold back", []part{{last: sec(-60)}, {}}, -1, false},
		{"a partition that never delivered is waited for",
			[]part{{head: sec(-5), last: sec(-6)}, {}}, -1, true},
		// A partition's records after a gap in its stream wait for the others' records
		// of the gap (a sticky partitioner's blocks).
		{"gap", []part{{head: sec(-40), last: sec(-41)}, {head: sec(-20), then: []time.Time{sec(-19)}, last: sec(-100), onBroker: 100}}, 0, false},
		// One record stamped hours ahead of its partition waits as a gap's would, then
		// goes in about its place.
		{"glitch, waiting", []part{{head: sec(-40), last: sec(-41)}, {head: now.Add(5 * time.Hour), last: sec(-52)}}, 0, false},
		{"glitch", []part{{head: sec(-40), last: sec(-41)}, {head: now.Add(5 * time.Hour), last: sec(-52), passedOver: passOver}}, 1, false},
		// A gateway whose clock runs five minutes ahead: its records are ordered at
		// the wall clock, so the others, emptied, are not waited for.
		{"gateway clock ahead", []part{{last: sec(-1)}, {head: sec(300), last: sec(295)}}, 1, false},
		{"gateway clock ahead, behind the others' records", []part{{head: sec(-1), last: sec(-2)}, {head: sec(300), last: sec(295)}}, 0, false},
		// The second of several records stamped hours ahead, the partition's stream
		// among the records in hand after them: the partition goes at the stream's
		// time, not behind the others until they reach the glitch's.
		{"glitch of several records", []part{{head: sec(-40), last: sec(-41)},
			{head: now.Add(5 * time.Hour), then: []time.Time{now.Add(5 * time.Hour), sec(-45), sec(-44)}, last: now.Add(5 * time.Hour)}}, 1, false},
		{"records in hand all ahead", []part{{head: sec(-40), last: sec(-41)},
			{head: sec(-30), then: []time.Time{sec(-29), sec(-28)}, last: sec(-31)}}, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := &Source{}
			for i, pc := range c.parts {
				p := newPartition(&topic{name: "waf"}, i, 1)
				p.lastAt = pc.last
				if !pc.last.IsZero() {
					p.lag = pc.onBroker
				}
				if !pc.head.IsZero() {
					for _, at := range append([]time.Time{pc.head}, pc.then...) {
						p.ahead.push(fetched{p: p, at: at.UnixMilli()})
					}
				}
				if pc.emptyFor > 0 {
					p.emptySince = now.Add(-pc.emptyFor)
				}
				if pc.passedOver > 0 {
					s.picks = pc.passedOver
					p.pastFrom = 1
				}
				s.reading = append(s.reading, p)
			}
			p, at, hold := s.earliest(now)
			got := -1
			if p != nil {
				got = p.id
			}
			if want, ok := orderedAt[c.name]; ok && !at.Equal(want) {
				t.Errorf("ordered at %s, want %s", at, want)
			}
			if got != c.want || (hold > 0) != c.hold {
				t.Errorf("took partition %d (hold %s), want %d (hold %t)", got, hold, c.want, c.hold)
			}
		})
	}
}

// TestLookahead: through pushes and pops that fill it, drain it and wrap its ring many
// times, with stamps repeated, rising and falling, a lookahead hands its records back
// in order and knows the earliest stamp among them.
func TestLookahead(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var a lookahead
	var want []fetched // the records held, in order
	for i := range 20000 {
		if a.len() != len(want) {
			t.Fatalf("step %d: %d records held, want %d", i, a.len(), len(want))
		}
		if len(want) > 0 {
			least := slices.MinFunc(want, func(x, y fetched) int { return cmp.Compare(x.at, y.at) }).at
			if got := a.earliest().UnixMilli(); got != least {
				t.Fatalf("step %d: earliest %d, want %d", i, got, least)
			}
		}
		fill := (i/300)%2 == 0 // fill up, then drain, and so on
		if !a.full() && (len(want) == 0 || (fill && r.IntN(5) > 0) || (!fill && r.IntN(5) == 0)) {
			f := fetched{msg: kafkago.Message{Offset: int64(i)}, at: base.Add(time.Duration(r.IntN(20)) * time.Second).UnixMilli()}
			a.push(f)
			want = append(want, f)
			continue
		}
		got := *a.front()
		a.drop()
		if got.msg.Offset != want[0].msg.Offset {
			t.Fatalf("step %d: popped offset %d, want %d", i, got.msg.Offset, want[0].msg.Offset)
		}
		want = want[1:]
	}
}
