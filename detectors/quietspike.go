package detectors

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// quietSpike fires when, once the detector has seen learning_period of traffic, a route
// (method and route template) whose baseline rate is at most quiet_rate requests a
// minute receives at least min_count requests within window, and that count is
// improbable under its baseline: P(X ≥ count) < p_value for X ~ Poisson(baseline rate ×
// window). A never-seen route has a baseline rate of 0.
//
// The baseline rate is an exponentially weighted average of the route's requests a
// minute with a time constant of learning_period, corrected for the time since the
// detector first saw traffic, and taken as of the start of the window it is compared
// with: a bucket is folded into it when it leaves the ring, so a spike does not raise
// the baseline it is measured against.
type quietSpike struct {
	cfg   QuietEndpointSpikeConfig
	lay   ringLayout
	tab   *keyTable[qsKey]
	cnt   counters
	buck  bucketer
	tau   float64 // time constant, ms
	learn int64

	params   []qsParams
	allowKey map[string]bool
	allowNet []netip.Prefix

	since     int64 // first event time seen, ms; math.MaxInt64 before
	sinceDirt bool
	dirty     []slotRef

	hot     []hotKey
	cols    collectors
	colKeys []slotRef // routes holding a collector
	active  int       // collectors in use
	inc     *incidents
	wm      int64
	next    int64
	window  string
	scratch []byte
}

type qsParams struct {
	enabled   bool
	quietRate float64
	minCount  uint32
	pValue    float64
	severity  Severity
}

type qsKey struct {
	r      ring
	sum    [1]uint32
	prm    uint16
	hot    bool
	dirty  bool
	ran    bool    // has had an event that was not late
	split  uint16  // length of the method in the key
	newest int64   // bucket of the latest event that was not late
	rate   float64 // raw weighted average, requests a minute, as of rateAt
	rateAt int64
	col    *collector
}

const (
	qsClientKey = iota
	qsClientIP
	qsPath
	qsRequestID
	qsFields
)

func newQuietSpike(c QuietEndpointSpikeConfig, lateness time.Duration, inc *incidents) *quietSpike {
	lay := newRingLayout(c.Window, lateness, 10)
	d := &quietSpike{
		cfg:      c,
		lay:      lay,
		cnt:      counters{lay: lay, k: 1},
		buck:     newBucketer(lay.width, lay.size),
		tau:      float64(max(c.LearningPeriod, time.Hour).Milliseconds()),
		learn:    c.LearningPeriod.Milliseconds(),
		allowKey: map[string]bool{},
		since:    math.MaxInt64,
		inc:      inc,
		wm:       math.MinInt64 / 2,
		next:     math.MinInt64,
		window:   lay.window().String(),
	}
	// An idle route's rate decays with tau; after three time constants it is under 5%
	// of what it was, close enough to a never-seen route's 0 to forget it.
	ttl := lay.size*lay.width + 3*int64(d.tau)
	d.tab = newKeyTable[qsKey](c.MaxKeys, ttl/4)
	d.tab.onRemove = d.release
	d.cols = collectors{lay: lay, fields: qsFields, k: 2, nCounts: 0}
	d.params = append(d.params, d.paramsFor(nil))
	for i := range c.Overrides {
		d.params = append(d.params, d.paramsFor(&c.Overrides[i]))
	}
	for _, a := range c.Allowlist {
		if a.Key != "" {
			d.allowKey[a.Key] = true
		} else if p, err := netip.ParsePrefix(a.CIDR); err == nil {
			d.allowNet = append(d.allowNet, p.Masked())
		}
	}
	return d
}

func (d *quietSpike) paramsFor(o *QuietEndpointSpikeOverride) qsParams {
	c := d.cfg
	p := qsParams{enabled: true, quietRate: c.QuietRate, minCount: uint32(c.MinCount), pValue: c.PValue, severity: c.Severity}
	if o != nil {
		o.apply(&p.enabled, &p.severity)
		setIf(&p.quietRate, o.QuietRate)
		if o.MinCount != nil {
			p.minCount = uint32(*o.MinCount)
		}
		setIf(&p.pValue, o.PValue)
	}
	return p
}

// paramsIndex returns the params of the first override matching a route.
func (d *quietSpike) paramsIndex(key, route string) uint16 {
	for i, o := range d.cfg.Overrides {
		if (o.Key != "" && o.Key == key) || (o.RoutePrefix != "" && strings.HasPrefix(route, o.RoutePrefix)) {
			return uint16(i + 1)
		}
	}
	return 0
}

func (d *quietSpike) name() string { return QuietEndpointSpike }
func (d *quietSpike) due() *int64  { return &d.next }

func (d *quietSpike) stats() (int, uint64, uint64) {
	return d.tab.live, d.tab.evictions, d.tab.expired
}

