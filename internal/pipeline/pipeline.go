// Package pipeline wires gatewatch's parts into the running service: the Kafka source
// (parsers, dead letters), the detector engine (baselines and open incidents in the
// store), the event archive, the router with its durable outbox and receivers, and the
// admin endpoints. One type owns the start-up and the ordered shutdown of all of it, so
// `run` and `demo` are wired one way.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/alerting/outbox"
	"github.com/gatewatch/gatewatch/alerting/slack"
	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/kafka"
	"github.com/gatewatch/gatewatch/internal/cluster"
	"github.com/gatewatch/gatewatch/internal/console"
	"github.com/gatewatch/gatewatch/store"
)

// Config is what the pipeline runs: each part's section of gatewatch.yaml.
type Config struct {
	Ingest    ingest.Config
	Detectors detectors.Config
	Store     store.Config
	Alerting  alerting.Config
	Admin     AdminConfig
	Console   console.Config
	Cluster   *cluster.Config // nil: one instance reads the raw topics and runs every detector
}

// AdminConfig is the admin endpoint: /metrics, /healthz, /readyz.
type AdminConfig struct {
	Listen string `yaml:"listen"` // host:port; empty: no admin endpoint
}

// A ReceiverBuilder turns the configured receivers into live ones; the returned closer
// releases their connections and files. cmd/gatewatch owns the one that knows every
// receiver kind.
type ReceiverBuilder func(cfg alerting.Config, env ReceiverEnv, log *slog.Logger) (map[string]alerting.Receiver, io.Closer, error)

// ReceiverEnv is what receivers are built with besides their config.
type ReceiverEnv struct {
	DataDir string // store.data_dir, where receivers keep their own state
	// SlackThreads, in cluster mode, is where Slack receivers keep their incidents'
	// threads for every replica (slack.Shared), since an incident moves with its task;
	// nil otherwise.
	SlackThreads slack.ThreadStore
}

// Options are the pipeline's runtime dependencies.
type Options struct {
	// Receivers builds the receivers; required.
	Receivers ReceiverBuilder
	// Logger logs changes of state; nil discards.
	Logger *slog.Logger
	// Registry receives every metric of the pipeline and is what /metrics serves; nil:
	// a new one.
	Registry *prometheus.Registry
	// Now is the wall clock: idle partitions, silences, retries; nil: time.Now.
	Now func() time.Time
	// WrapSource, when set, wraps the Kafka source the engine reads: the demo ends its
	// run once every record it produced came through.
	WrapSource func(detectors.EventSource) detectors.EventSource
	// ShutdownTimeout bounds the ordered shutdown; 0: 30s.
	ShutdownTimeout time.Duration
	// Version and Commit are reported by gatewatch_build_info.
	Version, Commit string
}

// A Pipeline is the live service. New builds nothing that does I/O; Run opens the
// parts, runs them until its context ends (or a wrapped source ends), and shuts them
// down in order.
type Pipeline struct {
	opts Options
	log  *slog.Logger
	reg  *prometheus.Registry
	m    *metrics

	cfg atomic.Pointer[Config] // the config in force; Reload swaps it

	// Set by Run; mu guards detection and alerts, which Reload reads from another
	// goroutine.
	mu       sync.Mutex
	reloadMu sync.Mutex // one reload at a time
	store    store.Store
	source   *kafka.Source
	// detection prepares a changed detectors section for the engine, or for every
	// task of a cluster replica: apply puts it in force and cannot fail.
	detection func(detectors.Config) (apply func(), err error)
	alerts    *routerSwitch
	admin     *admin
	console   *console.Server
	ready     readiness

	stopped chan struct{} // closed when Run returns
	runOnce sync.Once
}

