package detectors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

// Options carries the engine's runtime dependencies; Registerer is required, and the
// zero value of every other field is a documented default.
type Options struct {
	// Baselines is where baselines are loaded from and written to; nil: an empty
	// MemoryBaselines of MemoryLimits.
	Baselines BaselineStore
	// Registerer receives the engine's metrics; required (tests pass
	// prometheus.NewPedanticRegistry()).
	Registerer prometheus.Registerer
	// Logger logs changes of state, never single events; nil discards.
	Logger *slog.Logger
	// RunbookBaseURL is alerting.runbook_base_url: alerts link to
	// RunbookBaseURL/<detector>.md unless the detector sets its own runbook.
	RunbookBaseURL string
	// Incidents keeps the open incidents across restarts (see IncidentStore), under
	// Scope; nil: they are not kept, and a restart opens an attack still under way
	// again (a new alert id) once its events from before the committed offsets are gone.
	Incidents IncidentStore
	Scope     string
	// Now is the wall clock, read once per batch: a partition that delivered nothing
	// for idle_timeout stops holding back the watermark, and a record more than
	// max_ahead ahead of it is judged ahead. nil (replay): event time alone decides.
	Now func() time.Time
}

// An Engine runs the enabled detectors over a stream of events, by event time. It is not
// safe for concurrent use: one goroutine drives it, through Run or through Observe and
// Flush. The one exception is a reload (Reconfigure, Reload.Apply), which may come from
// another goroutine while Run runs, and lands between two batches.
type Engine struct {
	// mu is held by Run while it handles a batch, and by Reload.Apply, which may come
	// from another goroutine: a reload lands between batches.
	mu          sync.Mutex
	cfg         Config // in force
	runbookBase string

	store BaselineStore
	fetch *fetcher // on-demand loading of the keys the detectors do not hold
	log   *slog.Logger
	m     *metrics
	now   func() time.Time // nil: partitions never go idle
	wms   *watermarks      // event time per partition and the watermark

	behind      int       // partitions behind at the last report
	lastRelease time.Time // wall clock of the last release in Run, when it has a clock

	incStore  IncidentStore
	incLoaded bool
	scope     string
	incs      []*incidents // each detector's

	dets     []detector
	pf       []prefetching // the detectors that prefetch, with their index in dets
	learners []learner     // the detectors whose baselines persist
	nc       *newCountry
	qs       *quietSpike
	traffic  *traffic
	dm       []detMetrics // per entry of dets
	dues     []*int64     // per entry of dets
	// hashes holds, per detector, the key hashes of the run of events in hand, and rh
	// the hashes of their client keys and IPs, which several detectors share.
	hashes [][prefetchRun]uint64
	rh     runHashes
	// heldHashes serve held records, run through the detectors once decided.
	heldHashes          [][prefetchRun]uint64
	steps               [prefetchRun]step // the run in hand, judged
	needCK, needIP      bool
	needPath, needRoute bool
	loadAhead           bool    // prefetch loads state (see prefetchMinKeys)
	addr                AddrBuf // for the address keys of hs.ip
	out                 emitter

	loaded  bool
	pending []pendingBatch // Run: batches observed but not yet acknowledged, in order

	// refresh is baseline_refresh in ms (0: off); loadWM the watermark at the last
	// load of the baselines, valid when loadArmed (the first watermark after a load
	// that came before any event arms it).
	refresh   int64
	loadWM    int64
	loadArmed bool
	// lastRefresh is the wall clock at the last periodic refresh (see refreshMinWall).
	lastRefresh time.Time
	// since is what the last load returned to pass to the next (see BaselineChanges;
	// 0: load every baseline), and loadLim the limits it loaded with: a refresh with
	// other limits (a reload turned a detector on) loads every baseline again.
	since   uint64
	loadLim BaselineLimits
}

// prefetchRun is how many events Observe prefetches state for at once: enough for the
// cache misses of a run to overlap, few enough for what they load to stay in cache.
const prefetchRun = 32

