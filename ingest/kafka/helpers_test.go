package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	kafkago "github.com/segmentio/kafka-go"
)

// testTimeout bounds each test's Kafka work.
const testTimeout = 60 * time.Second

// lineParser is the parser of the tests about the source's mechanics: a record is any
// line; "bad..." lines and lines over 64 KiB are rejected, "kept..." lines are repaired
// (an event and a kept ParseError, as invalid UTF-8 gets). The event carries the record
// in RequestID and the topic's format in Source, so a test can tell exactly which records
// arrived through which parser.
type lineParser struct{ format string }

const lineParserMax = 64 << 10

func (p lineParser) Parse(ev *ingest.Event, line []byte) error {
	switch {
	case len(line) > lineParserMax:
		return &ingest.ParseError{Reason: ingest.ReasonOversized, Err: fmt.Errorf("record of %d bytes exceeds %d", len(line), lineParserMax)}
	case bytes.HasPrefix(line, []byte("bad")):
		return &ingest.ParseError{Reason: ingest.ReasonBadSyntax, Err: errors.New("not a test record")}
	}
	// "prefix-NNNN" (records) is stamped NNNN seconds after a fixed time, as the
	// record of that number would be in a log.
	ts := time.Unix(1_700_000_000, 0).UTC()
	if i := bytes.LastIndexByte(line, '-'); i >= 0 {
		if n, err := strconv.Atoi(string(line[i+1:])); err == nil {
			ts = ts.Add(time.Duration(n) * time.Second)
		}
	}
	*ev = ingest.Event{Time: ts, Source: p.format, RequestID: string(line)}
	if bytes.HasPrefix(line, []byte("kept")) {
		return &ingest.ParseError{Reason: ingest.ReasonBadUTF8, Err: errors.New("repaired"), Kept: true}
	}
	return nil
}

func lineParsers(t ingest.TopicConfig) (ingest.Parser, error) {
	return lineParser{format: t.Format}, nil
}

// memDeadLetters keeps dead letters in memory; fail makes the next Puts fail.
type memDeadLetters struct {
	mu      sync.Mutex
	letters []ingest.DeadLetter
	fail    int
}

func (m *memDeadLetters) Put(_ context.Context, letters []ingest.DeadLetter) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail > 0 {
		m.fail--
		return errors.New("dead-letter sink down")
	}
	m.letters = append(m.letters, letters...)
	return nil
}

func (m *memDeadLetters) all() []ingest.DeadLetter {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.letters)
}

// testConfig is a Kafka config for c with quick batches.
func testConfig(c *kafkatest.Cluster, group string, topics ...ingest.TopicConfig) ingest.KafkaConfig {
	cfg := ingest.DefaultConfig().Kafka
	cfg.Brokers = c.Addrs
	cfg.Group = group
	cfg.Topics = topics
	cfg.BatchSize = 50
	cfg.BatchWait = 50 * time.Millisecond
	cfg.Timeout = 10 * time.Second
	return cfg
}

// testOptions are source options with line parsers and quick group membership.
func testOptions(dl ingest.DeadLetters) Options {
	return Options{
		Parser:            lineParsers,
		DeadLetters:       dl,
		Registerer:        prometheus.NewPedanticRegistry(),
		MaxWait:           100 * time.Millisecond,
		HeartbeatInterval: 100 * time.Millisecond,
		SessionTimeout:    6 * time.Second,
		RebalanceTimeout:  10 * time.Second,
	}
}

// newSource builds a source that t.Cleanup closes.
func newSource(t *testing.T, cfg ingest.KafkaConfig, o Options) *Source {
	t.Helper()
	s, err := NewSource(cfg, o)
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// records returns n distinct test records "<prefix>-0000" ... as messages.
func records(prefix string, n int) []kafkago.Message {
	msgs := make([]kafkago.Message, n)
	for i := range msgs {
		msgs[i] = kafkago.Message{Value: fmt.Appendf(nil, "%s-%04d", prefix, i)}
	}
	return msgs
}

func values(msgs []kafkago.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m.Value)
	}
	return out
}

// ids returns the records (RequestID) of b's events.
func ids(b *ingest.Batch) []string {
	out := make([]string, len(b.Events))
	for i := range b.Events {
		out[i] = b.Events[i].RequestID
	}
	return out
}

// next calls s.Next and fails t on error.
func next(ctx context.Context, t *testing.T, s *Source) *ingest.Batch {
	t.Helper()
	b, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if len(b.Events) == 0 {
		t.Fatal("Next returned a batch with no events")
	}
	return b
}

// consume calls Next until n events arrived, acknowledging each batch when ack, and
// returns the records in arrival order.
func consume(ctx context.Context, t *testing.T, s *Source, n int, ack bool) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		b := next(ctx, t, s)
		got = append(got, ids(b)...)
		if ack {
			if err := b.Ack(ctx); err != nil {
				t.Fatalf("Ack: %v", err)
			}
		}
	}
	return got
}

// sameSet fails t unless got holds exactly the records of want, each once.
func sameSet(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if slices.Equal(g, w) {
		return
	}
	seen := map[string]int{}
	for _, x := range got {
		seen[x]++
	}
	var missing, dup, extra []string
	for _, x := range want {
		switch seen[x] {
		case 0:
			missing = append(missing, x)
		case 1:
		default:
			dup = append(dup, x)
		}
		delete(seen, x)
	}
	for x := range seen {
		extra = append(extra, x)
	}
	t.Fatalf("%s: got %d records, want %d: missing %v, repeated %v, unexpected %v", what, len(got), len(want), missing, dup, extra)
}

// wantCommitted fails t unless group's committed offsets of topic equal want.
func wantCommitted(t *testing.T, c *kafkatest.Cluster, group, topic string, want map[int]int64) {
	t.Helper()
	got := c.Committed(t, group, topic)
	if len(got) != len(want) {
		t.Fatalf("committed offsets of %s on %s = %v, want %v", group, topic, got, want)
	}
	for p, off := range want {
		if got[p] != off {
			t.Fatalf("committed offsets of %s on %s = %v, want %v", group, topic, got, want)
		}
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// samples returns the documented vendor records of one format: the lines of
// ../testdata/<format>/<file> that are not comments, as messages.
func samples(t testing.TB, format, file string) []kafkago.Message {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", format, file))
	if err != nil {
		t.Fatalf("read the %s samples: %v", format, err)
	}
	var msgs []kafkago.Message
	for line := range bytes.Lines(b) {
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		msgs = append(msgs, kafkago.Message{Value: line})
	}
	if len(msgs) == 0 {
		t.Fatalf("no %s samples in %s", format, file)
	}
	return msgs
}

// testParserOptions has a fixed token secret and clock, so two parsers of one format
// turn a record into the same event.
func testParserOptions(t testing.TB) ingest.ParserOptions {
	t.Helper()
	secret, err := ingest.NewTokenSecret([]byte("gatewatch-kafka-test-secret-0123"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return ingest.ParserOptions{Secret: secret, Now: func() time.Time { return now }}
}
