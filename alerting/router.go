package alerting

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/gatewatch/gatewatch/detectors"
)

// RouterOptions carries the Router's runtime dependencies.
type RouterOptions struct {
	// Outbox keeps every delivery from before the first attempt until it is done;
	// required. The Router does not close it.
	Outbox OutboxStore
	// Receivers are the destinations by name, one for every receiver of the config
	// (cmd/gatewatch builds them); routes may name only these.
	Receivers map[string]Receiver
	// Logger logs changes of state (a receiver failing or recovering, a delivery
	// parked), never single alerts; nil discards.
	Logger *slog.Logger
	// Registerer receives the alerting metrics; required (tests pass
	// prometheus.NewPedanticRegistry()).
	Registerer prometheus.Registerer
	// Now is the clock of silences, reminders, give_up_after and the outbox's
	// timestamps; nil: time.Now. Backoff and rate limits wait on timers.
	Now func() time.Time
	// History records accepted alerts and delivery states for analysts, best-effort
	// and off the delivery path (see History); nil: none.
	History History
	// Silences are the silences made while running (the console, Slack), shared by
	// the Routers of a process so that a reload keeps them; nil: only the config's.
	Silences *Silences
	// Acks are the incidents' acknowledgements, handed to GroupReceivers so that
	// they show who is on an incident; nil: none.
	Acks *Acks
}

// ErrClosed is returned by Put after Close.
var ErrClosed = errors.New("alerting: router closed")

// defaultBatch is how many alerts one Notify call gets at most when the receiver
// does not say (BatchSizer): enough for one fsync or one POST to carry a burst, few
// enough that a retry repeats little.
const defaultBatch = 256

// defaultTimeout bounds one attempt when the receiver's config does not.
const defaultTimeout = 10 * time.Second

// pruneEvery is how often Run forgets deliveries older than the retention.
const pruneEvery = time.Hour

// A Router takes alerts (it is the engine's detectors.AlertSink), routes them to
// receivers, mutes the silenced, makes every delivery durable in the outbox and then
// delivers: one goroutine per receiver drains that receiver's queue with a rate
// limit, a timeout per attempt, retries with exponential backoff and jitter, and
// parks what cannot be delivered. It is safe for concurrent use.
//
// The stages, in Alertmanager's spirit (STYLE §10):
//
//	Put:  silence → route → outbox (durable; dedup by receiver, alert ID, version) → wake
//	Run:  per receiver: outbox queue → rate limit → attempt (timeout) → record
//	      (delivered; or retry after backoff / Retry-After; or parked)
//	      reminders: re-queue an open, unchanged incident after repeat_interval
type Router struct {
	cfg     Config
	store   OutboxStore
	log     *slog.Logger
	now     func() time.Time
	m       *metrics
	routes  routeTable
	silence silencer
	workers map[string]*worker
	rem     *reminders     // nil when no route repeats
	hist    *historyWriter // nil without RouterOptions.History
	acks    AckLookup      // nil without RouterOptions.Acks
	// longestInterval is the longest group_interval in force.
	longestInterval time.Duration

	// putMu orders Put against Close and against Run's start: Put holds it shared,
	// so Close waits for the Puts in flight, and Run reads the outbox depth while no
	// Put changes it.
	putMu  sync.RWMutex
	closed bool

	started  atomic.Bool
	stop     chan struct{} // closed by Close
	stopOnce sync.Once
	done     chan struct{} // closed when Run returns

	changeMu sync.Mutex
	changed  chan struct{} // closed and replaced whenever deliveries leave the queue
}

var _ detectors.AlertSink = (*Router)(nil)

