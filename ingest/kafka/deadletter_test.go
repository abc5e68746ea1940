package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
	"github.com/gatewatch/gatewatch/internal/promtest"
	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"
)

// TestSourceDeadLettersToTopic: rejected records, an oversized one included, reach the
// dead-letter topic as JSON with their reason and origin, keyed by their topic, before
// the batch after them is handed out; they are counted and committed like any other.
func TestSourceDeadLettersToTopic(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf", "dlq")
	huge := strings.Repeat("x", lineParserMax+1)
	// Rejects first: round robin puts some on every partition, each before good records.
	rejects := append(records("bad", 7), kafkago.Message{Value: []byte(huge)})
	good := records("ok", 40)
	c.Produce(t, "waf", append(rejects, good...)...)
	ctx := testContext(t)

	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	dlw, err := NewDeadLetterWriter(cfg, "dlq")
	if err != nil {
		t.Fatalf("NewDeadLetterWriter: %v", err)
	}
	t.Cleanup(func() { dlw.Close() })
	reg := prometheus.NewPedanticRegistry()
	o := testOptions(dlw)
	o.Registerer = reg
	s := newSource(t, cfg, o)
	sameSet(t, "events", consume(ctx, t, s, len(good), true), values(good))

	origin := map[string]kafkago.Message{} // record → where it was produced
	for _, msg := range c.ReadAll(t, "waf") {
		origin[string(msg.Value)] = msg
	}
	letters := c.ReadAll(t, "dlq")
	if len(letters) != len(rejects) {
		t.Fatalf("%d dead letters in the topic, want %d", len(letters), len(rejects))
	}
	var got []string
	for _, msg := range letters {
		var d ingest.DeadLetter
		if err := json.Unmarshal(msg.Value, &d); err != nil {
			t.Fatalf("dead letter %q is not JSON: %v", msg.Value, err)
		}
		from, ok := origin[d.Record]
		switch {
		case !ok:
			t.Fatalf("dead letter of an unknown record %.40q", d.Record)
		case string(msg.Key) != "waf", d.Source != "waf", d.Format != "awswaf":
			t.Errorf("dead letter of %.20q: key %q, source %q, format %q; want waf, waf, awswaf", d.Record, msg.Key, d.Source, d.Format)
		case d.Partition != from.Partition || d.Offset != from.Offset:
			t.Errorf("dead letter of %.20q says %d@%d, the record is at %d@%d", d.Record, d.Partition, d.Offset, from.Partition, from.Offset)
		case d.Time.IsZero() || d.Error == "":
			t.Errorf("dead letter of %.20q lacks time or error: %+v", d.Record, d)
		}
		want := ingest.ReasonBadSyntax
		if d.Record == huge {
			want = ingest.ReasonOversized
		}
		if d.Reason != want {
			t.Errorf("dead letter of %.20q has reason %q, want %q", d.Record, d.Reason, want)
		}
		got = append(got, d.Record)
	}
	sameSet(t, "dead letters", got, values(rejects))

	counts := []struct {
		reason string
		want   float64
	}{{ingest.ReasonBadSyntax, 7}, {ingest.ReasonOversized, 1}, {ingest.ReasonInvalidJSON, 0}}
	for _, cc := range counts {
		if got := promtest.Value(t, reg, "gatewatch_ingest_dead_letters_total", "source", "waf", "reason", cc.reason); got != cc.want {
			t.Errorf("dead letters counted with reason %s = %v, want %v", cc.reason, got, cc.want)
		}
	}
	if got := promtest.Value(t, reg, "gatewatch_ingest_records_total", "source", "waf"); got != float64(len(rejects)+len(good)) {
		t.Errorf("records counted = %v, want %d", got, len(rejects)+len(good))
	}
	wantCommitted(t, c, "g", "waf", c.EndOffsets(t, "waf"))
}

// TestDeadLetterWriterCutsWhatDoesNotFit: a record too big for one Kafka message is cut
// to fit, at a UTF-8 boundary, and the error field says so; the letter is still written.
func TestDeadLetterWriterCutsWhatDoesNotFit(t *testing.T) {
	c := kafkatest.StartKafka(t, "dlq")
	cfg := testConfig(c, "g")
	dlw, err := NewDeadLetterWriter(cfg, "dlq")
	if err != nil {
		t.Fatalf("NewDeadLetterWriter: %v", err)
	}
	t.Cleanup(func() { dlw.Close() })
	big := strings.Repeat("é\x01", 600_000) // 1.8 MB raw, more once JSON escapes the control bytes
	in := []ingest.DeadLetter{
		{Time: time.Unix(1, 0).UTC(), Source: "waf", Format: "awswaf", Partition: 2, Offset: 7, Reason: ingest.ReasonOversized, Error: "too long", Record: big},
		{Time: time.Unix(2, 0).UTC(), Source: "waf", Format: "awswaf", Partition: 2, Offset: 8, Reason: ingest.ReasonBadUTF8, Error: "bad", Record: "a\xffb<script>"},
	}
	ctx := testContext(t)
	if err := dlw.Put(ctx, in); err != nil {
		t.Fatalf("Put: %v", err)
	}
	msgs := c.ReadAll(t, "dlq")
	if len(msgs) != 2 {
		t.Fatalf("%d messages in the topic, want 2", len(msgs))
	}
	byOffset := map[int64]ingest.DeadLetter{}
	for _, msg := range msgs {
		if len(msg.Key)+len(msg.Value) > MaxDeadLetterBytes {
			t.Errorf("message of %d bytes exceeds %d", len(msg.Key)+len(msg.Value), MaxDeadLetterBytes)
		}
		var d ingest.DeadLetter
		if err := json.Unmarshal(msg.Value, &d); err != nil {
			t.Fatalf("dead letter is not JSON: %v", err)
		}
		byOffset[d.Offset] = d
	}
	cut := byOffset[7]
	if !strings.HasPrefix(big, cut.Record) || len(cut.Record) < 100_000 || !utf8.ValidString(cut.Record) {
		t.Errorf("cut record has %d bytes, valid UTF-8 %v; want a prefix of the record of at least 100000 bytes", len(cut.Record), utf8.ValidString(cut.Record))
	}
	if want := fmt.Sprintf("too long (record cut from %d to %d bytes", len(big), len(cut.Record)); !strings.HasPrefix(cut.Error, want) {
		t.Errorf("error = %q, want it to start %q", cut.Error, want)
	}
	if got := byOffset[8].Record; got != "a\uFFFDb<script>" {
		t.Errorf("record with invalid UTF-8 read back as %q", got)
	}
}

// TestDeadLetterWriterMissingTopic: a sink that cannot store fails Put, naming the topic.
func TestDeadLetterWriterMissingTopic(t *testing.T) {
	c := kafkatest.StartKafka(t)
	cfg := testConfig(c, "g")
	cfg.Timeout = 2 * time.Second
	dlw, err := NewDeadLetterWriter(cfg, "no-such-topic")
	if err != nil {
		t.Fatalf("NewDeadLetterWriter: %v", err)
	}
	t.Cleanup(func() { dlw.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = dlw.Put(ctx, []ingest.DeadLetter{{Source: "waf", Record: "x"}})
	if err == nil || !strings.Contains(err.Error(), "no-such-topic") {
		t.Fatalf("Put to a missing topic = %v, want an error naming it", err)
	}
}