// detector is what the engine needs of each detector.
type detector interface {
	name() string
	// observe takes one event at time t (ms), with its hashes; late says it is before
	// the watermark.
	observe(ev *ingest.Event, h evHashes, t int64, late bool)
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

// A prefetcher is a detector whose state for a run of events is worth loading before
// the events are observed: one keyed by a client, with a table too large for the CPU's
// caches. The engine calls prefetchIndex of every prefetcher, then prefetchState of
// every prefetcher, so that the cache misses of a run of events, and of the detectors,
// overlap.
type prefetcher interface {
	// prefetchIndex computes the key hash of each event into out, given the hashes
	// the detectors share, and loads the index cells its lookup will start at.
	prefetchIndex(events []ingest.Event, hs *runHashes, out []uint64)
	// prefetchState loads the state the events will touch.
	prefetchState(events []ingest.Event, hs []uint64)
}

type prefetching struct {
	p prefetcher
	j int // index in dets
}

// runHashes are the hashes of a run of events' client keys, client address keys (see
// AddrKey), paths and routes (see routeHash), computed once for the detectors that
// read them.
type runHashes struct{ ck, ip, path, route [prefetchRun]uint64 }

// evHashes are what the engine hands a detector with an event: the key hash its
// prefetchIndex computed (0 for a detector that does not prefetch), and the hashes of
// the event's path and route, 0 when no detector that the engine computes them for is
// on (see pathHash and routeHashOf).
type evHashes struct{ key, path, route uint64 }

// pathHash returns hash64(ev.Path).
func (h evHashes) pathHash(ev *ingest.Event) uint64 {
	if h.path != 0 {
		return h.path
	}
	return hash64(ev.Path)
}

// routeHashOf returns routeHash(ev.Method, ev.Route).
func (h evHashes) routeHashOf(ev *ingest.Event) uint64 {
	if h.route != 0 {
		return h.route
	}
	return routeHash(ev.Method, ev.Route)
}

// fill computes the hashes of events that some detector needs.
func (e *Engine) fillHashes(events []ingest.Event, hs *runHashes) {
	if e.needCK {
		for i := range events {
			hs.ck[i] = keyHash(events[i].ClientKey)
		}
	}
	if e.needIP {
		for i := range events {
			hs.ip[i] = keyHash(AddrKey(events[i].ClientIP, &e.addr))
		}
	}
	if e.needPath {
		for i := range events {
			hs.path[i] = hash64(events[i].Path)
		}
	}
	if e.needRoute {
		for i := range events {
			hs.route[i] = routeHash(events[i].Method, events[i].Route)
		}
	}
}

// prefetch runs the prefetchers over events, their hashes going to hashes. The state
// is loaded ahead only while the prefetchers hold prefetchMinKeys keys or more.
func (e *Engine) prefetch(events []ingest.Event, hs *runHashes, hashes [][prefetchRun]uint64) {
	e.fillHashes(events, hs)
	for _, p := range e.pf {
		p.p.prefetchIndex(events, hs, hashes[p.j][:len(events)])
	}
	if !e.loadAhead {
		return
	}
	for _, p := range e.pf {
		p.p.prefetchState(events, hashes[p.j][:len(events)])
	}
}

// prefetchMinKeys is how many keys the prefetchers together hold before their state is
// loaded ahead of a run. With fewer, it stays in the CPU's caches, and loading it ahead
// only costs: on the replay benchmark's traffic (400 clients, 4,300 keys) skipping it
// made the detectors 7% faster; on BenchmarkEngine's, 150 clients (about 8,500 keys)
// gained 5%, 500 (24,000) neither gained nor lost, 3,000 (200,000) lost 20%.
const prefetchMinKeys = 16_384

// setLoadAhead decides, once a batch, whether prefetch loads state ahead.
func (e *Engine) setLoadAhead() {
	keys := 0
	for _, p := range e.pf {
		n, _, _ := e.dets[p.j].stats()
		keys += n
	}
	e.loadAhead = keys >= prefetchMinKeys
}

// NewEngine checks cfg and builds the enabled detectors. It does no I/O: Run, or a call
// to LoadBaselines before the first Observe, loads the baselines.
func NewEngine(cfg Config, opts Options) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("detectors: invalid config: %w", err)
	}
	if opts.Baselines == nil {
		opts.Baselines = NewMemoryBaselines(Baselines{}, MemoryLimits(cfg))
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		return nil, errors.New("detectors: Options.Registerer is required")
	}
	log := opts.Logger.With("component", "detectors")
	m := newMetrics(opts.Registerer)
	e := &Engine{
		cfg:         cfg,
		runbookBase: opts.RunbookBaseURL,
		store:       opts.Baselines,
		log:         log,
		m:           m,
		now:         opts.Now,
		refresh:     cfg.BaselineRefresh.Milliseconds(),
		wms:         newWatermarks(cfg.AllowedLateness, cfg.MaxAhead, cfg.MaxSkew, cfg.IdleTimeout, m.lateLag, log),
		incStore:    opts.Incidents,
		scope:       opts.Scope,
	}
	env := func(name string, c Common, every time.Duration) *incidents {
		inc := newIncidents(name, c.Cooldown.Milliseconds(), every.Milliseconds(), c.MaxKeys,
			runbookURL(c.Runbook, opts.RunbookBaseURL, name), &e.out, e.m.alerts.MustCurryWith(prometheus.Labels{"detector": name}))
		e.incs = append(e.incs, inc)
		return inc
	}
	// A key's state must hold every event that is not late: from the watermark to the
	// leading partition's newest, allowed_lateness and max_skew ahead of it.
	spread := cfg.AllowedLateness + cfg.MaxSkew
	e.traffic = newTraffic()
	if c := cfg.NewCountry; c.Enabled {
		e.nc = newNewCountry(c, spread, env(NewCountry, c.Common, 0))
		e.dets = append(e.dets, e.nc)
	}
	if c := cfg.TokenReuse; c.Enabled {
		e.dets = append(e.dets, newTokenReuse(c, spread, env(TokenReuse, c.Common, c.Window)))
	}
	if c := cfg.ForbiddenBurst; c.Enabled {
		e.dets = append(e.dets, newForbiddenBurst(c, spread, env(ForbiddenBurst, c.Common, c.Window)))
	}
	if c := cfg.QuietEndpointSpike; c.Enabled {
		e.qs = newQuietSpike(c, spread, e.traffic, env(QuietEndpointSpike, c.Common, c.Window))
		e.dets = append(e.dets, e.qs)
	}
	if c := cfg.ObjectEnumeration; c.Enabled {
		e.dets = append(e.dets, newObjectEnumeration(c, spread, e.traffic, env(ObjectEnumeration, c.Common, c.Window)))
	}
	if c := cfg.AuthFailureSpray; c.Enabled {
		e.dets = append(e.dets, newAuthFailureSpray(c, spread, env(AuthFailureSpray, c.Common, c.Window)))
	}
	if c := cfg.PrivilegeAnomaly; c.Enabled {
		e.dets = append(e.dets, newPrivilegeAnomaly(c, spread, e.traffic, env(PrivilegeAnomaly, c.Common, c.Window)))
	}
	if c := cfg.ClientVolumeSpike; c.Enabled {
		e.dets = append(e.dets, newClientVolumeSpike(c, spread, env(ClientVolumeSpike, c.Common, c.Window)))
	}
	if c := cfg.RouteScan; c.Enabled {
		e.dets = append(e.dets, newRouteScan(c, spread, env(RouteScan, c.Common, c.Window)))
	}
	e.hashes = make([][prefetchRun]uint64, len(e.dets))
	e.heldHashes = make([][prefetchRun]uint64, len(e.dets))
	e.needCK = cfg.NewCountry.Enabled || cfg.ForbiddenBurst.Enabled || cfg.ClientVolumeSpike.Enabled || cfg.ObjectEnumeration.Enabled
	e.needIP = cfg.ForbiddenBurst.Enabled || cfg.AuthFailureSpray.Enabled || cfg.RouteScan.Enabled || cfg.ObjectEnumeration.Enabled
	// Two detectors that read a hash of every event: one that only reads it now and
	// then (forbidden_burst's 403s) computes its own.
	e.needPath = cfg.ClientVolumeSpike.Enabled && cfg.ObjectEnumeration.Enabled
	e.needRoute = cfg.PrivilegeAnomaly.Enabled && cfg.ObjectEnumeration.Enabled
	for j, d := range e.dets {
		if p, ok := d.(prefetcher); ok {
			e.pf = append(e.pf, prefetching{p, j})
		}
		if l, ok := d.(learner); ok {
			e.learners = append(e.learners, l)
		}
	}
	e.fetch = newFetcher(e, opts.Baselines)
	for _, d := range e.dets {
		e.dues = append(e.dues, d.due())
		n := d.name()
		e.dm = append(e.dm, detMetrics{
			keys:       e.m.keys.WithLabelValues(n),
			evictionsC: e.m.evictions.WithLabelValues(n),
			expiredC:   e.m.expired.WithLabelValues(n),
			droppedC:   e.m.droppedSamples.WithLabelValues(n),
		})
	}
	return e, nil
}

