package kafkatest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/segmentio/kafka-go"
)

// TestStartKafka: a started cluster has the topics with DefaultPartitions partitions,
// and what Produce writes, ReadAll, EndOffsets and StartOffsets see.
func TestStartKafka(t *testing.T) {
	c := StartKafka(t, "a", "b")
	if got := c.Partitions(t, "a"); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Fatalf("partitions of a = %v, want [0 1 2 3]", got)
	}
	var want []string
	var msgs []kafka.Message
	for i := range 10 {
		v := fmt.Sprintf("m%d", i)
		want = append(want, v)
		msgs = append(msgs, kafka.Message{Value: []byte(v)})
	}
	c.Produce(t, "b", msgs...)
	var got []string
	for _, m := range c.ReadAll(t, "b") {
		got = append(got, string(m.Value))
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("ReadAll(b) = %v, want %v", got, want)
	}
	total := int64(0)
	for _, end := range c.EndOffsets(t, "b") {
		total += end
	}
	if total != 10 {
		t.Fatalf("end offsets of b add up to %d, want 10", total)
	}
	if got := c.StartOffsets(t, "b"); len(got) != 4 || got[0]+got[1]+got[2]+got[3] != 0 {
		t.Fatalf("start offsets of b = %v, want 0 for each of its 4 partitions (nothing deleted)", got)
	}
	if got := c.Committed(t, "nobody", "b"); len(got) != 0 {
		t.Fatalf("committed offsets of a group that never committed = %v, want none", got)
	}
}
