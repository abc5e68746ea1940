package detectors

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// ClientVolumeSpikeConfig configures client_volume_spike: a client key first seen at
// least LearningPeriod before the window makes at least MinCount requests within
// Window, a count that high has a Poisson probability below PValue under the key's
// baseline rate, and it is at least MinPeakRatio times the key's recent peak (its
// largest window count, decaying with PeakMemory).
type ClientVolumeSpikeConfig struct {
	Common         `yaml:",inline"`
	Window         time.Duration               `yaml:"window"`
	LearningPeriod time.Duration               `yaml:"learning_period"`
	MinCount       int                         `yaml:"min_count"`
	PValue         float64                     `yaml:"p_value"`
	MinPeakRatio   float64                     `yaml:"min_peak_ratio"`
	PeakMemory     time.Duration               `yaml:"peak_memory"`
	Allowlist      []ClientAllow               `yaml:"allowlist"`
	Overrides      []ClientVolumeSpikeOverride `yaml:"overrides"`
}

// ClientVolumeSpikeOverride is an Override with client_volume_spike's thresholds; a
// route_prefix override may only set enabled: false.
type ClientVolumeSpikeOverride struct {
	Override     `yaml:",inline"`
	MinCount     *int     `yaml:"min_count,omitempty"`
	PValue       *float64 `yaml:"p_value,omitempty"`
	MinPeakRatio *float64 `yaml:"min_peak_ratio,omitempty"`
}

func (c *ClientVolumeSpikeConfig) validate(add func(error)) {
	validateClientKeyed(add, ClientVolumeSpike, &c.Common, c.Allowlist, c.Overrides, func(p string, o *ClientVolumeSpikeOverride) bool {
		if o.MinCount != nil {
			checkCount(add, p+".min_count", *o.MinCount)
		}
		if o.PValue != nil {
			checkP(add, p+".p_value", *o.PValue)
		}
		if o.MinPeakRatio != nil {
			checkPeakRatio(add, p+".min_peak_ratio", *o.MinPeakRatio)
		}
		return o.MinCount != nil || o.PValue != nil || o.MinPeakRatio != nil
	})
	checkLearning(add, ClientVolumeSpike+".learning_period", c.LearningPeriod)
	checkCount(add, ClientVolumeSpike+".min_count", c.MinCount)
	checkP(add, ClientVolumeSpike+".p_value", c.PValue)
	checkPeakRatio(add, ClientVolumeSpike+".min_peak_ratio", c.MinPeakRatio)
	checkMemory(add, ClientVolumeSpike+".peak_memory", c.PeakMemory)
}

// volumeSpike fires when a client key, first seen at least learning_period before the
// window, makes at least min_count requests within window, that count is improbable
// under its baseline rate (P(X ≥ count) < p_value for X ~ Poisson(rate × window)), and
// it is at least min_peak_ratio times its recent peak: "more requests than the normal
// pattern". The peak carries the key's daily rhythm and its periodic jobs (this
// morning's peak is no larger than yesterday's), and it follows slow growth, so only a
// jump well beyond what the key has done before pages. The rate and peak are those of
// volume, as quiet_endpoint_spike keeps them per route, and persist as a
// ClientBaseline.
type volumeSpike struct {
	windowed[cvKey]
	cnt      counters // requests per bucket, with a sample path
	arena    arena
	rules    clientRules[cvParams]
	tau      float64 // rate time constant, ms
	ptau     float64 // peak time constant, ms
	learn    int64
	dirty    []slotRef
	unfolded []slotRef // keys written with counts in open buckets (takeVolumes)
	sink     uint64    // what prefetch loaded, so that the loads are not optimised away
}

type cvParams struct {
	enabled  bool
	minCount uint32
	pValue   float64
	minRatio float64
	severity Severity
	hot      uint32
}

type cvKey struct {
	r     ring
	sum   [1]uint32
	prm   uint16
	dirty bool
	first int64 // first event, ms
	vol   volume
}

func newClientVolumeSpike(c ClientVolumeSpikeConfig, lateness time.Duration, inc *incidents) *volumeSpike {
	lay := newRingLayout(c.Window, lateness, 10, true)
	d := &volumeSpike{
		cnt:   newCounters(lay, 1, true, true, 0),
		arena: newArena(lay, c.MaxKeys),
		tau:   float64(max(c.LearningPeriod, time.Hour).Milliseconds()),
		ptau:  float64(c.PeakMemory.Milliseconds()),
		learn: c.LearningPeriod.Milliseconds(),
	}
	d.init(ClientVolumeSpike, lay, c.MaxKeys, d.ttl(), inc, d)
	d.tab.onRemove = d.release
	d.samples = &d.arena
	base := cvParams{enabled: true, minCount: uint32(c.MinCount), pValue: c.PValue, minRatio: c.MinPeakRatio, severity: c.Severity}
	base.hot = HotCount(base.minCount, base.minRatio)
	d.rules = newClientRules(base, cvParams{}, c.Overrides, c.Allowlist, func(p *cvParams, o *ClientVolumeSpikeOverride) {
		o.apply(&p.enabled, &p.severity)
		if o.MinCount != nil {
			p.minCount = uint32(*o.MinCount)
		}
		setIf(&p.pValue, o.PValue)
		setIf(&p.minRatio, o.MinPeakRatio)
		p.hot = HotCount(p.minCount, p.minRatio)
	})
	return d
}