// LoadBaselines seeds the detectors from the BaselineStore: the most recent baselines,
// up to each detector's max_keys (see LimitsOf). Call it once, before the first event;
// Run calls it unless it was called. Later loads are RefreshBaselines.
func (e *Engine) LoadBaselines(ctx context.Context) error {
	if e.loaded {
		return nil
	}
	b, _, err := e.loadStore(ctx, false)
	if err != nil {
		return fmt.Errorf("detectors: load baselines: %w", err)
	}
	e.seed(&b)
	e.fetch.loaded(&b)
	e.loaded = true
	e.loadWM, e.loadArmed = e.wms.wm, e.wms.started
	e.log.Info("baselines loaded", "keys", len(b.Keys), "routes", len(b.Routes), "clients", len(b.Clients),
		"objects", len(b.Objects), "privileged", len(b.Privileged))
	e.updateGauges()
	return nil
}

// loadStore loads the store, up to LimitsOf the config in force: with changes, only
// what was written since the last load, when the store can tell (BaselineChanges) and
// the limits are the last load's; else every baseline. It reports whether the load
// was partial, and notes where the next one starts.
func (e *Engine) loadStore(ctx context.Context, changes bool) (b Baselines, partial bool, err error) {
	lim := LimitsOf(e.cfg)
	bc, ok := e.store.(BaselineChanges)
	if !ok {
		b, err = e.store.LoadBaselines(ctx, lim)
		return b, false, err
	}
	since := e.since
	if !changes || lim != e.loadLim {
		since = 0
	}
	b, next, err := bc.LoadBaselinesSince(ctx, lim, since)
	if err != nil {
		return b, false, err
	}
	e.since, e.loadLim = next, lim
	return b, since != 0, nil
}

