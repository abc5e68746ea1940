package ingest

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// A Partition names one ordered stream of records: a Kafka topic partition, or one
// input file. Event time is judged per partition: a record is late or ahead relative to
// what its own partition delivered before it.
type Partition struct {
	Source string // the topic, or the file's name
	ID     int32  // the Kafka partition; 0 for a file
}

func (p Partition) String() string { return fmt.Sprintf("%s/%d", p.Source, p.ID) }

// A Mark says that partition's stream has reached Time.
type Mark struct {
	Partition Partition
	Time      time.Time
}

// A Run is n consecutive events of a batch from one partition.
type Run struct {
	Partition Partition
	N         int
}

// MaxBatchBytes bounds the records of one batch, besides their count: sources end a
// batch once its records hold this much. A thousand records near the 1 MiB line cap (or
// Kafka's 1 MB message cap) would be a gigabyte, with several batches in flight; a
// batch of ~1.5 KB records holds 1.5 MiB.
const MaxBatchBytes = 8 << 20

// A Batch is a run of events from one source, in arrival order, with the means to tell
// the source they are done. Records a parser rejected are not in it: they went to the
// dead-letter sink before the batch was handed out, which counts as handled.
type Batch struct {
	Events []Event
	// Runs says which partition the events came from: the first Runs[0].N events are
	// of Runs[0].Partition, the next Runs[1].N of Runs[1].Partition, and so on; the
	// counts add up to len(Events). Nil when every event is of the zero Partition (one
	// stream). Within one partition, events keep the order the partition had.
	Runs []Run
	// Opened lists the partitions this reader started to read (assigned to it in a
	// consumer group, a file opened) since the previous batch, before any of their
	// events. Until a partition delivers an event or goes idle it holds back the
	// engine's watermark: its records may be older than those of the others.
	Opened []Partition
	// Ended lists the partitions this reader will deliver no more events of (revoked in
	// a rebalance, a file read to its end), after every event of theirs in Events. The
	// engine stops waiting for them.
	Ended []Partition
	// Offsets, when set, holds each event's record offset in its partition: Offsets[i]
	// is Events[i]'s. Only a Kafka source asked for them sets it (kafka.Options.Offsets):
	// scale-out's first stage names each record by its partition and offset.
	Offsets []int64
	// Marks carry event time that arrives without events of the batch: a source
	// partition's stream time, relayed to a scale-out task that got none of the
	// partition's recent events. The engine applies them before Events, as if an event
	// of each mark's partition at its time had arrived on time and entered no window.
	Marks []Mark

	once    sync.Once
	ack     func(context.Context) error
	err     error
	release func([]Event) // takes Events back for reuse; nil: the source reuses nothing
}

// NewBatch returns a batch whose Ack calls ack once; a nil ack makes Ack a no-op (files).
func NewBatch(events []Event, ack func(context.Context) error) *Batch {
	return &Batch{Events: events, ack: ack}
}

// Ack tells the source that every event of the batch is done: no open window needs it,
// its baseline updates are written and its alerts are durable. The Kafka source then
// commits offsets up to the batch once every earlier batch of the same partitions is
// done too. Ack may be called from any goroutine; calls after the first return the
// first call's result.
func (b *Batch) Ack(ctx context.Context) error {
	b.once.Do(func() {
		if b.ack != nil {
			b.err = b.ack(ctx)
		}
	})
	return b.err
}

// Release tells the source that nothing uses the batch's events any more, neither its
// caller nor anything the caller handed them to (an engine keeps none), so that the
// source may fill them again; Events is nil after it. The strings the events hold stay
// valid: they are never reused. Sources that reuse nothing (all but FileSource) ignore
// it, as does a batch released already.
func (b *Batch) Release() {
	if b.release != nil && b.Events != nil {
		b.release(b.Events[:0])
	}
	b.Events = nil
}

// Filter keeps the events for which keep reports true, in order, keeping Runs and
// Offsets in step, and returns how many it dropped.
func (b *Batch) Filter(keep func(*Event) bool) int {
	if b.Runs == nil {
		k := 0
		for i := range b.Events {
			if keep(&b.Events[i]) {
				b.Events[k] = b.Events[i]
				k++
			}
		}
		dropped := len(b.Events) - k
		clear(b.Events[k:])
		b.Events = b.Events[:k]
		return dropped
	}
	k, i, runs := 0, 0, b.Runs[:0]
	for _, r := range b.Runs {
		n := 0
		for end := i + r.N; i < end; i++ {
			if keep(&b.Events[i]) {
				b.Events[k] = b.Events[i]
				if b.Offsets != nil {
					b.Offsets[k] = b.Offsets[i]
				}
				k++
				n++
			}
		}
		if n > 0 {
			runs = append(runs, Run{Partition: r.Partition, N: n})
		}
	}
	dropped := len(b.Events) - k
	clear(b.Events[k:])
	b.Events = b.Events[:k]
	b.Runs = runs
	if b.Offsets != nil {
		b.Offsets = b.Offsets[:k]
	}
	return dropped
}

// Each calls fn for every run of the batch, with its events; a batch without Runs is
// one run of the zero Partition.
func (b *Batch) Each(fn func(p Partition, events []Event)) {
	if b.Runs == nil {
		if len(b.Events) > 0 {
			fn(Partition{}, b.Events)
		}
		return
	}
	i := 0
	for _, r := range b.Runs {
		fn(r.Partition, b.Events[i:i+r.N])
		i += r.N
	}
}

// AppendEarliestAhead appends to keys, for each of events, the earliest event time (µs
// since the Unix epoch) of it and the events after it, and returns the extended slice:
// the key a merge of partitions orders an event by when the events are one partition's
// in its own order. A partition's records come in about the order they happened, but
// not every record's stamp can be trusted: one stamped hours ahead keeps the key of the
// records after it and is taken in its place, while after a quiet spell the key follows
// the records' own times.
func AppendEarliestAhead(keys []int64, events []Event) []int64 {
	n := len(keys)
	keys = slices.Grow(keys, len(events))[:n+len(events)]
	low := int64(math.MaxInt64)
	for i := len(events) - 1; i >= 0; i-- {
		low = min(low, events[i].Time.UnixMicro())
		keys[n+i] = low
	}
	return keys
}