// New checks opts. It opens nothing: Run (the live service) and OpenDelivery (the
// delivery part alone) do.
func New(cfg Config, opts Options) (*Pipeline, error) {
	if opts.Receivers == nil {
		return nil, errors.New("pipeline: Options.Receivers is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 30 * time.Second
	}
	p := &Pipeline{
		opts:    opts,
		log:     opts.Logger,
		reg:     opts.Registry,
		stopped: make(chan struct{}),
	}
	p.cfg.Store(&cfg)
	p.m = newMetrics(p.reg, opts.Version, opts.Commit)
	if err := p.reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("pipeline: metrics: %w", err)
	}
	if err := p.reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("pipeline: metrics: %w", err)
	}
	return p, nil
}

// Registry returns the registry /metrics serves.
func (p *Pipeline) Registry() *prometheus.Registry { return p.reg }

// Run opens every part, runs the pipeline until ctx ends or the source does, and shuts
// it down in order: stop fetching, finish the batch in flight, make its alerts durable,
// commit what no open window needs, flush the store and the outbox, close the clients.
// It returns nil after a stop asked for through ctx.
func (p *Pipeline) Run(ctx context.Context) (err error) {
	first := false
	p.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("pipeline: Run called twice")
	}
	defer close(p.stopped)
	cfg := p.cfg.Load()
	if err := checkRun(cfg); err != nil {
		return err
	}
	var lc lifecycle
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.opts.ShutdownTimeout)
		defer cancel()
		err = errors.Join(err, lc.stop(stopCtx, p.log))
	}()

	p.mu.Lock()
	p.alerts = &routerSwitch{p: p}
	p.mu.Unlock()

	// Admin first, so that health and the metrics of start-up are visible; it stops last.
	if cfg.Admin.Listen != "" {
		g := prometheus.Gatherers{p.reg, prometheus.GathererFunc(p.alerts.Gather)}
		a, err := newAdmin(cfg.Admin.Listen, g, &p.ready, p.log)
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.admin = a
		p.mu.Unlock()
		lc.add("admin", a.serve(), a.shutdown)
	}
	st, err := p.openDelivery(ctx, cfg, &lc)
	if err != nil {
		return err
	}
	lc.add("alerting", nil, p.alerts.stop)
	if cfg.Console.Listen != "" {
		if err := p.openConsole(cfg, st, &lc); err != nil {
			return err
		}
	}

	// Ingest: dead letters, then the Kafka source.
	dl, closeDL, err := OpenDeadLetters(cfg.Ingest)
	if err != nil {
		return err
	}
	lc.add("dead letters", nil, func(context.Context) error { return closeDL() })
	if cfg.Cluster != nil {
		return p.runCluster(ctx, cfg, st, dl)
	}
	popts, err := cfg.Ingest.ParserOptions(false)
	if err != nil {
		return err
	}
	src, err := kafka.NewSource(cfg.Ingest.Kafka, kafka.Options{
		ParserOptions: popts,
		DeadLetters:   dl,
		Registerer:    p.reg,
		Logger:        p.log,
		Now:           p.opts.Now,
	})
	if err != nil {
		return err
	}
	p.source = src
	lc.add("kafka source", nil, func(context.Context) error { return src.Close() })

	// Detection.
	eng, err := detectors.NewEngine(cfg.Detectors, detectors.Options{
		Baselines:      st,
		Incidents:      st,
		Scope:          cfg.Ingest.Kafka.Group,
		Registerer:     p.reg,
		Logger:         p.log,
		RunbookBaseURL: cfg.Alerting.RunbookBaseURL,
		Now:            p.opts.Now,
	})
	if err != nil {
		return err
	}
	p.setDetection(func(c detectors.Config) (func(), error) {
		r, err := eng.PrepareReload(c)
		if err != nil {
			return nil, err
		}
		return r.Apply, nil
	})
	acks := newAcker(st, p.log, p.m)
	var events detectors.EventSource = &archiving{p: p, src: src, acks: acks, archive: cfg.Store.Archive}
	if p.opts.WrapSource != nil {
		events = p.opts.WrapSource(events)
	}
	p.ready.set(st, src)
	readyCtx, stopReady := context.WithCancel(ctx)
	readyDone := goRun(func() error { p.ready.run(readyCtx, p.log); return nil })

	p.log.Info("gatewatch running", "topics", len(cfg.Ingest.Kafka.Topics), "group", cfg.Ingest.Kafka.Group, "admin", cfg.Admin.Listen)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return acks.run(gctx) })
	g.Go(func() error {
		err := eng.Run(gctx, events, p.alerts)
		// The engine stopped (the input ended, or a stop was asked for): what it
		// acknowledged is committed by the acker, which then ends.
		acks.close()
		return err
	})
	err = g.Wait()
	stopReady()
	<-readyDone
	p.ready.stopping()
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// checkRun reports what the live service needs that cfg lacks.
func checkRun(cfg *Config) error {
	var errs []error
	if len(cfg.Ingest.Kafka.Brokers) == 0 {
		errs = append(errs, errors.New("pipeline: ingest.kafka.brokers: run reads Kafka; name the brokers"))
	}
	if len(cfg.Ingest.Kafka.Topics) == 0 {
		errs = append(errs, errors.New("pipeline: ingest.kafka.topics: name at least one topic and its format"))
	}
	if cfg.Ingest.DeadLetter.File == "" && cfg.Ingest.DeadLetter.Topic == "" {
		errs = append(errs, errors.New("pipeline: ingest.dead_letter: run keeps every rejected record; set a topic or a file"))
	}
	return errors.Join(errs...)
}