// SyncBaselines writes to the BaselineStore the baselines that changed since the last
// write.
func (e *Engine) SyncBaselines(ctx context.Context) error {
	u := e.takeDirty()
	if u.empty() {
		return nil
	}
	if err := e.store.UpdateBaselines(ctx, u); err != nil {
		return fmt.Errorf("detectors: write baselines: %w", err)
	}
	return nil
}

// HoldsEvicted reports whether the detectors evicted keys whose changed baselines only
// the next SyncBaselines writes. They are held up to each detector's max_keys and lost
// past that, so a caller that syncs less often than after every batch syncs when this
// says so.
func (e *Engine) HoldsEvicted() bool { return e.fetch.holding() }

// Watermark returns the event-time watermark, the zero time before the first event.
func (e *Engine) Watermark() time.Time {
	if !e.wms.started {
		return time.Time{}
	}
	return msTime(e.wms.wm)
}

// Observe runs events of one stream (the zero ingest.Partition) through the
// detectors and returns the alerts they raised, sorted by the event time they were
// raised at, then detector, key and id. It uses event time only and does no I/O. The
// engine keeps no reference to events or their strings.
func (e *Engine) Observe(events []ingest.Event) []Alert {
	e.observe(nil, events)
	return e.out.take()
}

// ObserveBatch runs a batch through the detectors as Observe does, judging each
// event's lateness within its own partition (see Batch.Runs, Opened and Ended). It
// reads the wall clock (Options.Now) once, for idle partitions.
func (e *Engine) ObserveBatch(b *ingest.Batch) []Alert {
	e.observe(b, b.Events)
	return e.out.take()
}

