package detectors

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/gatewatch/gatewatch/ingest"
)

// ObjectEnumerationConfig configures object_enumeration: once the detector has seen
// LearningPeriod of traffic, one client (its client key, else its IP) requests at least
// MinDistinct distinct objects (paths of one method and route template) within Window,
// and at least MinPeakRatio times its own recent peak there (the most it requested in
// a window before, decaying with PeakMemory).
type ObjectEnumerationConfig struct {
	Common         `yaml:",inline"`
	Window         time.Duration               `yaml:"window"`
	LearningPeriod time.Duration               `yaml:"learning_period"`
	MinDistinct    int                         `yaml:"min_distinct"`
	MinPeakRatio   float64                     `yaml:"min_peak_ratio"`
	PeakMemory     time.Duration               `yaml:"peak_memory"`
	Allowlist      []ClientAllow               `yaml:"allowlist"` // bulk-sync partners you know of
	Overrides      []ObjectEnumerationOverride `yaml:"overrides"`
}

// ObjectEnumerationOverride is an Override with object_enumeration's thresholds for
// one client (Key); a route_prefix override may only set enabled: false.
type ObjectEnumerationOverride struct {
	Override     `yaml:",inline"`
	MinDistinct  *int     `yaml:"min_distinct,omitempty"`
	MinPeakRatio *float64 `yaml:"min_peak_ratio,omitempty"`
}

func (c *ObjectEnumerationConfig) validate(add func(error)) {
	validateClientKeyed(add, ObjectEnumeration, &c.Common, c.Allowlist, c.Overrides, func(p string, o *ObjectEnumerationOverride) bool {
		if o.MinDistinct != nil {
			checkCount(add, p+".min_distinct", *o.MinDistinct)
		}
		if o.MinPeakRatio != nil {
			checkPeakRatio(add, p+".min_peak_ratio", *o.MinPeakRatio)
		}
		return o.MinDistinct != nil || o.MinPeakRatio != nil
	})
	checkLearning(add, ObjectEnumeration+".learning_period", c.LearningPeriod)
	checkCount(add, ObjectEnumeration+".min_distinct", c.MinDistinct)
	checkPeakRatio(add, ObjectEnumeration+".min_peak_ratio", c.MinPeakRatio)
	checkMemory(add, ObjectEnumeration+".peak_memory", c.PeakMemory)
}

// objectEnum fires when, once the detector has seen learning_period of traffic, one
// client (its client key, else its IP) requests at least min_distinct distinct objects
// on one route template (method and route) within window, and at least min_peak_ratio
// times its own recent peak there: broken object level authorisation probing, an
// attacker changing the invoice id in the URL. A bulk-sync client that reads
// thousands of objects every day has that in its peak and does not fire.
//
// A request asks for an object when its path differs from its route template (the
// template's ids were folded, or the gateway logged a route name). Every active client
// and route pair costs state, so a pair is small and costs no pointer to follow per
// event: it is keyed by 16 bytes of hash (the client's, and the method and route's), and
// keeps inline a ring of request counts, the distinct paths of its buckets (an lcSet:
// linear counting, an estimate) and a sample path per bucket. Its names are kept from
// the first time it is hot. The peak of its distinct counts persists as an
// ObjectBaseline, for the pairs whose windows reach the hot count; a pair without a
// peak is forgotten once its ring is empty, one with a peak is kept for three
// peak_memory time constants.
type objectEnum struct {
	windowed[oeKey]
	cnt   counters // requests per bucket, with a sample path
	arena arena
	ids   lcPool
	rules clientRules[oeParams]
	since *traffic
	ptau  float64
	learn int64
	dirty []slotRef
	key   [16]byte
	sink  uint64 // what prefetch loaded, so that the loads are not optimised away
	// The pair keys prefetchIndex made for the run of events at runBase, runN of
	// them, which observe takes instead of hashing client, method and route again.
	// runBase is an address, not a pointer: it keeps no batch alive, and observe
	// only compares an event's address with it.
	runBase uintptr
	runN    int
	runKeys [prefetchRun][16]byte
}

type oeParams struct {
	enabled     bool
	minDistinct uint32
	minRatio    float64
	severity    Severity
	hot         uint32
}

type oeKey struct {
	r     ring
	sum   [1]uint32
	prm   uint16
	dirty bool
	byIP  bool
	peak  peak
	ids   lcSet
	names *oeNames // once hot
}

