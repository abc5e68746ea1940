package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/store"
)

// archiving is the source the engine reads: the Kafka source's batches, archived in the
// store before the engine sees them, with their acknowledgements routed through the
// acker.
type archiving struct {
	p       *Pipeline
	src     detectors.EventSource
	acks    *acker
	archive bool
	warned  bool
}

// tick is how long the engine waits for records before it looks at the wall clock
// anyway: a partition that went silent must become idle, and the windows it held back
// close, even when nothing else arrives.
const tick = time.Second

func (a *archiving) Next(ctx context.Context) (*ingest.Batch, error) {
	tctx, cancel := context.WithTimeout(ctx, tick)
	b, err := a.src.Next(tctx)
	cancel()
	if b == nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return &ingest.Batch{}, nil // no records: a tick, with nothing to acknowledge
		}
		return nil, err
	}
	if a.archive && len(b.Events) > 0 {
		a.store(ctx, b.Events)
	}
	a.p.m.batches.Inc()
	nb := ingest.NewBatch(b.Events, func(ctx context.Context) error { return a.acks.enqueue(ctx, b) })
	nb.Runs, nb.Offsets, nb.Opened, nb.Ended = b.Runs, b.Offsets, b.Opened, b.Ended
	return nb, err
}

// store archives events. A full archive buffer (the database slow, and its spill too)
// holds the pipeline back rather than lose events: their offsets must not be committed
// while they are in no archive.
func (a *archiving) store(ctx context.Context, evs []ingest.Event) {
	for {
		err := a.p.store.ArchiveEvents(ctx, evs)
		if err == nil {
			if a.warned {
				a.p.log.Info("the archive takes events again", "component", "store")
				a.warned = false
			}
			return
		}
		if !errors.Is(err, store.ErrBufferFull) {
			// Closed: the pipeline is stopping, and these events' offsets are not
			// committed: they are read again.
			return
		}
		if !a.warned {
			a.p.log.Warn("the archive buffer is full; ingest waits for it", "component", "store", "err", err)
			a.warned = true
		}
		a.p.m.archiveWaits.Inc()
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// acker commits the offsets of acknowledged batches once the events they carried are
// durable in the archive (store.Sync): the engine has already made their alerts
// durable and written their baselines. It takes every acknowledgement queued, syncs
// once, then acknowledges them to the source in order, so a commit follows a sync at
// most once per batch of acknowledgements.
type acker struct {
	st       store.Store
	log      *slog.Logger
	m        *metrics
	q        chan *ingest.Batch
	once     sync.Once
	stopping atomic.Bool
}

func newAcker(st store.Store, log *slog.Logger, m *metrics) *acker {
	return &acker{st: st, log: log, m: m, q: make(chan *ingest.Batch, 4096)}
}

// enqueue hands b over; it waits while the acker is behind by a full queue.
func (a *acker) enqueue(ctx context.Context, b *ingest.Batch) error {
	select {
	case a.q <- b:
		a.m.ackQueue.Inc()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close says no more batches come; run ends once it has committed what was queued.
func (a *acker) close() {
	a.stopping.Store(true)
	a.once.Do(func() { close(a.q) })
}

// syncTimeout bounds one wait for the archive; a database and a spill that take longer
// hold the commits back, and the next round tries again.
const syncTimeout = 30 * time.Second

// run acknowledges queued batches until close. It does not stop with ctx: after a stop
// it commits what the engine acknowledged on its way out.
func (a *acker) run(context.Context) error {
	var held []*ingest.Batch
	for b := range a.q {
		held = append(held[:0], b)
	drain:
		for {
			select {
			case b, ok := <-a.q:
				if !ok {
					break drain
				}
				held = append(held, b)
			default:
				break drain
			}
		}
		synced := false
		for !synced {
			sctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
			err := a.st.Sync(sctx)
			cancel()
			if err == nil {
				synced = true
				break
			}
			if a.stopping.Load() {
				// Stopping: leave these uncommitted; their records are read again.
				a.log.Warn("stopping before the archive was durable; the last batches are read again after a restart", "component", "store", "err", err)
				break
			}
			a.log.Warn("the archive is not durable yet; commits wait", "component", "store", "err", err)
		}
		for _, b := range held {
			if !synced {
				a.m.ackQueue.Dec()
				continue
			}
			actx, cancel := context.WithTimeout(context.Background(), syncTimeout)
			if err := b.Ack(actx); err != nil {
				a.log.Warn("acknowledging a batch to the source failed; its records are read again after a restart", "err", err)
			}
			cancel()
			a.m.ackQueue.Dec()
		}
		clear(held)
	}
	return nil
}