// observe is Observe and ObserveBatch; b is nil for Observe. It returns the largest
// time an event of the batch was judged at and entered windows with, math.MinInt64 if
// none did: until the watermark passes it, some window may need the batch.
func (e *Engine) observe(b *ingest.Batch, events []ingest.Event) int64 {
	var now time.Time
	if e.now != nil {
		now = e.now()
	}
	maxT := int64(math.MinInt64)
	var st observeStats
	e.setLoadAhead()
	if b == nil {
		maxT = e.observeEvents(events, nil, now, &st)
	} else {
		for _, p := range b.Opened {
			e.wms.open(p, now)
		}
		maxT = max(maxT, e.applyMarks(b.Marks, now, &st))
		if !now.IsZero() && e.wms.checkIdle(now) && e.wms.holding > 0 {
			// A partition gone idle with records held is judged as if its next record
			// came back at its stream's time: the held ones are ahead. Were they the
			// first records after a gap, the partition's next record, far ahead too,
			// moves the stream on then; taken for a gap when they were a glitch, they
			// would make every later record of the partition late until the glitch's
			// time.
			for _, pw := range e.wms.sortedParts() {
				if pw.idle && pw.held != nil {
					maxT = max(maxT, e.resolveHeld(pw, pw.maxT, true, false, now, &st))
				}
			}
		}
		maxT = max(maxT, e.observeEvents(events, b.Runs, now, &st))
		for _, p := range b.Ended {
			if pw := e.wms.parts[p]; pw != nil && pw.held != nil {
				maxT = max(maxT, e.resolveHeld(pw, 0, false, false, now, &st))
			}
			e.wms.end(p)
		}
	}
	// Decisions that the last events made due (a late candidate) need no further
	// event, nor do windows that a change of partitions closed.
	for j, d := range e.dets {
		if e.wms.started && e.wms.wm >= *e.dues[j] {
			d.advance(e.wms.wm)
		}
	}
	e.m.events.Add(float64(len(events)))
	e.countStats(&st)
	if e.wms.started {
		e.m.watermark.Set(float64(e.wms.wm) / 1000)
	}
	e.m.idle.Set(float64(e.wms.idleCount()))
	e.reportPartitions()
	e.reportBehind()
	e.updateGauges()
	return maxT
}

type observeStats struct{ late, ahead int }

// reportPartitions keeps each partition's event-time gauge.
func (e *Engine) reportPartitions() {
	for _, pw := range e.wms.list {
		if !pw.seen {
			continue
		}
		if pw.timeGauge == nil {
			pw.timeGauge = e.m.partTime.WithLabelValues(pw.p.String())
		}
		pw.timeGauge.Set(float64(pw.maxT) / 1000)
	}
	for _, p := range e.wms.ended {
		e.m.partTime.DeleteLabelValues(p.String())
	}
	e.wms.ended = e.wms.ended[:0]
}

// reportBehind logs when partitions fall more than max_skew behind the leading one, or
// catch up, and keeps the gauge.
func (e *Engine) reportBehind() {
	if !e.wms.started {
		return
	}
	n := 0
	for _, pw := range e.wms.list {
		if pw.seen && !pw.idle && pw.maxT-e.wms.lateness < e.wms.wm {
			n++
		}
	}
	if n == e.behind {
		return
	}
	e.behind = n
	e.m.behind.Set(float64(n))
	if n == 0 {
		e.log.Info("every partition within max_skew of the leading one again")
		return
	}
	var names []string
	for _, pw := range e.wms.sortedParts() {
		if pw.seen && !pw.idle && pw.maxT-e.wms.lateness < e.wms.wm {
			names = append(names, pw.p.String())
		}
	}
	// Info, not a warning: a backlog a sticky partitioner sent block by block leaves
	// each partition behind while the others fill its gaps, and nothing is late. A
	// late record is warned of when it comes (watermarks.take).
	e.log.Info("partitions more than max_skew behind the leading one: the watermark goes on without them, and a record they deliver behind it is late",
		"partitions", strings.Join(names, ","), "watermark", msTime(e.wms.wm))
}

