package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/store"
)

// routerSwitch is the engine's alert sink: the router in force. A reload builds a new
// router over the same outbox (new routes, silences, receivers) and swaps it in; the
// old one finishes the attempts in flight, and what it had not delivered stays in the
// outbox for the new one.
type routerSwitch struct {
	p        *Pipeline
	outbox   alerting.OutboxStore
	history  alerting.History
	silences *alerting.Silences // made while running; every router shares them
	acks     *alerting.Acks

	mu  sync.RWMutex // held shared by Put, so a swap waits for the Puts in flight
	cur *routerRun
}

// routerRun is one router with its receivers, its goroutine and its metrics.
type routerRun struct {
	router    *alerting.Router
	receivers io.Closer
	reg       *prometheus.Registry
	cancel    context.CancelFunc
	done      <-chan error
}

var _ detectors.AlertSink = (*routerSwitch)(nil)

// Put makes alerts durable in the outbox of the router in force.
func (s *routerSwitch) Put(ctx context.Context, alerts []detectors.Alert) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur.router.Put(ctx, alerts)
}

// build makes a router for cfg, not yet running.
func (s *routerSwitch) build(cfg *Config) (*routerRun, error) {
	log := s.p.log.With("component", "alerting")
	env := ReceiverEnv{DataDir: cfg.Store.DataDir}
	if ch, ok := s.p.store.(*store.ClickHouse); ok && cfg.Cluster != nil {
		env.SlackThreads = ch
	}
	receivers, closer, err := s.p.opts.Receivers(cfg.Alerting, env, log)
	if err != nil {
		return nil, err
	}
	// Each router registers its metrics in a registry of its own, which /metrics
	// gathers while it is in force: a reloaded router starts its counters afresh,
	// which Prometheus reads as a counter reset.
	reg := prometheus.NewRegistry()
	r, err := alerting.NewRouter(cfg.Alerting, alerting.RouterOptions{
		Outbox: s.outbox, Receivers: receivers, History: s.history, Logger: s.p.log, Registerer: reg, Now: s.p.opts.Now,
		Silences: s.silences, Acks: s.acks,
	})
	if err != nil {
		closer.Close()
		return nil, err
	}
	return &routerRun{router: r, receivers: closer, reg: reg}, nil
}

// start builds the first router and runs it.
func (s *routerSwitch) start(ctx context.Context, cfg *Config) error {
	rr, err := s.build(cfg)
	if err != nil {
		return err
	}
	s.run(ctx, rr)
	s.mu.Lock() // /metrics may be gathering already
	s.cur = rr
	s.mu.Unlock()
	return nil
}

func (s *routerSwitch) run(ctx context.Context, rr *routerRun) {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	rr.cancel = cancel
	rr.done = goRun(func() error { return rr.router.Run(rctx) })
}

// swap puts a router for cfg in force and stops the old one.
func (s *routerSwitch) swap(ctx context.Context, cfg *Config) error {
	rr, err := s.build(cfg)
	if err != nil {
		return err
	}
	s.run(ctx, rr)
	s.mu.Lock()
	old := s.cur
	s.cur = rr
	s.mu.Unlock()
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := old.stop(stopCtx); err != nil {
		s.p.log.Warn("the router replaced by a reload did not stop cleanly; what it had not delivered stays in the outbox", "err", err)
	}
	return nil
}

// stop gives the deliveries pending a part of ctx's time, then stops the router in
// force: what is undelivered stays in the outbox for the next run.
func (s *routerSwitch) stop(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		fctx, cancel := context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
		if err := s.flush(fctx); err != nil {
			s.p.log.Info("stopping with deliveries pending; they stay in the outbox for the next run", "err", err)
		}
		cancel()
	}
	s.mu.Lock()
	rr := s.cur
	s.mu.Unlock()
	return rr.stop(ctx)
}

// flush waits until the router in force has delivered what is pending, or ctx ends.
func (s *routerSwitch) flush(ctx context.Context) error {
	s.mu.RLock()
	rr := s.cur
	s.mu.RUnlock()
	return rr.router.Flush(ctx)
}

func (rr *routerRun) stop(ctx context.Context) error {
	err := rr.halt(ctx)
	if rr.receivers != nil {
		if cerr := rr.receivers.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing receivers: %w", cerr))
		}
		rr.receivers = nil
	}
	return err
}

// halt stops the router: the attempts in flight finish within ctx (then they are cut
// short and stay pending), and Run returns. It may be called more than once.
func (rr *routerRun) halt(ctx context.Context) error {
	if rr.done == nil {
		return nil
	}
	// A Close that runs out of time leaves the attempts in flight cut short by the
	// cancel: they stay pending in the outbox for the next run, which is no error.
	_ = rr.router.Close(ctx)
	rr.cancel()
	err := <-rr.done
	rr.done = nil
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// Gather gathers the metrics of the router in force.
func (s *routerSwitch) Gather() ([]*dto.MetricFamily, error) {
	s.mu.RLock()
	rr := s.cur
	s.mu.RUnlock()
	if rr == nil {
		return nil, nil
	}
	return rr.reg.Gather()
}
