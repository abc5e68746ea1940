package pipeline

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/alertingtest"
)

// TestRouterStopsBeforeTheOutboxCloses: when putting alerts fails, stopping still
// stops the router and waits for its Run before the outbox it uses is closed, the order
// in which Run and Delivery.Close stop the parts: the router must never use an outbox
// that is closed under it.
func TestRouterStopsBeforeTheOutboxCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ob := &closingOutbox{MemoryOutbox: alerting.NewMemoryOutbox(), t: t}
		rec := alertingtest.NewRecorder("archive")
		p, err := New(Config{}, Options{
			Receivers: func(alerting.Config, ReceiverEnv, *slog.Logger) (map[string]alerting.Receiver, io.Closer, error) {
				return map[string]alerting.Receiver{"archive": rec}, io.NopCloser(nil), nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		var lc lifecycle
		lc.add("outbox", nil, ob.Close)
		s := &routerSwitch{p: p, outbox: ob}
		if err := s.start(t.Context(), &Config{Alerting: alerting.DefaultConfig()}); err != nil {
			t.Fatal(err)
		}
		lc.add("alerting", nil, s.stop)
		synctest.Wait() // Run is going: its prune pass is in the outbox
		if err := s.Put(t.Context(), alertingtest.Alerts(3, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))); err == nil {
			t.Fatal("Put succeeded on an outbox that refuses every enqueue")
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := lc.stop(ctx, p.log); err != nil {
			t.Fatal(err)
		}
		if !ob.closed.Load() {
			t.Error("the outbox was not closed")
		}
	})
}

// closingOutbox refuses every Enqueue (a full disk), holds a Prune until its context
// ends (a slow pass at shutdown), and fails the test when it is closed while a call is
// in flight or used after it was closed.
type closingOutbox struct {
	*alerting.MemoryOutbox
	t        *testing.T
	inFlight atomic.Int32
	closed   atomic.Bool
}

func (c *closingOutbox) enter(method string) func() {
	if c.closed.Load() {
		c.t.Errorf("%s on a closed outbox", method)
	}
	c.inFlight.Add(1)
	return func() { c.inFlight.Add(-1) }
}

func (c *closingOutbox) Enqueue(ctx context.Context, ds []alerting.Delivery) error {
	defer c.enter("Enqueue")()
	return errors.New("write outbox.db: no space left on device")
}

func (c *closingOutbox) Prune(ctx context.Context, before time.Time) (int, error) {
	defer c.enter("Prune")()
	<-ctx.Done()
	return 0, ctx.Err()
}

func (c *closingOutbox) Pending(ctx context.Context, receiver string, limit int) ([]alerting.Delivery, error) {
	defer c.enter("Pending")()
	return c.MemoryOutbox.Pending(ctx, receiver, limit)
}

func (c *closingOutbox) Stats(ctx context.Context) (map[string]alerting.QueueStats, error) {
	defer c.enter("Stats")()
	return c.MemoryOutbox.Stats(ctx)
}

func (c *closingOutbox) Update(ctx context.Context, ds []alerting.Delivery) error {
	defer c.enter("Update")()
	return c.MemoryOutbox.Update(ctx, ds)
}

func (c *closingOutbox) Close(context.Context) error {
	if n := c.inFlight.Load(); n > 0 {
		c.t.Errorf("outbox closed with %d calls of the router in flight", n)
	}
	c.closed.Store(true)
	return nil
}