// ttl is how long a key stays without traffic: three time constants of the slower of
// its rate and its peak.
func (d *volumeSpike) ttl() int64 { return 3 * int64(max(d.tau, d.ptau)) }

func (d *volumeSpike) prefetchIndex(events []ingest.Event, hs *runHashes, out []uint64) {
	var sink uint64
	for i := range events {
		out[i] = hs.ck[i]
		sink += d.tab.touchIndex(out[i])
	}
	d.sink = sink
}

func (d *volumeSpike) prefetchState(events []ingest.Event, hs []uint64) {
	var sink uint64
	for i := range events {
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += d.tab.warm(slot)
			sink += d.cnt.prefetch(slot, events[i].Time.UnixMilli(), &d.buck)
		}
	}
	d.sink = sink
}

func (d *volumeSpike) observe(ev *ingest.Event, h evHashes, t int64, late bool) {
	if ev.ClientKey == "" || d.rules.skip(ev) {
		return
	}
	slot := d.tab.findHash(ev.ClientKey, h.key)
	if slot < 0 {
		slot = d.tab.add(ev.ClientKey, t)
		k := &d.tab.ents[slot].s
		k.prm = d.rules.of(ev.ClientKey)
		k.first = t
		k.vol = newVolume(t)
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	if t < k.first {
		k.first = t
		d.markDirty(slot)
	}
	if late {
		k.vol.addLate(t, d.tau) // straight into the baseline; no window
		d.markDirty(slot)
		return
	}
	b, bs := d.buck.of(t)
	data := d.cnt.keyData(slot)
	k.vol.foldRate(&d.cnt, data, &k.r, d.open(), d.tau)
	o, _ := d.cnt.place(data, &k.r, k.sum[:], b, bs, d.keep())
	fresh := data[o] == 0
	d.cnt.count(data, &k.r, k.sum[:], o, b, bs, t)
	d.markDirty(slot) // written with the event's bucket once it closes (takeVolumes)
	p := &d.rules.params[k.prm]
	if !p.enabled {
		return
	}
	d.cnt.sample(data, o, fresh, b, bs, ev.Path, h.pathHash(ev), &d.arena)
	if k.sum[0] >= p.hot {
		d.markHot(slot)
	}
}

func (d *volumeSpike) markDirty(slot int32) {
	k := &d.tab.ents[slot].s
	if !k.dirty {
		k.dirty = true
		d.dirty = append(d.dirty, d.tab.ref(slot))
	}
}

func (d *volumeSpike) bounds(slot int32) (int64, int64, bool) {
	r := &d.tab.ents[slot].s.r
	return r.lo, r.top, r.used
}

func (d *volumeSpike) cool(slot int32, keep int64) bool {
	k := &d.tab.ents[slot].s
	data := d.cnt.keyData(slot)
	if k.vol.foldRate(&d.cnt, data, &k.r, keep+d.lay.back, d.tau) {
		d.markDirty(slot)
	}
	d.cnt.trim(data, &k.r, k.sum[:], keep)
	return d.mayFire(slot)
}

func (d *volumeSpike) mayFire(slot int32) bool {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	return p.enabled && k.sum[0] >= p.hot
}

func (d *volumeSpike) expiry(wm int64) int64 { return d.lay.oldestKept(wm)*d.lay.width - d.ttl() }

func (d *volumeSpike) judge(slot int32, end int64) {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
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
	start := from * w
	if count < p.minCount || start-k.first < d.learn {
		return
	}
	rate := k.vol.rateAsOf(start, k.first, d.tau)
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

func (d *volumeSpike) fire(slot int32, end int64, count uint32, rate, lambda, pv, peak float64) {
	name := d.tab.keyOf(slot)
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	from := end - d.lay.n + 1
	first, last, _ := d.cnt.span(d.cnt.keyData(slot), &k.r, from, end)
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * d.lay.width,
		first:    first,
		last:     last,
		strength: int(count),
		severity: p.severity,
		labels:   map[string]string{"key_type": "client_key"},
	}, func() (Evidence, string) {
		rate, lambda, pv, peak := roundSig(rate), roundSig(lambda), roundSig(pv), roundSig(peak)
		ev := d.windowEvidence(end)
		ev.BaselineRatePerMin = &rate
		ev.ObservedCount, ev.MinCount = int(count), int(p.minCount)
		ev.Expected, ev.PValue, ev.MaxPValue = &lambda, &pv, p.pValue
		ev.RecentPeak, ev.MinPeakRatio = &peak, p.minRatio
		ev.KeyFirstSeen = formatTime(msTime(k.first))
		ev.SamplePaths = d.cnt.samples(d.cnt.keyData(slot), &k.r, from, end, &d.arena, 10)
		summary := fmt.Sprintf("Client key %s made %d requests within %s against a baseline of %.3g a minute (%.3g expected, p = %.2g) and a recent peak of %.3g.",
			name, count, d.window, rate, lambda, pv, peak)
		return ev, summary
	})
}

