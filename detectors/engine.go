package detectors

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

// Options carries the engine's runtime dependencies; the zero value of each field is a
// documented default.
type Options struct {
	// Baselines is where baselines are loaded from and written to; nil: an empty
	// MemoryBaselines.
	Baselines BaselineStore
	// Registerer receives the engine's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger logs changes of state, never single events; nil discards.
	Logger *slog.Logger
	// RunbookBaseURL is alerting.runbook_base_url: alerts link to
	// RunbookBaseURL/<detector>.md unless the detector sets its own runbook.
	RunbookBaseURL string
}

// An Engine runs the enabled detectors over a stream of events, by event time. It is not
// safe for concurrent use: one goroutine drives it, through Run or through Observe and
// Flush.
type Engine struct {
	store    BaselineStore
	log      *slog.Logger
	m        *metrics
	lateness int64

	started bool
	maxT    int64 // largest event time seen, ms
	wm      int64 // watermark: maxT - lateness

	dets []detector
	nc   *newCountry
	qs   *quietSpike
	dm   []detMetrics // per entry of dets
	dues []*int64     // per entry of dets
	// hashes holds, per detector, the key hashes of the run of events in hand, and ck
	// the hashes of their client keys, which new_country and forbidden_burst share.
	hashes [][prefetchRun]uint64
	ck     [prefetchRun]uint64
	needCK bool
	out    emitter

	loaded  bool
	pending []pendingBatch // Run: batches observed but not yet acknowledged, in order

	// refresh is baseline_refresh in ms (0: off); loadWM the watermark at the last
	// load of the baselines, valid when loadArmed (the first watermark after a load
	// that came before any event arms it).
	refresh   int64
	loadWM    int64
	loadArmed bool
}

// prefetchRun is how many events Observe prefetches state for at once: enough for the
// cache misses of a run to overlap, few enough for what they load to stay in cache.
const prefetchRun = 32

// detector is what the engine needs of each detector.
type detector interface {
	name() string
	// prefetchIndex computes the key hash of each event into hs, given ck, the hash of
	// each event's client key, and loads the index cells its lookup will start at.
	prefetchIndex(events []ingest.Event, ck, hs []uint64)
	// prefetchState loads the state the events will touch. The engine calls
	// prefetchIndex of every detector, then prefetchState of every detector, so that
	// the cache misses of a run of events, and of the detectors, overlap.
	prefetchState(events []ingest.Event, hs []uint64)
	// observe takes one event at time t (ms), with the hash prefetchIndex gave it; late
	// says it is before the watermark.
	observe(ev *ingest.Event, h uint64, t int64, late bool)
	// due points to the watermark at which advance has work to do; the engine reads
	// it for every event.
	due() *int64
	// advance evaluates what watermark wm closed and expires idle keys.
	advance(wm int64)
	// flush evaluates everything still open: the input is over.
	flush()
	// horizon is the earliest event time an open window or pending decision still
	// needs at watermark wm; math.MaxInt64 when none.
	horizon(wm int64) int64
	// stats returns the key counts for metrics.
	stats() (keys int, evictions, expired uint64)
}

// NewEngine checks cfg and builds the enabled detectors. It does no I/O: Run, or a call
// to LoadBaselines before the first Observe, loads the baselines.
func NewEngine(cfg Config, opts Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("detectors: invalid config: %w", err)
	}
	if opts.Baselines == nil {
		opts.Baselines = NewMemoryBaselines(Baselines{})
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		store:    opts.Baselines,
		log:      opts.Logger.With("component", "detectors"),
		m:        m,
		lateness: cfg.AllowedLateness.Milliseconds(),
		refresh:  cfg.BaselineRefresh.Milliseconds(),
	}
	env := func(name string, c Common, every time.Duration) *incidents {
		return newIncidents(name, c.Cooldown.Milliseconds(), every.Milliseconds(), c.MaxKeys,
			runbookURL(c.Runbook, opts.RunbookBaseURL, name), &e.out, e.m.alerts.WithLabelValues(name))
	}
	if c := cfg.NewCountry; c.Enabled {
		e.nc = newNewCountry(c, cfg.AllowedLateness, env(NewCountry, c.Common, 0))
		e.dets = append(e.dets, e.nc)
	}
	if c := cfg.TokenReuse; c.Enabled {
		e.dets = append(e.dets, newTokenReuse(c, cfg.AllowedLateness, env(TokenReuse, c.Common, c.Window)))
	}
	if c := cfg.ForbiddenBurst; c.Enabled {
		e.dets = append(e.dets, newForbiddenBurst(c, cfg.AllowedLateness, env(ForbiddenBurst, c.Common, c.Window)))
	}
	if c := cfg.QuietEndpointSpike; c.Enabled {
		e.qs = newQuietSpike(c, cfg.AllowedLateness, env(QuietEndpointSpike, c.Common, c.Window))
		e.dets = append(e.dets, e.qs)
	}
	e.hashes = make([][prefetchRun]uint64, len(e.dets))
	e.needCK = cfg.NewCountry.Enabled || cfg.ForbiddenBurst.Enabled
	for _, d := range e.dets {
		e.dues = append(e.dues, d.due())
		n := d.name()
		e.dm = append(e.dm, detMetrics{
			keys:       e.m.keys.WithLabelValues(n),
			evictionsC: e.m.evictions.WithLabelValues(n),
			expiredC:   e.m.expired.WithLabelValues(n),
		})
	}
	return e, nil
}

