package kafka

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	kafkago "github.com/segmentio/kafka-go"
)

// benchRecords is how many records each benchmark iteration consumes: two hours of
// synthetic Kong records in time order (about 0.6 KB each), round robin on a loopback
// kfake topic of four partitions, as a gateway's shipper would write them.
const benchRecords = 20_000

// benchTopic starts a broker with benchMessages on topic "gw" and returns it with the
// total size of the records.
func benchTopic(b *testing.B) (*kafkatest.Cluster, int64) {
	b.Helper()
	c := kafkatest.StartKafka(b, "gw")
	msgs, size := benchMessages(b)
	for i := 0; i < len(msgs); i += 5000 {
		c.Produce(b, "gw", msgs[i:min(i+5000, len(msgs))]...)
	}
	return c, size
}

// benchMessages returns benchRecords synthetic Kong records in time order, and their
// total size.
func benchMessages(tb testing.TB) ([]kafkago.Message, int64) {
	tb.Helper()
	reqs, _, err := synth.Generate(synth.Config{Start: time.Date(2025, 12, 1, 12, 0, 0, 0, time.UTC), Duration: 2 * time.Hour, Rate: 10, Seed: 1})
	if err != nil {
		tb.Fatal(err)
	}
	if len(reqs) < benchRecords {
		tb.Fatalf("%d synthetic requests, want %d", len(reqs), benchRecords)
	}
	msgs := make([]kafkago.Message, benchRecords)
	var size int64
	for i := range msgs {
		v, err := synth.AppendRecord(nil, ingest.FormatKong, &reqs[i])
		if err != nil {
			tb.Fatal(err)
		}
		msgs[i] = kafkago.Message{Value: v}
		size += int64(len(v))
	}
	return msgs, size
}

func benchConfig(c *kafkatest.Cluster, group string) ingest.KafkaConfig {
	cfg := ingest.DefaultConfig().Kafka // batch_size 1000, batch_wait 100ms, max_bytes 10 MiB
	cfg.Brokers = c.Addrs
	cfg.Group = group
	cfg.Topics = []ingest.TopicConfig{{Name: "gw", Format: ingest.FormatKong}}
	return cfg
}

// BenchmarkSource consumes benchRecords Kong records end to end: a new group member
// fetches, parses with the real Kong parser (a parser for each partition's reader),
// merges the partitions by event time, hands out batches of 1000 and acknowledges
// each, which commits it. Joining the group (until the first batch) and leaving it are
// not timed: they are the same kafka-go calls in both benchmarks and leaving waits out
// MaxWait. BenchmarkBareFetch is the baseline: kafka-go's Reader alone, with the reader
// settings the Source uses, on the same records, no parsing, no commits.
//
//	go test -run '^$' -bench 'Source|BareFetch' -benchmem -count 6 ./ingest/kafka > new.txt
//	benchstat old.txt new.txt
func BenchmarkSource(b *testing.B) {
	c, size := benchTopic(b)
	ctx := context.Background()
	o := Options{DeadLetters: &memDeadLetters{}, ParserOptions: testParserOptions(b)}
	b.ReportAllocs()
	timed, i := 0, 0
	next := func(s *Source) int {
		batch, err := s.Next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := batch.Ack(ctx); err != nil {
			b.Fatal(err)
		}
		return len(batch.Events)
	}
	for b.Loop() {
		b.StopTimer()
		i++
		o.Registerer = prometheus.NewRegistry() // each source registers its metrics
		s, err := NewSource(benchConfig(c, fmt.Sprintf("bench-source-%d", i)), o)
		if err != nil {
			b.Fatal(err)
		}
		n := next(s) // joins the group
		b.StartTimer()
		for n < benchRecords {
			k := next(s)
			n += k
			timed += k
		}
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportRate(b, timed, size)
}

// BenchmarkBareFetch is BenchmarkSource's baseline: a kafka-go Reader with the reader
// settings the Source uses, in a new group each iteration, fetching the same records
// with FetchMessage and doing nothing with them.
func BenchmarkBareFetch(b *testing.B) {
	c, size := benchTopic(b)
	ctx := context.Background()
	b.ReportAllocs()
	timed, i := 0, 0
	for b.Loop() {
		b.StopTimer()
		i++
		s, err := NewSource(benchConfig(c, fmt.Sprintf("bench-bare-%d", i)), Options{DeadLetters: &memDeadLetters{}, ParserOptions: testParserOptions(b), Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		// A group reader of every partition, with the fetch settings of the source's
		// partition readers.
		rc := s.rcfg
		rc.Topic, rc.GroupID, rc.GroupTopics = "", s.cfg.Group, s.gcfg.Topics
		rc.QueueCapacity = s.cfg.BatchSize
		r := kafkago.NewReader(rc)
		if _, err := r.FetchMessage(ctx); err != nil { // joins the group
			b.Fatal(err)
		}
		b.StartTimer()
		for range benchRecords - 1 {
			if _, err := r.FetchMessage(ctx); err != nil {
				b.Fatal(err)
			}
		}
		timed += benchRecords - 1
		b.StopTimer()
		if err := r.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportRate(b, timed, size)
}

// reportRate reports events/s and MB/s of the timed records.
func reportRate(b *testing.B, timed int, size int64) {
	b.ReportMetric(float64(timed)/b.Elapsed().Seconds(), "events/s")
	b.SetBytes(int64(float64(size) / benchRecords * float64(timed) / float64(b.N)))
}

// TestBenchTopicParses keeps the benchmark honest: its records are accepted by the
// parser, so BenchmarkSource measures events, not dead letters.
func TestBenchTopicParses(t *testing.T) {
	p, err := ingest.NewParser(ingest.FormatKong, testParserOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	msgs, _ := benchMessages(t)
	for _, m := range msgs {
		if err := p.Parse(new(ingest.Event), m.Value); err != nil {
			t.Fatalf("the Kong parser rejects a benchmark record (%v): BenchmarkSource would measure dead letters:\n%s", err, m.Value)
		}
	}
}