// oeBuckets is how many buckets object_enumeration cuts a window into.
const oeBuckets = 5

type oePending struct {
	end   int64 // window end bucket; valid when count > 0
	count uint32
}

// oeNames are what a pair's key hashes (its client, method and route template) and
// what only a pair that has been hot needs: pend holds the distinct counts of the
// windows judged lately, by end bucket mod oeBuckets, until the window a window later
// folds them into the peak (the ring keeps no window before the open ones, as it would
// cost every pair a window more). Kept out of the entry, they cost the pairs that are
// never hot, nearly all of them, no cache line.
type oeNames struct {
	client, method, route string
	pend                  [oeBuckets]oePending
}

func newObjectEnumeration(c ObjectEnumerationConfig, lateness time.Duration, since *traffic, inc *incidents) *objectEnum {
	lay := newRingLayout(c.Window, lateness, oeBuckets, false)
	d := &objectEnum{
		cnt:   newCounters(lay, 1, true, true, 0),
		arena: newArena(lay, c.MaxKeys),
		ids:   lcPool{size: lay.size},
		since: since,
		ptau:  float64(c.PeakMemory.Milliseconds()),
		learn: c.LearningPeriod.Milliseconds(),
	}
	d.init(ObjectEnumeration, lay, c.MaxKeys, lay.size*lay.width, inc, d)
	d.tab.onRemove = d.release
	d.samples = &d.arena
	base := oeParams{enabled: true, minDistinct: uint32(c.MinDistinct), minRatio: c.MinPeakRatio, severity: c.Severity}
	base.hot = HotCount(base.minDistinct, base.minRatio)
	d.rules = newClientRules(base, oeParams{}, c.Overrides, c.Allowlist, func(p *oeParams, o *ObjectEnumerationOverride) {
		o.apply(&p.enabled, &p.severity)
		if o.MinDistinct != nil {
			p.minDistinct = uint32(*o.MinDistinct)
		}
		setIf(&p.minRatio, o.MinPeakRatio)
		p.hot = HotCount(p.minDistinct, p.minRatio)
	})
	return d
}

// ipClientSalt tells a client keyed by IP from a client key that reads the same.
const ipClientSalt = 0x5bd1e9955bd1e995

// pairKey sets d.key to the key of a client (whose hash is ch) and route (whose
// routeHash is rh), and returns it as a string that points into d.key.
func (d *objectEnum) pairKey(ch uint64, byIP bool, rh uint64) string {
	if byIP {
		ch ^= ipClientSalt
	}
	binary.LittleEndian.PutUint64(d.key[:8], ch)
	binary.LittleEndian.PutUint64(d.key[8:], rh)
	return unsafe.String(&d.key[0], len(d.key))
}

// storedPairKey is pairKey for a stored baseline's client and "METHOD /route".
func (d *objectEnum) storedPairKey(client, method, route string) string {
	return d.pairKey(keyHash(client), isIP(client), routeHash(method, route))
}

// asksObject reports whether an event asks for an object on a route template, and
// returns its client (see ClientOf).
func asksObject(ev *ingest.Event, buf *AddrBuf) (client string, byIP, ok bool) {
	if ev.Route == "" || ev.Path == ev.Route {
		return "", false, false
	}
	client, byIP = ClientOf(ev, buf)
	return client, byIP, client != ""
}

func (d *objectEnum) prefetchIndex(events []ingest.Event, hs *runHashes, out []uint64) {
	var sink uint64
	d.runBase, d.runN = uintptr(unsafe.Pointer(unsafe.SliceData(events))), len(events)
	for i := range events {
		out[i] = 0
		ev := &events[i]
		if _, byIP, ok := asksObject(ev, &d.addr); ok {
			ch := hs.ck[i]
			if byIP {
				ch = hs.ip[i]
			}
			rh := evHashes{route: hs.route[i]}.routeHashOf(ev)
			out[i] = keyHash(d.pairKey(ch, byIP, rh))
			d.runKeys[i] = d.key
			sink += d.tab.touchIndex(out[i])
		}
	}
	d.sink = sink
}