// NewRouter checks cfg and o, fills defaults and starts nothing: Run delivers.
func NewRouter(cfg Config, o RouterOptions) (*Router, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.Outbox == nil {
		errs = append(errs, errors.New("alerting: RouterOptions.Outbox is required"))
	}
	if o.Registerer == nil {
		errs = append(errs, errors.New("alerting: RouterOptions.Registerer is required"))
	}
	for _, rc := range cfg.Receivers {
		if _, ok := o.Receivers[rc.Name]; !ok && rc.Name != "" {
			errs = append(errs, fmt.Errorf("alerting: receiver %q is configured but was not built", rc.Name))
		}
	}
	for i, rt := range cfg.Routes {
		for j, n := range rt.Receivers {
			if _, ok := o.Receivers[n]; !ok {
				errs = append(errs, fmt.Errorf("alerting: routes[%d].receivers[%d]: no receiver %q", i, j, n))
			}
		}
	}
	for n, rcv := range o.Receivers {
		if rcv == nil {
			errs = append(errs, fmt.Errorf("alerting: receiver %q is nil", n))
		} else if rcv.Name() != n {
			errs = append(errs, fmt.Errorf("alerting: receiver %q calls itself %q", n, rcv.Name()))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Router{
		cfg:     cfg,
		store:   o.Outbox,
		log:     o.Logger.With("component", "alerting"),
		now:     o.Now,
		m:       newMetrics(o.Registerer),
		silence: silencer{silences: cfg.Silences, set: o.Silences},
		workers: map[string]*worker{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
	}
	r.hist = newHistoryWriter(o.History, r.log, o.Registerer)
	if o.Acks != nil {
		r.acks = o.Acks
	}
	r.routes = newRouteTable(&cfg, slices.Sorted(maps.Keys(o.Receivers)))
	r.longestInterval = r.routes.longestGroupInterval()
	settings := map[string]ReceiverConfig{}
	for _, rc := range cfg.Receivers {
		settings[rc.Name] = rc
	}
	for _, n := range r.routes.all {
		w := newWorker(n, o.Receivers[n], settings[n], cfg.Outbox, r.m.forReceiver(n))
		_, renders := w.rcv.(GroupReceiver)
		w.grouped = renders || r.routes.groupingFor(n)
		r.workers[n] = w
	}
	if err := o.Registerer.Register(newOutboxCollector(o.Outbox, r.routes.all, o.Now)); err != nil {
		return nil, fmt.Errorf("alerting: register outbox metrics: %w", err)
	}
	repeats := cfg.RepeatInterval > 0
	for _, rt := range cfg.Routes {
		repeats = repeats || rt.RepeatInterval > 0
	}
	if repeats {
		r.rem = newReminders()
	}
	return r, nil
}

// putBatch is what flows through the stages of Put.
type putBatch struct {
	now     time.Time
	alerts  []detectors.Alert
	ds      []Delivery
	repeats []time.Duration // per delivery: the repeat interval of the route that chose it
}

func (b *putBatch) empty() bool { return len(b.alerts) == 0 && len(b.ds) == 0 }

type putStage func(ctx context.Context, r *Router, b *putBatch) error

// putStages are the stages of Put; each handles one concern and may shrink the
// batch, and an empty batch ends the run.
var putStages = []putStage{silenceStage, routeStage, outboxStage, announceStage}

// Put routes alerts and returns once every delivery they make is durable in the
// outbox: it is the engine's AlertSink. An alert version that a receiver already has
// (pending, delivered or parked) is not queued for it again, so putting the same
// alerts twice delivers nothing new. Alerts without an ID are refused, all of the call, before
// anything is stored.
func (r *Router) Put(ctx context.Context, alerts []detectors.Alert) error {
	var errs []error
	for i := range alerts {
		if alerts[i].ID == "" {
			errs = append(errs, fmt.Errorf("alerting: alert %d (%s %s) has no id", i, alerts[i].Detector, alerts[i].Key))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.putMu.RLock()
	defer r.putMu.RUnlock()
	if r.closed {
		return ErrClosed
	}
	b := &putBatch{now: r.now(), alerts: alerts}
	for _, s := range putStages {
		if b.empty() {
			return nil
		}
		if err := s(ctx, r, b); err != nil {
			return err
		}
	}
	return nil
}

// silenceStage drops the alerts a silence in force mutes.
func silenceStage(_ context.Context, r *Router, b *putBatch) error {
	if !r.silence.any() {
		return nil
	}
	kept := make([]detectors.Alert, 0, len(b.alerts))
	for i := range b.alerts {
		if r.silence.mutes(&b.alerts[i], b.now) {
			r.m.silenced.Inc()
			continue
		}
		kept = append(kept, b.alerts[i])
	}
	b.alerts = kept
	return nil
}

// routeStage turns each alert into a delivery per receiver its routes pick.
func routeStage(_ context.Context, r *Router, b *putBatch) error {
	var ts []target
	b.ds = make([]Delivery, 0, len(b.alerts))
	for i := range b.alerts {
		a := &b.alerts[i]
		ts = r.routes.match(a, ts[:0])
		if len(ts) == 0 {
			r.m.unrouted.Inc()
			continue
		}
		r.m.routed.Inc()
		for _, t := range ts {
			b.ds = append(b.ds, Delivery{DeliveryKey: KeyOf(t.receiver, a), Alert: *a, State: Pending, Queued: b.now})
			b.repeats = append(b.repeats, t.repeat)
		}
	}
	b.alerts = nil
	return nil
}

// outboxStage makes the deliveries durable; the outbox skips what a receiver already
// has, and the stage drops those from the batch.
func outboxStage(ctx context.Context, r *Router, b *putBatch) error {
	if err := r.store.Enqueue(ctx, b.ds); err != nil {
		return fmt.Errorf("alerting: outbox: enqueue: %w", err)
	}
	n := 0
	var dupes []Delivery
	for i := range b.ds {
		if b.ds[i].Seq == 0 {
			r.workers[b.ds[i].Receiver].m.dupes.Inc()
			dupes = append(dupes, b.ds[i])
			continue
		}
		b.ds[n], b.repeats[n] = b.ds[i], b.repeats[i]
		n++
	}
	b.ds, b.repeats = b.ds[:n], b.repeats[:n]
	// An alert the outbox already has may be missing from the history, which is
	// written after the outbox and without waiting: a crash between the two (the
	// engine raises the alert again after the restart) would leave it out for good.
	// Recording it again is an upsert of the same version.
	if len(dupes) > 0 {
		r.hist.add(historyRecord{alerts: distinctAlerts(dupes)})
	}
	return nil
}

// announceStage tells the workers (and the reminders) about what was queued, and
// the history (without waiting for it).
func announceStage(_ context.Context, r *Router, b *putBatch) error {
	r.hist.deliveries(b.ds, true)
	r.logQueued(b.ds)
	for i := range b.ds {
		r.workers[b.ds[i].Receiver].poke()
		if r.rem != nil && b.repeats[i] > 0 {
			r.rem.track(&b.ds[i])
		}
	}
	return nil
}

// logQueued logs each alert version of ds once, with the receivers it is queued for:
// the run's log tells what was raised without a look at the receivers. Keys are what
// the alerts carry, fingerprints of credentials, never the credentials.
func (r *Router) logQueued(ds []Delivery) {
	for i := 0; i < len(ds); {
		a := &ds[i].Alert
		receivers := []string{ds[i].Receiver}
		j := i + 1
		for ; j < len(ds) && ds[j].DeliveryKey.ID == ds[i].ID && ds[j].Version == ds[i].Version; j++ {
			receivers = append(receivers, ds[j].Receiver)
		}
		r.log.Info("alert queued", "alert_id", a.ID, "detector", a.Detector, "severity", a.Severity, "key", a.Key,
			"first_seen", a.FirstSeen, "last_seen", a.LastSeen, "receivers", strings.Join(receivers, ","), "summary", a.Summary)
		i = j
	}
}

// Plan returns the receivers a would reach now, after silences and routing, in
// routing order: what `notify --dry-run` prints. It reads no state: an alert that a
// receiver already has is still listed.
func (r *Router) Plan(a detectors.Alert) []string {
	if r.silence.mutes(&a, r.now()) {
		return nil
	}
	var names []string
	for _, t := range r.routes.match(&a, nil) {
		names = append(names, t.receiver)
	}
	return names
}

// Silenced reports whether a silence in force now mutes a.
func (r *Router) Silenced(a detectors.Alert) bool {
	return r.silence.mutes(&a, r.now())
}

// Deliveries returns what the outbox holds about the first delivery of a to each
// receiver Plan names: its state, attempts and last error. A receiver the outbox has
// nothing for (a is not put yet) gets a Delivery with State 0.
func (r *Router) Deliveries(ctx context.Context, a detectors.Alert) ([]Delivery, error) {
	var out []Delivery
	for _, n := range r.Plan(a) {
		k := KeyOf(n, &a)
		d, ok, err := r.store.Lookup(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("alerting: outbox: lookup: %w", err)
		}
		if !ok {
			d = Delivery{DeliveryKey: k}
		}
		out = append(out, d)
	}
	return out, nil
}

// Newest returns the LastSeen of the latest version of each of alerts' ids that the
// outbox holds (for any receiver, from the earliest of alerts on). An alert fed again
// by hand (notify) after a later version of it went out would reach its receivers after
// it, and a reader that keeps the last version of each alert would keep stale evidence.
func (r *Router) Newest(ctx context.Context, alerts []detectors.Alert) (map[string]time.Time, error) {
	if len(alerts) == 0 {
		return nil, nil
	}
	since := alerts[0].LastSeen
	for i := range alerts {
		if alerts[i].LastSeen.Before(since) {
			since = alerts[i].LastSeen
		}
	}
	ds, err := r.store.Recent(ctx, since)
	if err != nil {
		return nil, fmt.Errorf("alerting: outbox: recent: %w", err)
	}
	out := map[string]time.Time{}
	for i := range ds {
		if v := time.UnixMilli(ds[i].Version).UTC(); v.After(out[ds[i].ID]) {
			out[ds[i].ID] = v
		}
	}
	return out, nil
}

// Parked returns up to limit deliveries to receiver that were parked as failed.
func (r *Router) Parked(ctx context.Context, receiver string, limit int) ([]Delivery, error) {
	ds, err := r.store.Parked(ctx, receiver, limit)
	if err != nil {
		return nil, fmt.Errorf("alerting: outbox: parked: %w", err)
	}
	return ds, nil
}

// Stats returns where the queue of each receiver the outbox holds deliveries for
// stands: pending, parked and the age of the oldest pending.
func (r *Router) Stats(ctx context.Context) (map[string]QueueStats, error) {
	st, err := r.store.Stats(ctx)
	if err != nil {
		return nil, fmt.Errorf("alerting: outbox: stats: %w", err)
	}
	return st, nil
}

// Requeue sets every parked delivery of receiver pending again, with its attempts
// and give_up_after clock reset, and returns how many: an operator's retry once the
// destination is fixed.
func (r *Router) Requeue(ctx context.Context, receiver string) (int, error) {
	w, ok := r.workers[receiver]
	if !ok {
		return 0, fmt.Errorf("alerting: no receiver %q", receiver)
	}
	r.putMu.RLock()
	defer r.putMu.RUnlock()
	n := 0
	for {
		ds, err := r.store.Parked(ctx, receiver, defaultBatch)
		if err != nil || len(ds) == 0 {
			if err != nil {
				err = fmt.Errorf("alerting: outbox: parked: %w", err)
			}
			return n, err
		}
		now := r.now()
		for i := range ds {
			ds[i].State, ds[i].Queued, ds[i].Attempts, ds[i].FirstFailure, ds[i].LastError, ds[i].Done = Pending, now, 0, time.Time{}, "", time.Time{}
		}
		if err := r.store.Update(ctx, ds); err != nil {
			return n, fmt.Errorf("alerting: outbox: requeue: %w", err)
		}
		n += len(ds)
		w.poke()
		r.log.Info("parked deliveries requeued", "receiver", receiver, "deliveries", len(ds))
	}
}

// RequeueDelivery sets the parked delivery k pending again, as Requeue does for a
// whole receiver: an operator's re-send of one alert. It reports false when k is not
// parked (delivered meanwhile, requeued already, or unknown).
func (r *Router) RequeueDelivery(ctx context.Context, k DeliveryKey) (bool, error) {
	w, ok := r.workers[k.Receiver]
	if !ok {
		return false, fmt.Errorf("alerting: no receiver %q", k.Receiver)
	}
	r.putMu.RLock()
	defer r.putMu.RUnlock()
	d, found, err := r.store.Lookup(ctx, k)
	if err != nil {
		return false, fmt.Errorf("alerting: outbox: lookup: %w", err)
	}
	if !found || d.State != Failed {
		return false, nil
	}
	d.State, d.Queued, d.Attempts, d.FirstFailure, d.LastError, d.Done = Pending, r.now(), 0, time.Time{}, "", time.Time{}
	if err := r.store.Update(ctx, []Delivery{d}); err != nil {
		return false, fmt.Errorf("alerting: outbox: requeue: %w", err)
	}
	w.poke()
	r.log.Info("parked delivery requeued", "receiver", k.Receiver, "alert_id", k.ID)
	return true, nil
}

// Receivers returns the names of the receivers the Router delivers to, sorted.
func (r *Router) Receivers() []string { return slices.Clone(r.routes.all) }

// Run delivers what the outbox holds and what Put adds, until ctx ends (it returns
// nil), Close is called (it finishes the attempts in flight and returns nil) or the
// outbox fails (it returns the error). A delivery whose attempt ctx cut short stays
// pending and is sent again by the next Run. Run may be called once.
func (r *Router) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("alerting: Router.Run called twice")
	}
	defer close(r.done)
	if err := r.resume(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	// wctx ends the waits (queue, backoff, rate limit) at Close as well; attempts
	// use gctx, so that Close lets them finish.
	wctx, cancel := context.WithCancel(gctx)
	defer cancel()
	g.Go(func() error {
		select {
		case <-r.stop:
			cancel()
		case <-wctx.Done():
		}
		return nil
	})
	for _, n := range r.routes.all {
		w := r.workers[n]
		if w.grouped {
			g.Go(func() error { return r.deliverGrouped(gctx, wctx, w) })
			continue
		}
		g.Go(func() error { return r.deliver(gctx, wctx, w) })
	}
	if r.rem != nil {
		g.Go(func() error { return r.remindLoop(gctx, wctx) })
	}
	g.Go(func() error { return r.pruneLoop(gctx, wctx) })
	// The history writer stops after the workers, not with them: an attempt that
	// Close lets finish records its outcome on the way out.
	histStop, histDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(histDone)
		if r.hist != nil {
			r.hist.run(ctx, histStop)
		}
	}()
	err := g.Wait()
	close(histStop)
	<-histDone
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// resume reads where the outbox stands: the receivers it holds deliveries for that
// are no longer configured, the incidents to remind of and to record in the history.
func (r *Router) resume(ctx context.Context) error {
	r.putMu.Lock()
	defer r.putMu.Unlock()
	stats, err := r.store.Stats(ctx)
	if err != nil {
		return fmt.Errorf("alerting: outbox: stats: %w", err)
	}
	for _, n := range slices.Sorted(maps.Keys(stats)) {
		if _, ok := r.workers[n]; !ok && stats[n].Pending > 0 {
			// Not an error: a receiver may be removed on purpose. But its queue
			// stays until it comes back, and someone must know.
			r.log.Warn("outbox holds deliveries for a receiver that is not configured", "receiver", n, "pending", stats[n].Pending)
		}
	}
	if r.rem == nil && r.hist == nil {
		return nil
	}
	ds, err := r.store.Recent(ctx, r.now().Add(-r.cfg.ResolveTimeout))
	if err != nil {
		return fmt.Errorf("alerting: outbox: recent: %w", err)
	}
	// The history is written after the outbox, without waiting: a crash in between,
	// after which the engine does not raise the alert again (its batch was committed),
	// would leave an alert that was delivered out of the history for good. Recording
	// the incidents that may still be open again is an upsert of the same versions.
	r.hist.add(historyRecord{alerts: distinctAlerts(ds)})
	if r.rem == nil {
		return nil
	}
	for i := range ds {
		d := &ds[i]
		if _, ok := r.workers[d.Receiver]; ok && r.repeatFor(&d.Alert, d.Receiver) > 0 {
			r.rem.track(d)
		}
	}
	return nil
}

// Flush waits until no configured receiver has a pending delivery: each was
// delivered or parked. It needs Run; a receiver that keeps failing holds it until
// give_up_after or until ctx ends (it returns the context's cause).
func (r *Router) Flush(ctx context.Context) error {
	for {
		ch := r.changes()
		stats, err := r.store.Stats(ctx)
		if err != nil {
			return fmt.Errorf("alerting: outbox: stats: %w", err)
		}
		pending := 0
		for n := range r.workers {
			pending += stats[n].Pending
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-r.done:
			return errors.New("alerting: flush: the router is not running")
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// Close refuses further Puts, waits for those in flight, and lets Run finish the
// attempts in flight and return; it waits for that, or for ctx. What is still
// pending stays in the outbox for the next Run.
func (r *Router) Close(ctx context.Context) error {
	r.putMu.Lock()
	r.closed = true
	r.putMu.Unlock()
	r.stopOnce.Do(func() { close(r.stop) })
	if !r.started.Load() {
		return nil
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("alerting: close: %w", context.Cause(ctx))
	}
}

// changes returns a channel that is closed at the next change of the queues.
func (r *Router) changes() <-chan struct{} {
	r.changeMu.Lock()
	defer r.changeMu.Unlock()
	return r.changed
}

// broadcast wakes everyone waiting on changes.
func (r *Router) broadcast() {
	r.changeMu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.changeMu.Unlock()
}

// pruneLoop forgets, at start and every pruneEvery, the deliveries delivered longer
// than the retention ago.
func (r *Router) pruneLoop(ctx, wctx context.Context) error {
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		n, err := r.store.Prune(ctx, r.now().Add(-r.cfg.Outbox.Retention))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("alerting: outbox: prune: %w", err)
		}
		if n > 0 {
			r.log.Info("outbox pruned", "deliveries", n)
		}
		select {
		case <-t.C:
		case <-wctx.Done():
			return nil
		}
	}
}
