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
// minute receives at least min_count requests within window, that count is improbable
// under its baseline (P(X ≥ count) < p_value for X ~ Poisson(baseline rate × window)),
// and it is at least min_ratio times the route's recent peak: the largest count it had
// in a window before, decaying with peak_memory. A never-seen route has a baseline rate
// and a peak of 0.
//
// The peak is what lets a route with periodic bursts (a cron job, an hourly export)
// stay quiet: its rate is low, so each burst is improbable under it, but each burst is
// no larger than the last. Requests answered 404 or 405 are left out: they ask for an
// object or a route (or method) that does not exist, which is object_enumeration's and
// route_scan's to judge, not evidence of a quiet endpoint being hammered.
//
// The baseline rate is an exponentially weighted average of the route's requests a
// minute with a time constant of learning_period (at least an hour), corrected for the
// time since the engine first saw traffic, and taken as of the start of the window it
// is compared with (see volume).
type quietSpike struct {
	windowed[qsKey]
	cfg   QuietEndpointSpikeConfig
	cnt   counters
	smp   samplers
	tau   float64 // rate time constant, ms
	ptau  float64 // peak time constant, ms
	learn int64
	since *traffic

	params   []qsParams
	allowKey map[string]bool
	allowNet []netip.Prefix

	dirty    []slotRef
	unfolded []slotRef // routes written with counts in open buckets (takeVolumes)
	scratch  []byte
}

type qsParams struct {
	enabled   bool
	quietRate float64
	minCount  uint32
	minRatio  float64
	pValue    float64
	severity  Severity
	hot       uint32 // HotCount(minCount, minRatio)
}

type qsKey struct {
	r     ring
	sum   [1]uint32
	prm   uint16
	dirty bool
	split uint16 // length of the method in the key
	vol   volume
	smp   *sampler // while the ring holds requests
}

// Evidence fields the sampler keeps, per request.
const (
	qsClientKey = iota
	qsClientIP
	qsPath
	qsRequestID
	qsFields
)