// runKey returns the pair key prefetchIndex made for ev, if ev is in the run it saw
// last; the engine observes a run's events after prefetching them (held records are
// prefetched on their own, and the run's events after them are then not found).
func (d *objectEnum) runKey(ev *ingest.Event) (string, bool) {
	size := unsafe.Sizeof(*ev)
	off := uintptr(unsafe.Pointer(ev)) - d.runBase
	if i := off / size; off%size == 0 && i < uintptr(d.runN) {
		return unsafe.String(&d.runKeys[i][0], len(d.runKeys[i])), true
	}
	return "", false
}

func (d *objectEnum) prefetchState(events []ingest.Event, hs []uint64) {
	var sink uint64
	for i := range events {
		if hs[i] == 0 {
			continue
		}
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += d.tab.warm(slot)
			sink += d.cnt.prefetch(slot, events[i].Time.UnixMilli(), &d.buck)
		}
	}
	// The bitmaps of the pairs past two objects: their addresses are in the entries
	// the loop above loads, by now on their way.
	for i := range events {
		if hs[i] == 0 {
			continue
		}
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			if b := d.tab.ents[slot].s.ids.bits; b != nil {
				_, bs := d.buck.of(events[i].Time.UnixMilli())
				sink += prefetchLines(unsafe.Pointer(&b[bs]), lcBits/8)
			}
		}
	}
	d.sink = sink
}

