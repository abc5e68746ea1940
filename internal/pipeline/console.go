package pipeline

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/internal/console"
	"github.com/gatewatch/gatewatch/store"
)

// analystLoadTimeout bounds the first load of the silences and acknowledgements; a
// store that does not answer in time is retried every analystRetry meanwhile.
const (
	analystLoadTimeout = 10 * time.Second
	analystRetry       = 10 * time.Second
)

// openAnalyst opens the silences and acknowledgements made while running, kept in
// st and shared by every router (a reload keeps them). When the store does not answer
// at start-up, the pipeline starts anyway, with the silences of the config file, and
// loads them in the background: an outage of ClickHouse must not stop alerts.
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
	load := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, analystLoadTimeout)
		defer cancel()
		return errors.Join(sil.Load(ctx), acks.Load(ctx))
	}
	err = load(ctx)
	if err == nil {
		return nil
	}
	p.log.Warn("silences and acknowledgements not loaded from the store; only the config's silences mute until they are", "err", err)
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := goRun(func() error {
		t := time.NewTicker(analystRetry)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return nil
			case <-t.C:
			}
			if err := load(rctx); err == nil {
				p.log.Info("silences and acknowledgements loaded from the store")
				return nil
			}
		}
	})
	lc.add("silence loader", done, func(context.Context) error { stop(); <-done; return nil })
	return nil
}

// openConsole starts the analyst's console on console.listen; it stops before the
// router and the store it reads.
func (p *Pipeline) openConsole(cfg *Config, st store.Store, lc *lifecycle) error {
	s, err := console.New(cfg.Console, console.Options{
		Store:    st,
		Router:   p.alerts.router,
		Alerting: func() alerting.Config { return p.cfg.Load().Alerting },
		Silences: p.alerts.silences,
		Acks:     p.alerts.acks,
		Metrics:  prometheus.Gatherers{p.reg, prometheus.GathererFunc(p.alerts.Gather)},
		Logger:   p.log,
		Now:      p.opts.Now,
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