func (d *quietSpike) closed() int64 { return d.lay.closedThrough(d.wm) }
func (d *quietSpike) keep() int64   { return d.lay.oldestOpen(d.wm) }

func (d *quietSpike) horizon(wm int64) int64 {
	return d.lay.oldestOpenMs(wm)
}

// prefetchIndex and prefetchState do nothing: routes are few, and their state stays
// in cache.
func (d *quietSpike) prefetchIndex([]ingest.Event, []uint64, []uint64) {}
func (d *quietSpike) prefetchState([]ingest.Event, []uint64)           {}

func (d *quietSpike) observe(ev *ingest.Event, _ uint64, t int64, late bool) {
	if ev.Route == "" || d.allowed(ev) {
		return
	}
	if t < d.since {
		d.since, d.sinceDirt = t, true
	}
	d.scratch = append(append(append(d.scratch[:0], ev.Method...), ' '), ev.Route...)
	slot := d.tab.findBytes(d.scratch)
	if slot < 0 {
		slot = d.tab.add(string(d.scratch), t)
		k := &d.tab.ents[slot].s
		k.rateAt = t
		k.split = uint16(min(len(ev.Method), math.MaxUint16))
		k.prm = d.paramsIndex(d.tab.keyOf(slot), ev.Route)
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	if late {
		// Straight into the baseline, weighted as of rateAt; no window.
		k.rate += math.Exp(float64(t-k.rateAt)/d.tau) * 60000 / d.tau
		d.markDirty(slot)
		return
	}
	b, bs := d.buck.of(t)
	data := d.cnt.keyData(slot)
	keep := d.keep()
	d.fold(slot, max(keep, b-d.lay.size+1))
	o := d.cnt.place(data, &k.r, k.sum[:], b, bs, keep)
	if inc16(&data[o]) {
		k.sum[0]++
	}
	if !p.enabled {
		return
	}
	if !k.ran || b-k.newest > d.lay.size {
		d.startRun(slot, p)
	}
	k.ran, k.newest = true, max(k.newest, b)
	if c := k.col; c != nil {
		cs := c.claim(b)
		c.sample(cs, qsClientKey, ev.ClientKey)
		c.sample(cs, qsClientIP, ev.ClientIP)
		c.sample(cs, qsPath, ev.Path)
		c.sample(cs, qsRequestID, ev.RequestID)
		client := ev.ClientKey
		if client == "" {
			client = ev.ClientIP
		}
		c.addDistinct(cs, hash64(client))
	}
	if !k.hot && k.sum[0] >= p.minCount {
		k.hot = true
		// Windows that closed before this event could not fire: the ring held too
		// little for them.
		d.hot = append(d.hot, hotKey{d.tab.ref(slot), d.closed()})
	}
}

// maxCollectors bounds the routes sampled at once, whatever an attacker does to the
// number of routes.
const maxCollectors = 1024

// startRun starts a run of traffic on a route: its first event after a gap longer than
// the ring spans. A route that is quiet then collects evidence for the whole run, so a
// spike in it has samples.
//
// Both the run and the decision depend on event times only. An event of the same run
// that arrives before this one would have started it, and one that arrives after is
// within the run: events out of order by more than the gap are late. Every bucket
// before the gap has been folded into the rate, which is read as of its last fold
// rather than as of this event.
func (d *quietSpike) startRun(slot int32, p *qsParams) {
	k := &d.tab.ents[slot].s
	if k.col != nil {
		d.dropCollector(k)
	}
	if d.active < maxCollectors && d.rateAt(k, k.rateAt) <= 2*p.quietRate {
		k.col = d.cols.get()
		d.active++
		d.colKeys = append(d.colKeys, d.tab.ref(slot))
	}
}

func (d *quietSpike) dropCollector(k *qsKey) {
	d.cols.put(k.col)
	k.col = nil
	d.active--
}

func (d *quietSpike) allowed(ev *ingest.Event) bool {
	if len(d.allowKey) > 0 && d.allowKey[ev.ClientKey] {
		return true
	}
	return inNets(d.allowNet, ev.ClientIP)
}

// fold moves the buckets of slot before keep from the ring into the baseline rate, in
// bucket order, each weighted as of its end.
func (d *quietSpike) fold(slot int32, keep int64) {
	k := &d.tab.ents[slot].s
	if !k.r.used || keep <= k.r.lo {
		return
	}
	data := d.cnt.keyData(slot)
	changed := false
	for x := max64(k.r.lo, k.r.top-d.lay.size+1); x < keep && x <= k.r.top; x++ {
		c := d.cnt.at(data, &k.r, x, 0)
		if c == 0 {
			continue
		}
		end := (x + 1) * d.lay.width
		k.rate = k.rate*math.Exp(-float64(end-k.rateAt)/d.tau) + float64(c)*60000/d.tau
		k.rateAt = end
		changed = true
	}
	d.cnt.trim(data, &k.r, k.sum[:], keep)
	if changed {
		d.markDirty(slot)
	}
}

// rateAt returns the route's baseline rate in requests a minute as of x: the weighted
// average decayed to x and corrected for how long the detector has seen traffic.
func (d *quietSpike) rateAt(k *qsKey, x int64) float64 {
	r := k.rate * math.Exp(-float64(x-k.rateAt)/d.tau)
	if d.since == math.MaxInt64 || x <= d.since {
		return r
	}
	return r / -math.Expm1(-float64(x-d.since)/d.tau)
}

func (d *quietSpike) markDirty(slot int32) {
	k := &d.tab.ents[slot].s
	if !k.dirty {
		k.dirty = true
		d.dirty = append(d.dirty, d.tab.ref(slot))
	}
}

func (d *quietSpike) advance(wm int64) {
	d.wm = wm
	closed := d.lay.closedThrough(wm)
	keep := d.lay.oldestOpen(wm)
	live := d.hot[:0]
	for _, h := range d.hot {
		r := h.ref
		if !d.tab.valid(r) {
			continue
		}
		k := &d.tab.ents[r.slot].s
		d.eval(r.slot, &h.evalTo, closed)
		d.fold(r.slot, keep)
		if k.sum[0] < d.params[k.prm].minCount {
			k.hot = false
			continue
		}
		live = append(live, h)
	}
	clear(d.hot[len(live):])
	d.hot = live
	// A run is over once any event that is not late would start a new one.
	cols := d.colKeys[:0]
	for _, r := range d.colKeys {
		if !d.tab.valid(r) {
			continue
		}
		k := &d.tab.ents[r.slot].s
		if k.col != nil && keep-k.newest > d.lay.size {
			d.dropCollector(k)
		}
		if k.col != nil {
			cols = append(cols, r)
		}
	}
	clear(d.colKeys[len(cols):])
	d.colKeys = cols
	d.tab.expire(keep*d.lay.width - 3*int64(d.tau))
	d.inc.endQuiet(wm)
	d.next = (closed + 2) * d.lay.width
}

// eval evaluates slot's windows ending at buckets *evalTo+1..upTo, folding each bucket
// into the baseline once no later window needs it.
func (d *quietSpike) eval(slot int32, evalTo *int64, upTo int64) {
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	n := d.lay.n
	from := max(*evalTo+1, k.r.lo)
	to := min(upTo, k.r.top+n-1)
	*evalTo = max(*evalTo, upTo)
	if !k.r.used || from > to || !p.enabled {
		return
	}
	data := d.cnt.keyData(slot)
	for e := from; e <= to; e++ {
		d.fold(slot, e-n+1)
		if !k.r.used {
			return
		}
		var count uint32
		for b := e - n + 1; b <= e; b++ {
			count += d.cnt.at(data, &k.r, b, 0)
		}
		end := (e + 1) * d.lay.width
		if count < p.minCount {
			continue
		}
		if d.since == math.MaxInt64 || end-d.since < d.learn {
			if k.col != nil && d.rateAt(k, end) > 2*p.quietRate {
				d.dropCollector(k)
			}
			continue
		}
		start := (e - n + 1) * d.lay.width
		rate := d.rateAt(k, start)
		if rate > p.quietRate {
			if k.col != nil && rate > 2*p.quietRate {
				// Busy: sampling every request would cost more than the evidence
				// of a spike it cannot have is worth.
				d.dropCollector(k)
			}
			continue
		}
		lambda := rate * float64(n*d.lay.width) / 60000
		if pv := poissonTail(int(count), lambda); pv < p.pValue {
			d.fire(slot, e, count, rate, lambda, pv)
		}
	}
}

func (d *quietSpike) fire(slot int32, end int64, count uint32, rate, lambda, pv float64) {
	ent := &d.tab.ents[slot]
	name := d.tab.keyOf(slot)
	k := &ent.s
	p := &d.params[k.prm]
	n, w := d.lay.n, d.lay.width
	data := d.cnt.keyData(slot)
	first, last := end, end-n+1
	for b := end - n + 1; b <= end; b++ {
		if d.cnt.at(data, &k.r, b, 0) > 0 {
			first, last = min(first, b), max(last, b)
		}
	}
	method, route := name[:k.split], name[min(int(k.split)+1, len(name)):]
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * w,
		first:    first * w,
		last:     (last + 1) * w,
		strength: int(count),
		severity: p.severity,
		labels:   map[string]string{"key_type": "route", "method": method, "route": route},
	}, func() (Evidence, string) {
		rate, lambda, pv := roundSig(rate), roundSig(lambda), roundSig(pv)
		quiet := p.quietRate
		ev := Evidence{
			Window:             d.window,
			WindowStart:        formatTime(msTime((end - n + 1) * w)),
			WindowEnd:          formatTime(msTime((end + 1) * w)),
			Method:             method,
			Route:              route,
			BaselineRatePerMin: &rate,
			QuietRate:          &quiet,
			ObservedCount:      int(count),
			MinCount:           int(p.minCount),
			Expected:           &lambda,
			PValue:             &pv,
			MaxPValue:          p.pValue,
		}
		if c := k.col; c != nil {
			ev.DistinctClients = c.distinctIn(end-n+1, end)
			ev.ClientKeys = c.collect(qsClientKey, end-n+1, end, 5)
			ev.ClientIPs = c.collect(qsClientIP, end-n+1, end, 5)
			ev.SamplePaths = c.collect(qsPath, end-n+1, end, 5)
			ev.SampleRequestIDs = c.collect(qsRequestID, end-n+1, end, 5)
		}
		summary := fmt.Sprintf("Quiet endpoint %s got %d requests within %s against a baseline of %.3g a minute (%.3g expected, p = %.2g).",
			name, count, d.window, rate, lambda, pv)
		return ev, summary
	})
}

