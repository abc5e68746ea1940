package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/internal/console"
	"github.com/gatewatch/gatewatch/store"
)

// analystLoadTimeout bounds one load of the silences and acknowledgements.
// analystSync is how often they are loaded again from a store other processes share
// (ClickHouse: the replicas of a cluster): a silence, an expiry or an acknowledgement
// made on one replica is in force on every other within it (plus a load). A store
// that does not answer at start-up is retried as often.
const (
	analystLoadTimeout = 10 * time.Second
	analystSync        = 5 * time.Second
)

// openAnalyst opens the silences and acknowledgements made while running, kept in
// st and shared by every router (a reload keeps them). When the store does not answer
// at start-up, the pipeline starts anyway, with the silences of the config file, and
// loads them in the background: an outage of ClickHouse must not stop alerts. A store
// that replicas share is read again every analystSync, for what the others made.
func (p *Pipeline) openAnalyst(ctx context.Context, st store.Store, lc *lifecycle) error {
	sil, err := alerting.NewSilences(st, p.opts.Now)
	if err != nil {
		return err
	}
	acks, err := alerting.NewAcks(st, p.opts.Now)
	if err != nil {
		return err
	}
	p.alerts.silences, p.alerts.acks = sil, acks
	promauto.With(p.reg).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gatewatch_alerting_silences_active",
		Help: "Silences made from the console or Slack that are in force (the config file's are not counted).",
	}, func() float64 { return float64(sil.InForce()) })
	load := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, analystLoadTimeout)
		defer cancel()
		return errors.Join(sil.Load(ctx), acks.Load(ctx))
	}
	shared := syncEvery(st) > 0
	err = load(ctx)
	if err != nil {
		p.log.Warn("silences and acknowledgements not loaded from the store; only the config's silences mute until they are", "err", err)
	} else if !shared {
		return nil
	}
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := goRun(func() error { syncAnalyst(rctx, load, shared, err != nil, p.log); return nil })
	lc.add("silence loader", done, func(context.Context) error { stop(); <-done; return nil })
	return nil
}

// syncAnalyst loads the silences and acknowledgements every analystSync until ctx
// ends: for good when shared, else until a load succeeds. failing says the last load
// failed; a change either way is logged once.
func syncAnalyst(ctx context.Context, load func(context.Context) error, shared, failing bool, log *slog.Logger) {
	t := time.NewTicker(analystSync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := load(ctx)
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			log.Warn("silences and acknowledgements not read from the store; what other replicas made waits until they are", "err", err)
		case err == nil && failing:
			log.Info("silences and acknowledgements loaded from the store")
		}
		failing = err != nil
		if !failing && !shared {
			return
		}
	}
}

// syncEvery is how soon the silences and acknowledgements other processes sharing st
// made are in force here; 0: st is this process's own (the embedded store).
func syncEvery(st store.Store) time.Duration {
	if _, ok := st.(*store.ClickHouse); ok {
		return analystSync
	}
	return 0
}

// openConsole starts the analyst's console on console.listen; it stops before the
// router and the store it reads.
func (p *Pipeline) openConsole(cfg *Config, st store.Store, lc *lifecycle) error {
	s, err := console.New(cfg.Console, console.Options{
		Store:      st,
		Router:     p.alerts.router,
		Alerting:   func() alerting.Config { return p.cfg.Load().Alerting },
		Silences:   p.alerts.silences,
		Acks:       p.alerts.acks,
		Metrics:    prometheus.Gatherers{p.reg, prometheus.GathererFunc(p.alerts.Gather)},
		Registerer: p.reg,
		Replica:    cfg.Cluster != nil,
		Sync:       syncEvery(st),
		Logger:     p.log,
		Now:        p.opts.Now,
	})
	if err != nil {
		return err
	}
	if err := s.Listen(cfg.Console.Addr()); err != nil {
		return err
	}
	p.mu.Lock()
	p.console = s
	p.mu.Unlock()
	lc.add("console", goRun(s.Serve), s.Shutdown)
	return nil
}

// ConsoleAddr returns the console's address once Run has started it; "" otherwise.
func (p *Pipeline) ConsoleAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.console == nil {
		return ""
	}
	return p.console.Addr()
}

// router returns the router in force.
func (s *routerSwitch) router() *alerting.Router {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur.router
}