func newQuietSpike(c QuietEndpointSpikeConfig, lateness time.Duration, since *traffic, inc *incidents) *quietSpike {
	lay := newRingLayout(c.Window, lateness, 10, true)
	d := &quietSpike{
		cfg:      c,
		cnt:      newCounters(lay, 1, true, false, 0),
		smp:      newSamplers(lay, c.MaxKeys, qsFields, 2, len(statusClasses)),
		tau:      float64(max(c.LearningPeriod, time.Hour).Milliseconds()),
		ptau:     float64(max(c.PeakMemory, time.Hour).Milliseconds()),
		learn:    c.LearningPeriod.Milliseconds(),
		since:    since,
		allowKey: map[string]bool{},
	}
	d.init(QuietEndpointSpike, lay, c.MaxKeys, d.ttl(), inc, d)
	d.tab.onRemove = d.release
	d.samples = &d.smp.arena
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

// ttl is how long a route stays without traffic: three time constants of the slower of
// its rate and its peak, after which both are under 5% of what they were, close enough
// to a never-seen route's 0 to forget it.
func (d *quietSpike) ttl() int64 { return 3 * int64(max(d.tau, d.ptau)) }

func (d *quietSpike) paramsFor(o *QuietEndpointSpikeOverride) qsParams {
	c := d.cfg
	p := qsParams{enabled: true, quietRate: c.QuietRate, minCount: uint32(c.MinCount), minRatio: c.MinPeakRatio, pValue: c.PValue, severity: c.Severity}
	if o != nil {
		o.apply(&p.enabled, &p.severity)
		setIf(&p.quietRate, o.QuietRate)
		if o.MinCount != nil {
			p.minCount = uint32(*o.MinCount)
		}
		setIf(&p.minRatio, o.MinPeakRatio)
		setIf(&p.pValue, o.PValue)
	}
	p.hot = HotCount(p.minCount, p.minRatio)
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

func (d *quietSpike) observe(ev *ingest.Event, _ evHashes, t int64, late bool) {
	if ev.Route == "" || ev.Status == 404 || ev.Status == 405 || d.allowed(ev) {
		return
	}
	d.scratch = append(append(append(d.scratch[:0], ev.Method...), ' '), ev.Route...)
	slot := d.tab.findBytes(d.scratch)
	if slot < 0 {
		slot = d.tab.add(string(d.scratch), t)
		k := &d.tab.ents[slot].s
		k.vol = newVolume(t)
		k.split = uint16(min(len(ev.Method), math.MaxUint16))
		k.prm = d.paramsIndex(d.tab.keyOf(slot), ev.Route)
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	if late {
		k.vol.addLate(t, d.tau) // straight into the baseline; no window
		d.markDirty(slot)
		return
	}
	b, bs := d.buck.of(t)
	data := d.cnt.keyData(slot)
	k.vol.foldRate(&d.cnt, data, &k.r, d.open(), d.tau)
	o, _ := d.cnt.place(data, &k.r, k.sum[:], b, bs, d.keep())
	d.settle(k)
	first := data[o] == 0 // the route's first request in the bucket
	d.cnt.count(data, &k.r, k.sum[:], o, b, bs, t)
	d.markDirty(slot) // written with the event's bucket once it closes (takeVolumes)
	p := &d.params[k.prm]
	if !p.enabled {
		return
	}
	if first {
		// Whether a route is sampled is decided once a bucket: the rate it rests on
		// moves as buckets fold. A quiet route is, so that its alerts have evidence
		// from their first bucket on; a busy one (twice quiet_rate or more) cannot
		// fire and is not. Every route starts quiet in a cold start, and one busy
		// when its traffic began can grow quiet.
		switch quiet := d.quiet(k, p); {
		case quiet && k.smp == nil:
			k.smp = d.smp.get()
		case !quiet && k.smp != nil:
			d.smp.put(k.smp)
			k.smp = nil
		}
	}
	hot := k.sum[0] >= p.hot
	if s := k.smp; s != nil {
		cs := d.smp.claim(s, b, bs)
		d.smp.offer(s, b, cs, qsClientKey, ev.ClientKey)
		d.smp.offer(s, b, cs, qsClientIP, ev.ClientIP)
		d.smp.offer(s, b, cs, qsPath, ev.Path)
		d.smp.offer(s, b, cs, qsRequestID, ev.RequestID)
		d.smp.inc(s, cs, statusClass(ev.Status))
		client, _ := ClientOf(ev, &d.addr)
		d.smp.addID(s, cs, hash64(client))
	}
	if hot {
		d.markHot(slot)
	}
}

// quiet reports whether a route is quiet enough to sample: a busy route (twice
// quiet_rate or more) cannot fire, and sampling its every request would cost more than
// evidence it cannot need.
func (d *quietSpike) quiet(k *qsKey, p *qsParams) bool {
	return k.vol.rateAsOf(k.vol.rateAt, d.since.since, d.tau) <= 2*p.quietRate
}

// settle recycles the sampler of a route whose requests all left the ring: the run of
// traffic it sampled is over.
func (d *quietSpike) settle(k *qsKey) {
	if k.sum[0] == 0 && k.smp != nil {
		d.smp.put(k.smp)
		k.smp = nil
	}
}

func (d *quietSpike) allowed(ev *ingest.Event) bool {
	if len(d.allowKey) > 0 && d.allowKey[ev.ClientKey] {
		return true
	}
	return inNets(d.allowNet, ev.ClientIP)
}

func (d *quietSpike) markDirty(slot int32) {
	k := &d.tab.ents[slot].s
	if !k.dirty {
		k.dirty = true
		d.dirty = append(d.dirty, d.tab.ref(slot))
	}
}

func (d *quietSpike) bounds(slot int32) (int64, int64, bool) {
	r := &d.tab.ents[slot].s.r
	return r.lo, r.top, r.used
}

func (d *quietSpike) cool(slot int32, keep int64) bool {
	k := &d.tab.ents[slot].s
	data := d.cnt.keyData(slot)
	if k.vol.foldRate(&d.cnt, data, &k.r, keep+d.lay.back, d.tau) {
		d.markDirty(slot)
	}
	d.cnt.trim(data, &k.r, k.sum[:], keep)
	d.settle(k)
	return d.mayFire(slot)
}

func (d *quietSpike) mayFire(slot int32) bool {
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	return p.enabled && k.sum[0] >= p.hot
}

func (d *quietSpike) expiry(wm int64) int64 { return d.lay.oldestKept(wm)*d.lay.width - d.ttl() }

// judge judges the route's window ending at end, after folding into the baseline what
// came before it.
func (d *quietSpike) judge(slot int32, end int64) {
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	n, w := d.lay.n, d.lay.width
	data := d.cnt.keyData(slot)
	from := end - n + 1
	changed := k.vol.foldRate(&d.cnt, data, &k.r, from, d.tau)
	if k.vol.foldPeaks(&d.cnt, data, &k.r, end-n, p.hot, d.ptau) || changed {
		d.markDirty(slot)
	}
	if !p.enabled {
		return
	}
	count := d.cnt.sum(data, &k.r, from, end, 0)
	if count < p.minCount || !d.since.learnt((end+1)*w, d.learn) {
		return
	}
	start := from * w
	rate := k.vol.rateAsOf(start, d.since.since, d.tau)
	if rate > p.quietRate {
		return
	}
	lambda := rate * float64(n*w) / 60000
	pv := poissonTail(int(count), lambda)
	if pv >= p.pValue {
		return
	}
	peak := k.vol.peak.asOf(start, d.ptau)
	if float64(count) < p.minRatio*peak {
		return
	}
	d.fire(slot, end, count, rate, lambda, pv, peak)
}

func (d *quietSpike) fire(slot int32, end int64, count uint32, rate, lambda, pv, peak float64) {
	name := d.tab.keyOf(slot)
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	from := end - d.lay.n + 1
	first, last, _ := d.cnt.span(d.cnt.keyData(slot), &k.r, from, end)
	method, route := name[:k.split], name[min(int(k.split)+1, len(name)):]
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * d.lay.width,
		first:    first,
		last:     last,
		strength: int(count),
		severity: p.severity,
		labels:   map[string]string{"key_type": "route", "method": method, "route": route},
	}, func() (Evidence, string) {
		rate, lambda, pv, peak := roundSig(rate), roundSig(lambda), roundSig(pv), roundSig(peak)
		quiet := p.quietRate
		ev := d.windowEvidence(end)
		ev.Method, ev.Route = method, route
		ev.BaselineRatePerMin, ev.QuietRate = &rate, &quiet
		ev.ObservedCount, ev.MinCount = int(count), int(p.minCount)
		ev.Expected, ev.PValue, ev.MaxPValue = &lambda, &pv, p.pValue
		ev.RecentPeak, ev.MinPeakRatio = &peak, p.minRatio
		if s := k.smp; s != nil {
			w := d.smp.window(s, from, end)
			ev.DistinctClients = min(d.smp.distinct(s, w), int(count)) // an estimate may overshoot
			ev.ClientKeys = d.smp.collect(s, w, qsClientKey, 5)
			ev.ClientIPs = d.smp.collect(s, w, qsClientIP, 5)
			ev.SamplePaths = d.smp.collect(s, w, qsPath, 5)
			ev.SampleRequestIDs = d.smp.collect(s, w, qsRequestID, 5)
			for j, c := range statusClasses {
				if n := d.smp.countIn(s, w, j); n > 0 {
					ev.StatusClasses = append(ev.StatusClasses, ClassCount{Class: c, Count: n})
				}
			}
		}
		summary := fmt.Sprintf("Quiet endpoint %s got %d requests within %s against a baseline of %.3g a minute (%.3g expected, p = %.2g) and a recent peak of %.3g.",
			name, count, d.window, rate, lambda, pv, peak)
		return ev, summary
	})
}

// statusClasses are the classes of response status quiet_endpoint_spike's evidence
// counts: whether the endpoint answered the spike (2xx), refused it (4xx: 401, 403,
// 429) or failed under it (5xx) is the analyst's first question. "none" is a log that
// carries no status (an AWS WAF ALLOW: the request went on to the origin).
var statusClasses = [...]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// statusClass returns status's index in statusClasses.
func statusClass(status int) int {
	if status < 100 || status > 599 {
		return 0
	}
	return status / 100
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
	if k.smp != nil {
		d.smp.put(k.smp)
	}
	clear(d.cnt.keyData(slot))
}

// flushed folds every route's ring into its baseline: routes stay, their rates and
// peaks are the baseline.
func (d *quietSpike) flushed() {
	for slot := range d.tab.ents {
		e := &d.tab.ents[slot]
		if !e.live {
			continue
		}
		k := &e.s
		data := d.cnt.keyData(int32(slot))
		if k.r.used {
			changed := k.vol.foldRate(&d.cnt, data, &k.r, k.r.top+1, d.tau)
			if k.vol.foldPeaks(&d.cnt, data, &k.r, k.r.top+d.lay.n-1, d.params[k.prm].hot, d.ptau) || changed {
				d.markDirty(int32(slot))
			}
			d.cnt.trim(data, &k.r, k.sum[:], k.r.top+1)
		}
		k.vol.rateTo, k.vol.peak.to = math.MinInt64/2, math.MinInt64/2
		d.settle(k)
	}
}

func (d *quietSpike) baseline(slot int32) RouteBaseline {
	k := &d.tab.ents[slot].s
	return RouteBaseline{
		Route: d.tab.keyOf(slot), RatePerMinute: k.vol.rate, AsOf: msTime(k.vol.rateAt),
		Peak: k.vol.peak.v, PeakAt: msTime(k.vol.peak.at),
	}
}

// load seeds the routes from a snapshot.
func (d *quietSpike) load(b *Baselines) {
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
	slot := d.tab.add(r.Route, max(at, r.PeakAt.UnixMilli()))
	k := &d.tab.ents[slot].s
	k.vol = restoredVolume(r.RatePerMinute, at, r.Peak, r.PeakAt.UnixMilli(), d.lay.width)
	k.split = uint16(len(method))
	k.prm = d.paramsIndex(r.Route, route)
}

// takeDirty adds to u the routes whose baseline changed since the last call.
func (d *quietSpike) takeDirty(u *Baselines) {
	out := u.Routes
	d.unfolded = takeVolumes(d.dirty, d.unfolded, d.open(), &d.cnt, d.tau, d.tab.valid,
		func(r slotRef) (*volume, *ring, *bool) {
			k := &d.tab.ents[r.slot].s
			return &k.vol, &k.r, &k.dirty
		},
		func(r slotRef) { out = append(out, d.baseline(r.slot)) })
	clear(d.dirty)
	d.dirty = d.dirty[:0]
	slices.SortFunc(out, func(x, y RouteBaseline) int { return strings.Compare(x.Route, y.Route) })
	u.Routes = out
}