// LoadBaselines seeds the detectors from the BaselineStore. Call it once, before the
// first event; Run calls it unless it was called. Later loads are RefreshBaselines.
func (e *Engine) LoadBaselines(ctx context.Context) error {
	if e.loaded {
		return nil
	}
	b, err := e.store.LoadBaselines(ctx)
	if err != nil {
		return fmt.Errorf("detectors: load baselines: %w", err)
	}
	if e.nc != nil {
		e.nc.load(b.Keys)
	}
	if e.qs != nil {
		e.qs.load(b)
	}
	e.loaded = true
	e.loadWM, e.loadArmed = e.wm, e.started
	e.log.Info("baselines loaded", "keys", len(b.Keys), "routes", len(b.Routes))
	e.updateGauges()
	return nil
}

// SyncBaselines writes to the BaselineStore the baselines that changed since the last
// write.
func (e *Engine) SyncBaselines(ctx context.Context) error {
	var u Baselines
	if e.nc != nil {
		u.Keys = e.nc.takeDirty()
	}
	if e.qs != nil {
		u.TrafficSince, u.Routes = e.qs.takeDirty()
	}
	if len(u.Keys) == 0 && len(u.Routes) == 0 && u.TrafficSince.IsZero() {
		return nil
	}
	if err := e.store.UpdateBaselines(ctx, u); err != nil {
		return fmt.Errorf("detectors: write baselines: %w", err)
	}
	return nil
}

// Watermark returns the event-time watermark, the zero time before the first event.
func (e *Engine) Watermark() time.Time {
	if !e.started {
		return time.Time{}
	}
	return msTime(e.wm)
}

// Observe runs events through the detectors and returns the alerts they raised, sorted
// by the event time they were raised at, then detector, key and id. It uses event time
// only and does no I/O. The engine keeps no reference to events or their strings.
func (e *Engine) Observe(events []ingest.Event) []Alert {
	late := 0
	for start := 0; start < len(events); start += prefetchRun {
		run := events[start:min(start+prefetchRun, len(events))]
		ck := e.ck[:len(run)]
		if e.needCK {
			for i := range run {
				ck[i] = keyHash(run[i].ClientKey)
			}
		}
		for j, d := range e.dets {
			d.prefetchIndex(run, ck, e.hashes[j][:len(run)])
		}
		for j, d := range e.dets {
			d.prefetchState(run, e.hashes[j][:len(run)])
		}
		for i := range run {
			ev := &run[i]
			t := ev.Time.UnixMilli()
			if !e.started {
				e.started, e.maxT, e.wm = true, t, t-e.lateness
			}
			isLate := t < e.wm
			if isLate {
				late++
			} else if t > e.maxT {
				e.maxT, e.wm = t, t-e.lateness
			}
			for j, d := range e.dets {
				if e.wm >= *e.dues[j] {
					d.advance(e.wm)
				}
				d.observe(ev, e.hashes[j][i], t, isLate)
			}
		}
	}
	// Decisions that the last events made due (a late candidate) need no further event.
	for j, d := range e.dets {
		if e.started && e.wm >= *e.dues[j] {
			d.advance(e.wm)
		}
	}
	e.m.events.Add(float64(len(events)))
	if late > 0 {
		e.m.late.Add(float64(late))
	}
	if e.started {
		e.m.watermark.Set(float64(e.wm) / 1000)
	}
	e.updateGauges()
	return e.out.take()
}

// Flush ends the input: it evaluates every open window as if the watermark had passed
// it, decides every pending new country, ends every incident (emitting what was not yet
// emitted) and returns those alerts. Baselines are kept; windows start afresh for events
// observed after Flush.
func (e *Engine) Flush() []Alert {
	for j, d := range e.dets {
		if e.started && e.wm >= *e.dues[j] {
			d.advance(e.wm)
		}
		d.flush()
	}
	e.updateGauges()
	return e.out.take()
}

// horizon returns the earliest event time that an open window or pending decision still
// needs; events before it may be acknowledged.
func (e *Engine) horizon() int64 {
	if !e.started {
		return math.MinInt64
	}
	h := int64(math.MaxInt64)
	for _, d := range e.dets {
		h = min(h, d.horizon(e.wm))
	}
	return h
}

// updateGauges copies each detector's key counts into the metrics. Detectors count in
// plain integers so that the per-event path touches no metric.
func (e *Engine) updateGauges() {
	for i, d := range e.dets {
		keys, ev, ex := d.stats()
		dm := &e.dm[i]
		dm.keys.Set(float64(keys))
		if ev > dm.evictions {
			// Log when evictions start and each time they double, not per eviction.
			if bits.Len64(ev) > bits.Len64(dm.evictions) {
				e.log.Warn("detector at max_keys, evicting the coldest keys", "detector", d.name(), "evictions", ev, "keys", keys)
			}
			dm.evictionsC.Add(float64(ev - dm.evictions))
			dm.evictions = ev
		}
		if ex > dm.expired {
			dm.expiredC.Add(float64(ex - dm.expired))
			dm.expired = ex
		}
	}
}

// detMetrics are one detector's metric children, resolved once, and the counts they
// last reported.
type detMetrics struct {
	keys                 prometheus.Gauge
	evictionsC, expiredC prometheus.Counter
	evictions, expired   uint64
}
