package kafka

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafkatest"
)

// kcat runs kcat (librdkafka, an independent Kafka client) with args and stdin, and
// returns its standard output.
func kcat(ctx context.Context, t *testing.T, stdin string, args ...string) []byte {
	t.Helper()
	bin := kafkatest.Require(t, "kcat")
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes()
}

// TestKcatProducesSourceConsumes: records kcat produces, keyed, arrive through the
// source, and the group commits them.
func TestKcatProducesSourceConsumes(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf")
	ctx := testContext(t)
	var in strings.Builder
	var want []string
	for i := range 100 {
		rec := fmt.Sprintf("kcat-%03d", i)
		fmt.Fprintf(&in, "client-%d:%s\n", i%7, rec)
		want = append(want, rec)
	}
	kcat(ctx, t, in.String(), "-b", c.Addrs[0], "-t", "waf", "-P", "-K:")

	s := newSource(t, testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"}), testOptions(&memDeadLetters{}))
	sameSet(t, "produced by kcat", consume(ctx, t, s, len(want), true), want)
	wantCommitted(t, c, "g", "waf", c.EndOffsets(t, "waf"))
}

// TestKcatBacklogInEventTime: a log kcat produces unkeyed, as fast as it reads it,
// goes to the partitions in blocks (librdkafka's sticky partitioner), so each
// partition's stream has gaps the others fill; read through the source, the records
// come in event time all the same. The log ends with a record on every partition at
// its last second, so that none that read its all is waited for (see
// TestSourceMergesABacklogByEventTime).
func TestKcatBacklogInEventTime(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf")
	ctx := testContext(t)
	const n = 20000
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, "kcat-%05d\n", i)
	}
	kcat(ctx, t, in.String(), "-b", c.Addrs[0], "-t", "waf", "-P")
	for p := range kafkatest.DefaultPartitions {
		kcat(ctx, t, fmt.Sprintf("end.%d-%05d\n", p, n), "-b", c.Addrs[0], "-t", "waf", "-P", "-p", fmt.Sprint(p))
	}
	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	cfg.BatchSize = 100
	s := newSource(t, cfg, testOptions(&memDeadLetters{}))
	wantEventTimeOrder(ctx, t, s, n+kafkatest.DefaultPartitions, nil)
}

// TestKcatReadsDeadLetters: kcat reads back the dead letters the writer produced: one
// JSON document per rejected record, keyed by its topic.
func TestKcatReadsDeadLetters(t *testing.T) {
	c := kafkatest.StartKafka(t, "waf", "dlq")
	ctx := testContext(t)
	rejects := records("bad", 6)
	good := records("ok", 30)
	c.Produce(t, "waf", append(rejects, good...)...)

	cfg := testConfig(c, "g", ingest.TopicConfig{Name: "waf", Format: "awswaf"})
	dlw, err := NewDeadLetterWriter(cfg, "dlq")
	if err != nil {
		t.Fatalf("NewDeadLetterWriter: %v", err)
	}
	t.Cleanup(func() { dlw.Close() })
	s := newSource(t, cfg, testOptions(dlw))
	consume(ctx, t, s, len(good), true)

	out := kcat(ctx, t, "", "-b", c.Addrs[0], "-t", "dlq", "-C", "-e", "-o", "beginning", "-J", "-q")
	var got []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var env struct {
			Key     string `json:"key"`
			Payload string `json:"payload"`
		}
		if err := json.Unmarshal(sc.Bytes(), &env); err != nil {
			t.Fatalf("kcat printed %q: %v", sc.Bytes(), err)
		}
		var d ingest.DeadLetter
		if err := json.Unmarshal([]byte(env.Payload), &d); err != nil {
			t.Fatalf("dead letter %q is not JSON: %v", env.Payload, err)
		}
		if env.Key != "waf" || d.Source != "waf" || d.Reason != ingest.ReasonBadSyntax {
			t.Errorf("dead letter %q has key %q, source %q, reason %q; want waf, waf, %s", d.Record, env.Key, d.Source, d.Reason, ingest.ReasonBadSyntax)
		}
		got = append(got, d.Record)
	}
	sameSet(t, "dead letters read by kcat", got, values(rejects))
}