// roundSig rounds to 6 significant digits, so evidence does not carry float noise.
func roundSig(x float64) float64 {
	if x == 0 || math.IsInf(x, 0) || math.IsNaN(x) {
		return x
	}
	e := math.Pow(10, 5-math.Floor(math.Log10(math.Abs(x))))
	if math.IsInf(e, 0) {
		return x
	}
	return math.Round(x*e) / e
}

func (d *quietSpike) release(slot int32, _ bool) {
	k := &d.tab.ents[slot].s
	if k.col != nil {
		d.dropCollector(k)
	}
	clear(d.cnt.keyData(slot))
}

func (d *quietSpike) baseline(slot int32) RouteBaseline {
	k := &d.tab.ents[slot].s
	return RouteBaseline{Route: d.tab.keyOf(slot), RatePerMinute: k.rate, AsOf: msTime(k.rateAt)}
}

func (d *quietSpike) flush() {
	for _, h := range d.hot {
		if d.tab.valid(h.ref) {
			k := &d.tab.ents[h.ref.slot].s
			d.eval(h.ref.slot, &h.evalTo, k.r.top+d.lay.n-1)
		}
	}
	clear(d.hot)
	d.hot = d.hot[:0]
	// Routes stay: their rates are the baseline. Their rings are folded in.
	for slot := range d.tab.ents {
		e := &d.tab.ents[slot]
		if !e.live {
			continue
		}
		e.s.hot = false
		d.fold(int32(slot), e.s.r.top+1)
		e.s.ran = false
		if e.s.col != nil {
			d.dropCollector(&e.s)
		}
	}
	clear(d.colKeys)
	d.colKeys = d.colKeys[:0]
	d.inc.endAll()
	d.wm, d.next = math.MinInt64/2, math.MinInt64
}

