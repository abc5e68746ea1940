package ingest

import (
	"context"
	"sync"
)

// A Batch is a run of events from one source, in arrival order, with the means to tell
// the source they are done. Records a parser rejected are not in it: they went to the
// dead-letter sink before the batch was handed out, which counts as handled.
type Batch struct {
	Events []Event

	once sync.Once
	ack  func(context.Context) error
	err  error
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