// openDelivery opens what every use of the pipeline delivers alerts with, in order,
// adding each to lc: the data directory, the store (the alert history, and for Run the
// baselines, open incidents and archive), the outbox, and the receivers with a router
// over them, running.
func (p *Pipeline) openDelivery(ctx context.Context, cfg *Config, lc *lifecycle) (store.Store, error) {
	if err := os.MkdirAll(cfg.Store.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("pipeline: data_dir: %w", err)
	}
	st, err := store.Open(cfg.Store, store.Options{
		Logger:     p.log.With("component", "store"),
		Registerer: p.reg,
		Baselines:  store.BaselineSettingsFrom(cfg.Detectors),
	})
	if err != nil {
		return nil, err
	}
	p.store = st
	storeCtx, stopStore := context.WithCancel(context.WithoutCancel(ctx))
	storeDone := goRun(func() error { return st.Run(storeCtx) })
	lc.add("store", nil, func(ctx context.Context) error {
		stopStore()
		<-storeDone
		return st.Close(ctx)
	})
	if ch, ok := st.(*store.ClickHouse); ok {
		p.migrate(ctx, ch)
	}
	ob, err := outbox.Open(OutboxDir(cfg), outbox.Options{Logger: p.log})
	if err != nil {
		return nil, err
	}
	lc.add("outbox", nil, func(context.Context) error { return ob.Close() })
	p.alerts.outbox, p.alerts.history = ob, st
	if err := p.openAnalyst(ctx, st, lc); err != nil {
		return nil, err
	}
	if err := p.alerts.start(ctx, cfg); err != nil {
		return nil, err
	}
	return st, nil
}

// OutboxDir is where the durable outbox lives: alerting.outbox.dir, else
// <store.data_dir>/outbox. run and notify share it, so what notify re-sends is the
// live service's.
func OutboxDir(cfg *Config) string {
	if cfg.Alerting.Outbox.Dir != "" {
		return cfg.Alerting.Outbox.Dir
	}
	return filepath.Join(cfg.Store.DataDir, "outbox")
}

// A Delivery is the delivery part of the pipeline on its own, as `notify` uses it: the
// store for the alert history, the outbox, the receivers and the router over them,
// opened and closed as Run opens and closes them.
type Delivery struct {
	p  *Pipeline
	lc lifecycle
}