// load seeds the routes and the start of traffic from a snapshot.
func (d *quietSpike) load(b Baselines) {
	if !b.TrafficSince.IsZero() {
		d.since = min(d.since, b.TrafficSince.UnixMilli())
	}
	routes := slices.Clone(b.Routes)
	// Oldest first, so that past max_keys the most recent survive.
	slices.SortStableFunc(routes, func(x, y RouteBaseline) int { return x.AsOf.Compare(y.AsOf) })
	for i := range routes {
		if strings.Contains(routes[i].Route, " ") && d.tab.find(routes[i].Route) < 0 {
			d.adopt(&routes[i])
		}
	}
}

// adopt adds a route the table does not hold, "METHOD /route", with the stored
// baseline r.
func (d *quietSpike) adopt(r *RouteBaseline) {
	method, route, _ := strings.Cut(r.Route, " ")
	at := r.AsOf.UnixMilli()
	slot := d.tab.add(r.Route, at)
	k := &d.tab.ents[slot].s
	k.rate, k.rateAt = r.RatePerMinute, at
	k.split = uint16(len(method))
	k.prm = d.paramsIndex(r.Route, route)
}

// takeDirty returns the routes whose baseline changed since the last call, and the
// start of traffic when that changed.
func (d *quietSpike) takeDirty() (time.Time, []RouteBaseline) {
	var since time.Time
	if d.sinceDirt && d.since != math.MaxInt64 {
		since = msTime(d.since)
		d.sinceDirt = false
	}
	var out []RouteBaseline
	for _, r := range d.dirty {
		if d.tab.valid(r) {
			out = append(out, d.baseline(r.slot))
			d.tab.ents[r.slot].s.dirty = false
		}
	}
	clear(d.dirty)
	d.dirty = d.dirty[:0]
	slices.SortFunc(out, func(x, y RouteBaseline) int { return strings.Compare(x.Route, y.Route) })
	return since, out
}