func (d *volumeSpike) release(slot int32, _ bool) { clear(d.cnt.keyData(slot)) }

// flushed folds every key's ring into its baseline.
func (d *volumeSpike) flushed() {
	for slot := range d.tab.ents {
		e := &d.tab.ents[slot]
		if !e.live {
			continue
		}
		k := &e.s
		data := d.cnt.keyData(int32(slot))
		if k.r.used {
			changed := k.vol.foldRate(&d.cnt, data, &k.r, k.r.top+1, d.tau)
			if k.vol.foldPeaks(&d.cnt, data, &k.r, k.r.top+d.lay.n-1, d.rules.params[k.prm].hot, d.ptau) || changed {
				d.markDirty(int32(slot))
			}
			d.cnt.trim(data, &k.r, k.sum[:], k.r.top+1)
		}
		k.vol.rateTo, k.vol.peak.to = math.MinInt64/2, math.MinInt64/2
	}
}

func (d *volumeSpike) baseline(slot int32) ClientBaseline {
	k := &d.tab.ents[slot].s
	return ClientBaseline{
		Key: d.tab.keyOf(slot), FirstSeen: msTime(k.first), RatePerMinute: k.vol.rate, AsOf: msTime(k.vol.rateAt),
		Peak: k.vol.peak.v, PeakAt: msTime(k.vol.peak.at),
	}
}

func (d *volumeSpike) load(b *Baselines) { d.adoptAll(b.Clients, math.MinInt64, false) }

func (d *volumeSpike) merge(b *Baselines, wm int64) (adopted, merged int, left bool) {
	n, left := d.adoptAll(b.Clients, wm, true)
	return n, 0, left
}

// adoptAll adds the stored keys the table does not hold and would not expire at once at
// wm (math.MinInt64: any), and returns how many, and whether it left some out for want
// of room. With room, the most recent go first while the table has room; without, all
// go in, oldest first, so that past max_keys the most recent survive.
func (d *volumeSpike) adoptAll(list []ClientBaseline, wm int64, room bool) (int, bool) {
	cutoff := int64(math.MinInt64)
	if wm != math.MinInt64 {
		cutoff = d.expiry(wm) + d.lay.width
	}
	lastOf := func(c *ClientBaseline) int64 { return max(c.AsOf.UnixMilli(), c.PeakAt.UnixMilli()) }
	var fresh []*ClientBaseline
	for i := range list {
		if c := &list[i]; c.Key != "" && lastOf(c) >= cutoff && d.tab.find(c.Key) < 0 {
			fresh = append(fresh, c)
		}
	}
	slices.SortFunc(fresh, func(x, y *ClientBaseline) int {
		return cmp.Or(cmp.Compare(lastOf(x), lastOf(y)), strings.Compare(x.Key, y.Key))
	})
	if room {
		slices.Reverse(fresh)
	}
	n := 0
	for _, c := range fresh {
		if room && d.tab.live >= d.tab.max {
			break
		}
		slot := d.tab.add(c.Key, lastOf(c))
		k := &d.tab.ents[slot].s
		k.prm = d.rules.of(c.Key)
		k.first = c.FirstSeen.UnixMilli()
		k.vol = restoredVolume(c.RatePerMinute, c.AsOf.UnixMilli(), c.Peak, c.PeakAt.UnixMilli(), d.lay.width)
		n++
	}
	return n, n < len(fresh)
}

func (d *volumeSpike) takeDirty(u *Baselines) {
	d.unfolded = takeVolumes(d.dirty, d.unfolded, d.open(), &d.cnt, d.tau, d.tab.valid,
		func(r slotRef) (*volume, *ring, *bool) {
			k := &d.tab.ents[r.slot].s
			return &k.vol, &k.r, &k.dirty
		},
		func(r slotRef) { u.Clients = append(u.Clients, d.baseline(r.slot)) })
	clear(d.dirty)
	d.dirty = d.dirty[:0]
	slices.SortFunc(u.Clients, func(x, y ClientBaseline) int { return strings.Compare(x.Key, y.Key) })
}