func (d *objectEnum) observe(ev *ingest.Event, hs evHashes, t int64, late bool) {
	if late || d.rules.skip(ev) {
		return
	}
	client, byIP, ok := asksObject(ev, &d.addr)
	if !ok {
		return
	}
	key, ok := d.runKey(ev)
	h := hs.key
	if !ok || h == 0 {
		key = d.pairKey(keyHash(client), byIP, hs.routeHashOf(ev))
		h = keyHash(key)
	}
	slot := d.tab.findHash(key, h)
	if slot < 0 {
		slot = d.tab.add(key, t)
		k := &d.tab.ents[slot].s
		k.prm = d.rules.of(client)
		k.byIP = byIP
		k.peak = newPeak(t)
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	if !p.enabled {
		return
	}
	b, bs := d.buck.of(t)
	data := d.cnt.keyData(slot)
	o, dropped := d.cnt.place(data, &k.r, k.sum[:], b, bs, d.keep())
	if dropped != 0 {
		d.ids.clear(&k.ids, dropped)
	}
	ph := hs.pathHash(ev)
	d.cnt.sample(data, o, data[o] == 0, b, bs, ev.Path, ph, &d.arena)
	d.cnt.count(data, &k.r, k.sum[:], o, b, bs, t)
	d.ids.add(&k.ids, int(bs), ph)
	if k.sum[0] >= p.hot {
		if k.names == nil {
			k.names = &oeNames{client: strings.Clone(client), method: strings.Clone(ev.Method), route: strings.Clone(ev.Route)}
		}
		d.markHot(slot)
	}
}

// routeHash is the hash of a method and route template.
func routeHash(method, route string) uint64 { return hash64(route) ^ hash64(method)*0x9e3779b97f4a7c15 }

func (d *objectEnum) markDirty(slot int32) {
	k := &d.tab.ents[slot].s
	if !k.dirty {
		k.dirty = true
		d.dirty = append(d.dirty, d.tab.ref(slot))
	}
}

func (d *objectEnum) bounds(slot int32) (int64, int64, bool) {
	r := &d.tab.ents[slot].s.r
	return r.lo, r.top, r.used
}

// cool keeps a pair judged while it may fire. Its window counts fold into its peak
// when a window a full window later is judged (judge), but the windows after its last
// request are not judged (the layout keeps no window behind the open ones): once it
// may not fire, cool folds the counts as those judgements would have, and keeps the
// pair until all are folded. Else a burst shorter than a window, then silence, never
// reached the peak, and a nightly sync of a minute paged every night.
func (d *objectEnum) cool(slot int32, keep int64) bool {
	d.trim(slot, keep)
	if d.mayFire(slot) {
		return true
	}
	return d.foldPending(slot, d.closed()-d.lay.n)
}

func (d *objectEnum) mayFire(slot int32) bool {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	// A key without names has never been hot: it is named at its next event.
	return k.names != nil && p.enabled && k.sum[0] >= p.hot
}

// trim drops the key's buckets before keep.
func (d *objectEnum) trim(slot int32, keep int64) {
	k := &d.tab.ents[slot].s
	if dropped := d.cnt.trim(d.cnt.keyData(slot), &k.r, k.sum[:], keep); dropped != 0 {
		d.ids.clear(&k.ids, dropped)
	}
}

// expiry: a pair whose ring is empty is forgotten, unless it has a peak (see keepPeak).
func (d *objectEnum) expiry(wm int64) int64 { return d.lay.oldestKept(wm) * d.lay.width }

// windowMask returns the ring slots of the key's live buckets in the window ending at
// end.
func (d *objectEnum) windowMask(k *oeKey, end int64) uint64 {
	if !k.r.used {
		return 0
	}
	return d.lay.slotMask(max(end-d.lay.n+1, k.r.lo), min(end, k.r.top))
}

// distinctIn returns the distinct objects of the window of the key at slot ending at
// end: the linear counting estimate, at most the window's requests (the estimate can
// overshoot them, and an analyst reads both side by side).
func (d *objectEnum) distinctIn(slot int32, end int64) uint32 {
	k := &d.tab.ents[slot].s
	requests := d.cnt.sum(d.cnt.keyData(slot), &k.r, end-d.lay.n+1, end, 0)
	return min(uint32(d.ids.count(&k.ids, d.windowMask(k, end))), requests)
}

// foldPending folds into the key's peak the pending window counts of windows ending
// up to upTo, keeps a key with a peak in the table for three peak_memory time
// constants past it, and reports whether counts of later windows are left pending.
func (d *objectEnum) foldPending(slot int32, upTo int64) (left bool) {
	k := &d.tab.ents[slot].s
	if k.names == nil {
		return false // never hot: nothing pending
	}
	changed := false
	for i := range k.names.pend {
		pw := &k.names.pend[i]
		if pw.count == 0 {
			continue
		}
		if pw.end > upTo {
			left = true
			continue
		}
		if at := (pw.end + 1) * d.lay.width; float64(pw.count) >= k.peak.asOf(at, d.ptau) {
			k.peak.v, k.peak.at = float64(pw.count), at
			changed = true
		}
		*pw = oePending{}
	}
	if changed {
		d.markDirty(slot)
		d.tab.touch(slot, d.keepPeak(k.peak.at))
	}
	return left
}

// keepPeak is the time a key with a peak at at is last seen at, for expiry and
// eviction: three peak_memory time constants on, when it is under 5% of itself.
func (d *objectEnum) keepPeak(at int64) int64 { return at + 3*int64(d.ptau) - d.lay.size*d.lay.width }

func (d *objectEnum) judge(slot int32, end int64) {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	n, w := d.lay.n, d.lay.width
	d.foldPending(slot, end-n)
	objects := d.distinctIn(slot, end)
	if objects >= p.hot {
		// Windows of fewer could never keep one from firing, and which of them are
		// judged depends on arrival order. The one in its place ended a window ago or
		// before, and was folded above.
		i := end % oeBuckets
		if i < 0 {
			i += oeBuckets
		}
		k.names.pend[i] = oePending{end: end, count: objects}
	}
	start := (end - n + 1) * w
	if objects < p.minDistinct || !d.since.learnt(start, d.learn) {
		return
	}
	peak := k.peak.asOf(start, d.ptau)
	if float64(objects) < p.minRatio*peak {
		return
	}
	d.fire(slot, end, objects, peak)
}

func (d *objectEnum) fire(slot int32, end int64, objects uint32, peak float64) {
	k := &d.tab.ents[slot].s
	nm := k.names
	p := &d.rules.params[k.prm]
	from := end - d.lay.n + 1
	data := d.cnt.keyData(slot)
	first, last, _ := d.cnt.span(data, &k.r, from, end)
	requests := d.cnt.sum(data, &k.r, from, end, 0)
	route := nm.method + " " + nm.route
	keyType := "client_key"
	if k.byIP {
		keyType = "client_ip"
	}
	d.inc.fire(firing{
		key:      nm.client + " " + route,
		at:       (end + 1) * d.lay.width,
		first:    first,
		last:     last,
		strength: int(objects),
		severity: p.severity,
		labels:   map[string]string{"key_type": keyType, "client": nm.client, "method": nm.method, "route": nm.route},
	}, func() (Evidence, string) {
		peak := roundSig(peak)
		ev := d.windowEvidence(end)
		ev.Method, ev.Route = nm.method, nm.route
		ev.DistinctObjects, ev.MinDistinct = int(objects), int(p.minDistinct)
		ev.TotalCount = int(requests)
		ev.RecentPeak, ev.MinPeakRatio = &peak, p.minRatio
		ev.SamplePaths = d.cnt.samples(data, &k.r, from, end, &d.arena, 10)
		who := "Client key " + nm.client
		if k.byIP {
			who = "Client IP " + nm.client
		}
		summary := fmt.Sprintf("%s requested %d distinct objects of %s within %s (its recent peak: %.3g).",
			who, objects, route, d.window, peak)
		return ev, summary
	})
}

func (d *objectEnum) release(slot int32, _ bool) {
	d.ids.drop(&d.tab.ents[slot].s.ids)
	clear(d.cnt.keyData(slot))
}

// flushed folds every pair's windows into its peak; pairs stay, their peaks are the
// baseline.
func (d *objectEnum) flushed() {
	for slot := range d.tab.ents {
		e := &d.tab.ents[slot]
		if !e.live {
			continue
		}
		k := &e.s
		d.foldPending(int32(slot), math.MaxInt64)
		if k.r.used {
			d.trim(int32(slot), k.r.top+1)
		}
	}
}

func (d *objectEnum) baseline(slot int32) ObjectBaseline {
	k := &d.tab.ents[slot].s
	nm := k.names
	return ObjectBaseline{Client: nm.client, Route: nm.method + " " + nm.route, Peak: k.peak.v, PeakAt: msTime(k.peak.at)}
}

func (d *objectEnum) load(b *Baselines) { d.adoptAll(b.Objects, math.MinInt64, false) }

func (d *objectEnum) merge(b *Baselines, wm int64) (adopted, merged int, left bool) {
	n, left := d.adoptAll(b.Objects, wm, true)
	return n, 0, left
}

// adoptAll adds the stored pairs the table does not hold and would not expire at once
// at wm (math.MinInt64: any), and returns how many, and whether it left some out for
// want of room. With room, the most recent go first while the table has room; without,
// all go in, oldest first, so that past max_keys the most recent survive.
func (d *objectEnum) adoptAll(list []ObjectBaseline, wm int64, room bool) (int, bool) {
	cutoff := int64(math.MinInt64)
	if wm != math.MinInt64 {
		cutoff = d.expiry(wm) - d.keepPeak(0)
	}
	var fresh []*ObjectBaseline
	for i := range list {
		o := &list[i]
		method, route, ok := strings.Cut(o.Route, " ")
		if !ok || o.Client == "" || o.Peak <= 0 || o.PeakAt.UnixMilli() < cutoff {
			continue
		}
		if d.tab.find(d.storedPairKey(o.Client, method, route)) < 0 {
			fresh = append(fresh, o)
		}
	}
	slices.SortFunc(fresh, func(x, y *ObjectBaseline) int {
		return cmp.Or(x.PeakAt.Compare(y.PeakAt), strings.Compare(x.Client, y.Client), strings.Compare(x.Route, y.Route))
	})
	if room {
		slices.Reverse(fresh)
	}
	n := 0
	for _, o := range fresh {
		if room && d.tab.live >= d.tab.max {
			break
		}
		method, route, _ := strings.Cut(o.Route, " ")
		byIP := isIP(o.Client)
		at := o.PeakAt.UnixMilli()
		slot := d.tab.add(d.storedPairKey(o.Client, method, route), d.keepPeak(at))
		k := &d.tab.ents[slot].s
		k.prm = d.rules.of(o.Client)
		k.byIP = byIP
		k.names = &oeNames{client: o.Client, method: method, route: route}
		k.peak = newPeak(at)
		k.peak.v = o.Peak
		n++
	}
	return n, n < len(fresh)
}

func (d *objectEnum) takeDirty(u *Baselines) {
	for _, r := range d.dirty {
		if d.tab.valid(r) {
			u.Objects = append(u.Objects, d.baseline(r.slot))
			d.tab.ents[r.slot].s.dirty = false
		}
	}
	clear(d.dirty)
	d.dirty = d.dirty[:0]
	slices.SortFunc(u.Objects, func(x, y ObjectBaseline) int {
		return cmp.Or(strings.Compare(x.Client, y.Client), strings.Compare(x.Route, y.Route))
	})
}