// OpenDelivery opens the delivery part and starts its router.
func (p *Pipeline) OpenDelivery(ctx context.Context) (*Delivery, error) {
	d := &Delivery{p: p}
	p.mu.Lock()
	p.alerts = &routerSwitch{p: p}
	p.mu.Unlock()
	if _, err := p.openDelivery(ctx, p.cfg.Load(), &d.lc); err != nil {
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.opts.ShutdownTimeout)
		defer cancel()
		return nil, errors.Join(err, d.lc.stop(stopCtx, p.log))
	}
	return d, nil
}

// Router returns the router; it runs until StopRouter.
func (d *Delivery) Router() *alerting.Router { return d.p.alerts.cur.router }

// StopRouter stops the router, letting the attempts in flight finish within timeout
// (after it they are cut short and stay pending). What the outbox holds can still be
// read through the router.
func (d *Delivery) StopRouter(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.p.alerts.cur.halt(ctx)
}

// Close stops the router and closes, last opened first, what OpenDelivery opened.
func (d *Delivery) Close(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return errors.Join(d.p.alerts.cur.stop(ctx), d.lc.stop(ctx, d.p.log))
}

// migrate brings the ClickHouse schema up to date at start-up. A server that does not
// answer delays it: the store writes to its spill meanwhile, and readiness retries.
func (p *Pipeline) migrate(ctx context.Context, ch *store.ClickHouse) {
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := ch.Migrate(mctx); err != nil {
		p.log.Warn("clickhouse schema not migrated at start-up; writes wait in the spill, readiness reports it", "component", "store", "err", err)
		p.ready.needMigrate(ch)
	}
}

// OpenDeadLetters opens the dead-letter sinks cfg names (the file, the topic, or
// both), behind the ones in front (a report on stderr, a count), and returns them with
// what closes them. run, replay and parse all keep rejected records this way.
func OpenDeadLetters(cfg ingest.Config, front ...ingest.DeadLetters) (ingest.DeadLetters, func() error, error) {
	sinks := ingest.TeeDeadLetters(front)
	var closers []io.Closer
	closeAll := func() error {
		var errs []error
		for _, c := range closers {
			errs = append(errs, c.Close())
		}
		return errors.Join(errs...)
	}
	if f := cfg.DeadLetter.File; f != "" {
		fd, err := ingest.OpenFileDeadLetters(f)
		if err != nil {
			return nil, nil, fmt.Errorf("ingest.dead_letter.file: %w", err)
		}
		sinks, closers = append(sinks, fd), append(closers, fd)
	}
	if t := cfg.DeadLetter.Topic; t != "" {
		w, err := kafka.NewDeadLetterWriter(cfg.Kafka, t)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("ingest.dead_letter.topic: %w", err)
		}
		sinks, closers = append(sinks, w), append(closers, w)
	}
	if len(sinks) == 1 {
		return sinks[0], closeAll, nil
	}
	return sinks, closeAll, nil
}

// goRun runs fn on a goroutine and returns a channel that gets its result.
func goRun(fn func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	return done
}

// lifecycle is the pipeline's parts in the order they started; stop stops them in
// reverse order, each bounded by the shutdown's context, and reports every failure.
type lifecycle struct {
	steps []step
}

type step struct {
	name string
	done <-chan error // the part's goroutine, when it has one
	stop func(ctx context.Context) error
}

func (l *lifecycle) add(name string, done <-chan error, stop func(ctx context.Context) error) {
	l.steps = append(l.steps, step{name, done, stop})
}

func (l *lifecycle) stop(ctx context.Context, log *slog.Logger) error {
	var errs []error
	for i := len(l.steps) - 1; i >= 0; i-- {
		s := l.steps[i]
		start := time.Now()
		err := s.stop(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("stopping %s: %w", s.name, err))
		}
		log.Debug("stopped", "part", s.name, "took", time.Since(start), "err", err)
	}
	return errors.Join(errs...)
}