func (e *Engine) countStats(st *observeStats) {
	if st.late > 0 {
		e.m.late.Add(float64(st.late))
	}
	if st.ahead > 0 {
		e.m.ahead.Add(float64(st.ahead))
	}
}

// A step is an event of a run as the watermarks judged it, waiting for the detectors.
type step struct {
	i       int   // its index in the run
	at      int64 // the time it enters windows with
	late    bool
	started bool  // the watermark had started once it was judged,
	wm      int64 // and stood here
	since   int64 // traffic.since once it was seen
}

// judged counts an event's verdict, notes it as traffic and returns its step; v is not
// held.
func (e *Engine) judged(i int, at int64, v verdict, st *observeStats) step {
	switch v {
	case ahead:
		st.ahead++
	case late:
		st.late++
	}
	e.traffic.seen(at)
	return step{i: i, at: at, late: v == late, started: e.wms.started, wm: e.wms.wm, since: e.traffic.since}
}

// feed runs the judged events of a run through the detectors, hs[j][s.i] being an
// event's hash for detector j. It runs one detector at a time over all of them, not
// one event at a time through every detector: a detector's code and the state the run
// prefetched stay in cache while it works, and the engine costs about a sixth less an
// event on realistic traffic. Each detector still sees its events in order, each after
// the watermark it was judged at and with the traffic seen up to it, exactly as one
// event at a time. What detectors share does not depend on their order: what the
// engine hands them (the watermark, traffic.since), the alerts, sorted when taken, and
// the lookup cache, which only forgets keys and notes evicted ones while they run (a
// lossy cache: which of two evicted keys a full set keeps can depend on it).
func (e *Engine) feed(run []ingest.Event, rh *runHashes, hs [][prefetchRun]uint64, steps []step) {
	if len(steps) == 0 {
		return
	}
	since := e.traffic.since
	for j, d := range e.dets {
		due, h := e.dues[j], &hs[j]
		for _, s := range steps {
			e.traffic.since = s.since
			if s.started && s.wm >= *due {
				d.advance(s.wm)
			}
			d.observe(&run[s.i], evHashes{key: h[s.i], path: rh.path[s.i], route: rh.route[s.i]}, s.at, s.late)
		}
	}
	e.traffic.since = since
}

// resolveHeld decides pw's held records, given the time of the partition's next record
// (hasNext false: none will come, the input ended), and runs them through the
// detectors, in the partition's order. With wait, a next record near them may leave
// them undecided (see watermarks.decide). It returns the largest time one of them
// entered windows with, math.MinInt64 if none did.
func (e *Engine) resolveHeld(pw *partWM, next int64, hasNext, wait bool, now time.Time, st *observeStats) int64 {
	jump, ok := e.wms.decide(pw, next, hasNext, wait)
	if !ok {
		return math.MinInt64
	}
	held := pw.held
	pw.held = nil
	maxT := int64(math.MinInt64)
	for run := range slices.Chunk(held, prefetchRun) {
		steps := e.steps[:0]
		for i := range run {
			t := run[i].Time.UnixMilli()
			var at int64
			var v verdict
			if jump {
				at, v = e.wms.take(pw, t, now)
			} else {
				at, v = e.wms.aheadOf(pw, t)
			}
			if v != late {
				maxT = max(maxT, at)
			}
			steps = append(steps, e.judged(i, at, v, st))
		}
		var hs runHashes
		e.prefetch(run, &hs, e.heldHashes)
		e.feed(run, &hs, e.heldHashes, steps)
	}
	return maxT
}

