package detectors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// An EventSource hands out batches of events: a Kafka consumer group live, a file or a
// time range of history in replay. A bounded source returns io.EOF after its last batch.
type EventSource interface {
	Next(ctx context.Context) (*ingest.Batch, error)
}

// An AlertSink takes the alerts the engine raised; Put returns once they are durable
// (in the alerting outbox), because the engine then lets the source commit the events
// behind them.
type AlertSink interface {
	Put(ctx context.Context, alerts []Alert) error
}

// stopTimeout bounds the last acknowledgements when Run is stopped.
const stopTimeout = 15 * time.Second

// releaseEvery is how often, at most, Run writes baselines and open incidents and
// acknowledges batches when the engine has a wall clock (live): each release may cost
// a durable write (an fsync, an insert), and through a backlog batches come faster
// than disks take them. Without a clock (replay) Run releases after every batch.
const releaseEvery = time.Second

// releaseDue reports whether the pending batches may be released now.
func (e *Engine) releaseDue() bool {
	if e.now == nil {
		return true
	}
	now := e.now()
	if now.Sub(e.lastRelease) < releaseEvery {
		return false
	}
	e.lastRelease = now
	return true
}

type pendingBatch struct {
	b    *ingest.Batch
	maxT int64 // largest event time in the batch, ms
}

// Run drives the engine from src to sink until src ends (io.EOF: Run flushes every
// window, puts the last alerts, writes the baselines, acknowledges everything and
// returns nil) or ctx is done or a step fails (Run returns the error; batches not yet
// acknowledged will be read again after a restart, which rebuilds the open windows;
// call SyncBaselines to write what was learned meanwhile). Run loads the baselines
// first unless LoadBaselines was called, and again, merging them in, each time the
// watermark has advanced by baseline_refresh (see RefreshBaselines), after the batch
// that advanced it is acknowledged as far as it can be.
//
// Each batch is observed, its alerts put, and then acknowledged, in order, once no open
// window or pending decision still needs any of its events (all of them are older than
// the start of every open window) and the baselines learned from it are written. Run
// sets a batch's Events to nil once it has observed them, so that batches waiting for
// their ack (minutes, for the longest window) hold no events.
func (e *Engine) Run(ctx context.Context, src EventSource, sink AlertSink) error {
	e.mu.Lock()
	err := e.LoadBaselines(ctx)
	if err == nil {
		err = e.LoadIncidents(ctx)
	}
	e.mu.Unlock()
	if err != nil {
		return err
	}
	for {
		b, err := src.Next(ctx)
		// The lock lets a reload (Reload.Apply) in while Run waits for the next batch.
		e.mu.Lock()
		done, err := e.step(ctx, sink, b, err)
		e.mu.Unlock()
		if done {
			return err
		}
	}
}

// step handles what src.Next returned: batch b, if any, then err. done says Run ends,
// with the error step returns.
func (e *Engine) step(ctx context.Context, sink AlertSink, b *ingest.Batch, err error) (done bool, _ error) {
	if b != nil {
		// A failed lookup is logged (FetchBaselines): detection goes on without it.
		_ = e.FetchBaselines(ctx, b.Events)
		maxT := e.observe(b, b.Events)
		alerts := e.out.take()
		// A batch waits for its ack as long as the longest window stays open (ten
		// minutes for token_reuse): keep the means to ack it, not its events.
		b.Events = nil
		e.pending = append(e.pending, pendingBatch{b: b, maxT: maxT})
		if err := e.put(ctx, sink, alerts); err != nil {
			return true, err
		}
		if e.releaseDue() {
			if err := e.release(ctx, e.horizon()); err != nil {
				return true, err
			}
		}
		e.refreshIfDue(ctx)
	}
	switch {
	case errors.Is(err, io.EOF):
		if err := e.put(ctx, sink, e.Flush()); err != nil {
			return true, err
		}
		if err := e.SyncBaselines(ctx); err != nil {
			return true, err
		}
		return true, e.release(ctx, math.MaxInt64)
	case err != nil && ctx.Err() != nil:
		// Stopping: acknowledge what no open window needs any more, so a restart
		// reads as little again as it can; the rest is read again and rebuilds the
		// open windows.
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
		rerr := e.release(stopCtx, e.horizon())
		// The open incidents are saved even when no batch could be acknowledged (a
		// window still needs them all): whoever reads those batches again (this
		// process restarted, or a cluster task's next owner, which has no outbox of
		// ours to tell it what was delivered) continues each incident under its id
		// instead of paging it again.
		rerr = errors.Join(rerr, e.SaveIncidents(stopCtx))
		cancel()
		return true, errors.Join(ctx.Err(), rerr)
	case err != nil:
		return true, fmt.Errorf("detectors: next batch: %w", err)
	}
	return false, nil
}

func (e *Engine) put(ctx context.Context, sink AlertSink, alerts []Alert) error {
	if len(alerts) == 0 {
		return nil
	}
	if err := sink.Put(ctx, alerts); err != nil {
		return fmt.Errorf("detectors: put alerts: %w", err)
	}
	return nil
}

// release acknowledges, in order, the pending batches whose events are all before
// horizon, after writing the baselines they taught. The windows' part of the horizon
// moves a bucket at a time (30s for token_reuse's defaults), so dense traffic is
// released, and its baselines written, about once per bucket, not once per batch: a
// BaselineStore in ClickHouse takes each write as an insert per table, of which
// ClickHouse wants about one a second.
func (e *Engine) release(ctx context.Context, horizon int64) error {
	n := 0
	for n < len(e.pending) && e.pending[n].maxT < horizon {
		n++
	}
	if n == 0 {
		return nil
	}
	if err := e.SyncBaselines(ctx); err != nil {
		return err
	}
	if err := e.SaveIncidents(ctx); err != nil {
		return err
	}
	for i := range n {
		if err := e.pending[i].b.Ack(ctx); err != nil {
			return fmt.Errorf("detectors: acknowledge batch: %w", err)
		}
		e.pending[i] = pendingBatch{}
	}
	e.pending = append(e.pending[:0], e.pending[n:]...)
	return nil
}