// resolveAllHeld decides every held record as a gap (no next record will come: the
// input ends), in partition order.
func (e *Engine) resolveAllHeld(st *observeStats) {
	if e.wms.holding == 0 {
		return
	}
	for _, pw := range e.wms.sortedParts() {
		if pw.held != nil {
			e.resolveHeld(pw, 0, false, false, time.Time{}, st)
		}
	}
}

// observeEvents runs events through the detectors, a prefetch run at a time, each
// judged within its partition (runs says which; nil: all of the zero Partition), and
// returns the largest time an event entered windows with.
func (e *Engine) observeEvents(events []ingest.Event, runs []ingest.Run, now time.Time, st *observeStats) int64 {
	maxT := int64(math.MinInt64)
	if len(events) == 0 {
		return maxT
	}
	var pw *partWM
	left := 0 // events of pw's run still to come
	if runs == nil {
		pw, left = e.wms.part(ingest.Partition{}), len(events)
		e.wms.arrived(pw, now)
	}
	for start := 0; start < len(events); start += prefetchRun {
		run := events[start:min(start+prefetchRun, len(events))]
		e.prefetch(run, &e.rh, e.hashes)
		steps := e.steps[:0]
		for i := range run {
			for left == 0 {
				pw, left = e.wms.part(runs[0].Partition), runs[0].N
				runs = runs[1:]
				e.wms.arrived(pw, now)
			}
			left--
			ev := &run[i]
			t := ev.Time.UnixMilli()
			if pw.held != nil && !e.wms.pastClock(t, now) {
				// The held records go through the detectors after the events before
				// this one.
				e.feed(run, &e.rh, e.hashes, steps)
				steps = steps[:0]
				maxT = max(maxT, e.resolveHeld(pw, t, true, true, now, st))
			}
			at, v := e.wms.judge(pw, t, now)
			if v == held {
				pw.held = append(pw.held, ev.Clone()) // they outlive their batch, whose strings the parser reuses
				continue
			}
			if v != late {
				maxT = max(maxT, at)
			}
			steps = append(steps, e.judged(i, at, v, st))
		}
		e.feed(run, &e.rh, e.hashes, steps)
	}
	return maxT
}

// Flush ends the input: it evaluates every open window as if the watermark had passed
// it, decides every pending new country, ends every incident (emitting what was not yet
// emitted) and returns those alerts. Baselines are kept; windows start afresh for events
// observed after Flush.
func (e *Engine) Flush() []Alert {
	var st observeStats
	e.resolveAllHeld(&st)
	e.countStats(&st)
	for j, d := range e.dets {
		if e.wms.started && e.wms.wm >= *e.dues[j] {
			d.advance(e.wms.wm)
		}
		d.flush()
	}
	e.updateGauges()
	return e.out.take()
}

// horizon returns the earliest event time that an open window or pending decision still
// needs; events before it may be acknowledged.
func (e *Engine) horizon() int64 {
	if !e.wms.started || e.wms.holding > 0 {
		// Held records are in no window yet, and their batches must not be
		// acknowledged before they are.
		return math.MinInt64
	}
	h := int64(math.MaxInt64)
	for _, d := range e.dets {
		h = min(h, d.horizon(e.wms.wm))
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
		if s, ok := d.(interface{ droppedSamples() (uint64, int64) }); ok {
			if n, bound := s.droppedSamples(); n > dm.dropped {
				if dm.dropped == 0 {
					e.log.Warn("detector's evidence samples at their bound: new sampled values are not kept", "detector", d.name(), "bound_bytes", bound)
				}
				dm.droppedC.Add(float64(n - dm.dropped))
				dm.dropped = n
			}
		}
	}
}

// detMetrics are one detector's metric children, resolved once, and the counts they
// last reported.
type detMetrics struct {
	keys                           prometheus.Gauge
	evictionsC, expiredC, droppedC prometheus.Counter
	evictions, expired, dropped    uint64
}
