package detectors

import (
	"cmp"
	"container/heap"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// escalation is the span within which two or more new countries of one key escalate
// the incident's severity.
const escalation = int64(time.Hour / time.Millisecond)

// newCountry fires when an established client key (first seen at least learning_period
// before the event, with at least min_events events before it) is seen from a country
// not among those it was seen from within history; an incident with two or more new
// countries within an hour is escalated one severity step.
//
// A country the key's baseline does not hold becomes a candidate, decided once the
// watermark passes the candidate's earliest event, when every event before it has
// arrived: the decision, and the event it names, do not depend on arrival order. The
// events before the candidate are counted per slot of half allowed_lateness, so
// min_events is exact to the slot: events in the new country's slot do not count.
type newCountry struct {
	cfg     NewCountryConfig
	tab     *keyTable[ncKey]
	slotW   int64 // ms per count slot
	slots   bucketer
	wmSlot  int64 // count slot of wm
	history int64

	params    []ncParams
	keyParams map[string]uint16
	skip      []string
	allow     map[string][]uint16 // key → allowlisted countries

	cands ncCands
	dirty []slotRef

	inc  *incidents
	sink int64 // what prefetch loaded, so that the loads are not optimised away
	wm   int64
	next int64
}

type ncParams struct {
	enabled   bool
	learning  int64
	minEvents uint64
	severity  Severity
}

// ncKey's fields are ordered so that an event touches as few cache lines as it can.
type ncKey struct {
	dirty   bool
	pending uint8 // candidates of this key in cands
	nCC     uint8
	prm     uint16
	first   int64     // first event time, ms
	lo      int64     // count slot of recent[0]
	recent  [4]uint32 // events in count slots lo..lo+3
	settled uint64    // events in count slots before lo
	// asOf is the last event time of the stored baseline the key was adopted with
	// (noEvent: none). Its events were counted there: read again (a restart, or a
	// cluster task's next owner, reads on from a commit that open windows held back),
	// they are not counted twice.
	asOf int64
	cc   [2]ncCountry
	more *[]ncCountry // roaming keys' further countries
}

type ncCountry struct {
	first, last int64
	events      uint32
	code        uint16
}

// An ncCand is a country a key was seen from that its baseline does not hold, waiting
// for the watermark to pass its earliest event.
type ncCand struct {
	ref     slotRef
	code    uint16
	t       int64 // earliest event from the country
	last    int64
	events  uint32
	samples [3][]string // paths, client IPs, request ids of the events at t
	at      int         // index in ncCands.heap
}

type ncCandID struct {
	ref  slotRef
	code uint16
}

// ncCands are the pending candidates: found by key and country as events come, and
// taken in order of time as the watermark passes them. A traffic of new keys (a
// scanner's made-up API keys, a tenant onboarding) makes hundreds of thousands of
// them within the lateness; a scan of every candidate per event or per advance made
// that quadratic. Candidates of an evicted key stay until they are due and are then
// dropped: their slot's generation no longer matches.
type ncCands struct {
	byID map[ncCandID]*ncCand
	heap []*ncCand // min-heap by t
}

func (q *ncCands) Len() int           { return len(q.heap) }
func (q *ncCands) Less(i, j int) bool { return q.heap[i].t < q.heap[j].t }
func (q *ncCands) Swap(i, j int) {
	q.heap[i], q.heap[j] = q.heap[j], q.heap[i]
	q.heap[i].at, q.heap[j].at = i, j
}
func (q *ncCands) Push(x any) {
	c := x.(*ncCand)
	c.at = len(q.heap)
	q.heap = append(q.heap, c)
}
func (q *ncCands) Pop() any {
	c := q.heap[len(q.heap)-1]
	q.heap[len(q.heap)-1] = nil
	q.heap = q.heap[:len(q.heap)-1]
	return c
}

func (q *ncCands) get(r slotRef, code uint16) *ncCand { return q.byID[ncCandID{r, code}] }

func (q *ncCands) add(c *ncCand) {
	if q.byID == nil {
		q.byID = map[ncCandID]*ncCand{}
	}
	q.byID[ncCandID{c.ref, c.code}] = c
	heap.Push(q, c)
}

// earliest returns the time of the earliest candidate; math.MaxInt64 when none.
func (q *ncCands) earliest() int64 {
	if len(q.heap) == 0 {
		return math.MaxInt64
	}
	return q.heap[0].t
}

// takeBefore removes and returns the candidates before wm.
func (q *ncCands) takeBefore(wm int64) []*ncCand {
	var due []*ncCand
	for len(q.heap) > 0 && q.heap[0].t < wm {
		c := heap.Pop(q).(*ncCand)
		delete(q.byID, ncCandID{c.ref, c.code})
		due = append(due, c)
	}
	return due
}

func newNewCountry(c NewCountryConfig, lateness time.Duration, inc *incidents) *newCountry {
	d := &newCountry{
		cfg:       c,
		slotW:     max((lateness.Milliseconds()+1)/2, 1),
		history:   c.History.Milliseconds(),
		keyParams: map[string]uint16{},
		allow:     map[string][]uint16{},
		inc:       inc,
		wm:        math.MinInt64 / 2,
		next:      math.MinInt64,
	}
	d.slots = newBucketer(d.slotW, 1)
	d.wmSlot = floorDiv(d.wm, d.slotW)
	d.tab = newKeyTable[ncKey](c.MaxKeys, d.history/4)
	base := ncParams{enabled: true, learning: c.LearningPeriod.Milliseconds(), minEvents: uint64(c.MinEvents), severity: c.Severity}
	d.params = append(d.params, base)
	for _, o := range c.Overrides {
		if o.RoutePrefix != "" {
			d.skip = append(d.skip, o.RoutePrefix)
			continue
		}
		if _, dup := d.keyParams[o.Key]; dup {
			continue
		}
		p := base
		o.apply(&p.enabled, &p.severity)
		if o.LearningPeriod != nil {
			p.learning = o.LearningPeriod.Milliseconds()
		}
		if o.MinEvents != nil {
			p.minEvents = uint64(*o.MinEvents)
		}
		d.keyParams[o.Key] = uint16(len(d.params))
		d.params = append(d.params, p)
	}
	for _, a := range c.Allowlist {
		for _, cc := range a.Countries {
			d.allow[a.Key] = append(d.allow[a.Key], packCountry(cc))
		}
	}
	return d
}

func (d *newCountry) name() string { return NewCountry }
func (d *newCountry) due() *int64  { return &d.next }

func (d *newCountry) stats() (int, uint64, uint64) {
	return d.tab.live, d.tab.evictions, d.tab.expired
}

// horizon: a pending candidate still needs its events, which are not in any state that
// outlives a restart.
func (d *newCountry) horizon(int64) int64 {
	return d.cands.earliest()
}

func (d *newCountry) prefetchIndex(events []ingest.Event, hs *runHashes, out []uint64) {
	var sink int64
	for i := range events {
		out[i] = hs.ck[i]
		sink += int64(d.tab.touchIndex(out[i]))
	}
	d.sink = sink
}

func (d *newCountry) prefetchState(events []ingest.Event, hs []uint64) {
	var sink int64
	for i := range events {
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += int64(d.tab.warm(slot))
		}
	}
	d.sink = sink
}

func (d *newCountry) observe(ev *ingest.Event, h evHashes, t int64, _ bool) {
	code := packCountry(ev.Country)
	if code == 0 || ev.ClientKey == "" {
		return
	}
	for _, p := range d.skip {
		if strings.HasPrefix(ev.Route, p) {
			return
		}
	}
	slot := d.tab.findHash(ev.ClientKey, h.key)
	if slot < 0 {
		slot = d.tab.add(ev.ClientKey, t)
		k := &d.tab.ents[slot].s
		k.first, k.asOf = t, noEvent
		// No event that is not late can be more than two slots before t.
		k.lo = d.countSlot(t) - 3
		if i, ok := d.keyParams[ev.ClientKey]; ok {
			k.prm = i
		}
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	counted := t <= k.asOf
	if !counted {
		k.first = min(k.first, t)
		d.count(k, t)
		d.markDirty(slot)
	}

	if k.pending > 0 {
		if c := d.cands.get(d.tab.ref(slot), code); c != nil {
			if c.add(ev, t) {
				heap.Fix(&d.cands, c.at)
			}
			return
		}
	}
	if c := k.country(code); c != nil && c.last >= t-d.history {
		if !counted {
			c.seen(t)
		}
		return
	}
	p := &d.params[k.prm]
	// A key that cannot be established by the time of t, even if events before its
	// first arrive later, learns the country at once.
	if !p.enabled || t-k.first < p.learning-2*d.slotW {
		d.learn(k, code, t, t, 1)
		return
	}
	c := &ncCand{ref: d.tab.ref(slot), code: code, t: t, last: t}
	c.add(ev, t)
	d.cands.add(c)
	k.pending++
	d.next = min(d.next, t+1) // a late candidate is due at once

}

// countSlot returns the count slot of t.
func (d *newCountry) countSlot(t int64) int64 {
	x, _ := d.slots.of(t)
	return x
}

// count adds an event at t to the key's event counts. Slots before the watermark's
// are merged into settled: no pending candidate is before the watermark.
func (d *newCountry) count(k *ncKey, t int64) {
	x := d.countSlot(t)
	lo := max(d.wmSlot, x-int64(len(k.recent))+1)
	d.settle(k, lo)
	if x < k.lo {
		k.settled++
		return
	}
	k.recent[x-k.lo]++
}

func (d *newCountry) settle(k *ncKey, lo int64) {
	if lo <= k.lo {
		return
	}
	shift := lo - k.lo
	n := int64(len(k.recent))
	for i := int64(0); i < n; i++ {
		if i < shift {
			k.settled += uint64(k.recent[i])
		}
		if i+shift < n {
			k.recent[i] = k.recent[i+shift]
		} else {
			k.recent[i] = 0
		}
	}
	k.lo = lo
}

// before returns how many of the key's events are in count slots before t's.
func (d *newCountry) before(k *ncKey, t int64) uint64 {
	n := k.settled
	x := d.countSlot(t)
	for i := range k.recent {
		if k.lo+int64(i) < x {
			n += uint64(k.recent[i])
		}
	}
	return n
}

func (k *ncKey) total() uint64 {
	n := k.settled
	for _, r := range k.recent {
		n += uint64(r)
	}
	return n
}

func (k *ncKey) country(code uint16) *ncCountry {
	for i := 0; i < int(k.nCC); i++ {
		if c := k.at(i); c.code == code {
			return c
		}
	}
	return nil
}

func (k *ncKey) at(i int) *ncCountry {
	if i < len(k.cc) {
		return &k.cc[i]
	}
	return &(*k.more)[i-len(k.cc)]
}

func (c *ncCountry) seen(t int64) {
	c.first = min(c.first, t)
	c.last = max(c.last, t)
	if c.events < math.MaxUint32 {
		c.events++
	}
}

// learn adds events from a country to the key's baseline.
func (d *newCountry) learn(k *ncKey, code uint16, first, last int64, events uint32) {
	c := k.country(code)
	if c == nil {
		d.forget(k, last-d.history)
		c = k.add(code, first)
	}
	c.first = min(c.first, first)
	c.last = max(c.last, last)
	c.events = uint32(min(uint64(c.events)+uint64(events), math.MaxUint32))
}

func (k *ncKey) add(code uint16, t int64) *ncCountry {
	nc := ncCountry{code: code, first: t, last: t}
	if int(k.nCC) < len(k.cc) {
		k.cc[k.nCC] = nc
	} else {
		if k.more == nil {
			k.more = new([]ncCountry)
		}
		*k.more = append(*k.more, nc)
	}
	k.nCC++
	return k.at(int(k.nCC) - 1)
}

// forget drops the countries last seen before cutoff: they are outside history.
func (d *newCountry) forget(k *ncKey, cutoff int64) {
	for i := 0; i < int(k.nCC); {
		if k.at(i).last >= cutoff {
			i++
			continue
		}
		last := int(k.nCC) - 1
		*k.at(i) = *k.at(last)
		if last >= len(k.cc) {
			*k.more = (*k.more)[:last-len(k.cc)]
		}
		k.nCC--
	}
}

// add folds an event from the candidate's country into it, reporting whether it moved
// the candidate's time earlier. Samples come from the events at the earliest time only,
// so they do not depend on arrival order.
func (c *ncCand) add(ev *ingest.Event, t int64) (earlier bool) {
	c.events++
	c.last = max(c.last, t)
	if t < c.t {
		c.t = t
		c.samples = [3][]string{}
		earlier = true
	}
	if t == c.t {
		for i, v := range [3]string{ev.Path, ev.ClientIP, ev.RequestID} {
			c.samples[i] = addSample(c.samples[i], v, 3)
		}
	}
	return earlier
}

// addSample keeps the max values of smallest hash in set.
func addSample(set []string, v string, max int) []string {
	if v == "" || slices.Contains(set, v) {
		return set
	}
	set = append(set, strings.Clone(v))
	slices.SortFunc(set, func(a, b string) int { return cmp.Compare(hash64(a), hash64(b)) })
	if len(set) > max {
		set = set[:max]
	}
	return set
}

func (d *newCountry) markDirty(slot int32) {
	k := &d.tab.ents[slot].s
	if !k.dirty {
		k.dirty = true
		d.dirty = append(d.dirty, d.tab.ref(slot))
	}
}

func (d *newCountry) advance(wm int64) {
	d.wm = wm
	d.wmSlot = floorDiv(wm, d.slotW)
	d.decideDue(wm)
	d.tab.expire(wm - d.history)
	d.inc.endQuiet(wm)
	d.next = wm + d.history/4
	if t := d.cands.earliest(); t != math.MaxInt64 {
		d.next = min(d.next, t+1)
	}
	for _, inc := range d.inc.open {
		d.next = min(d.next, inc.lastFire+d.inc.cooldown+1)
	}
}

// decideDue decides, in order of time and key, the candidates before wm.
func (d *newCountry) decideDue(wm int64) {
	due := slices.DeleteFunc(d.cands.takeBefore(wm), func(c *ncCand) bool {
		return !d.tab.valid(c.ref) // the key was evicted
	})
	slices.SortFunc(due, func(x, y *ncCand) int {
		return cmp.Or(cmp.Compare(x.t, y.t), strings.Compare(d.tab.keyOf(x.ref.slot), d.tab.keyOf(y.ref.slot)), cmp.Compare(x.code, y.code))
	})
	for _, c := range due {
		d.decide(c)
	}
}

// decide alerts on a candidate if its key was established and the country is new, and
// then adds the country to the key's baseline.
func (d *newCountry) decide(c *ncCand) {
	if !d.tab.valid(c.ref) {
		return // the key was evicted
	}
	ent := &d.tab.ents[c.ref.slot]
	name := d.tab.keyOf(c.ref.slot)
	k := &ent.s
	k.pending--
	p := &d.params[k.prm]
	known := k.country(c.code)
	// A key with no country at all has no baseline to differ from.
	isNew := k.nCC > 0 && (known == nil || known.last < c.t-d.history)
	before := d.before(k, c.t)
	established := c.t-k.first >= p.learning && before >= p.minEvents
	if isNew && established && p.enabled && !slices.Contains(d.allow[name], c.code) {
		d.fire(c, name, ent, before)
	}
	d.learn(k, c.code, c.t, c.last, c.events)
	d.markDirty(c.ref.slot)
}

func (d *newCountry) fire(c *ncCand, name string, ent *entry[ncKey], before uint64) {
	k := &ent.s
	p := &d.params[k.prm]
	country := unpackCountry(c.code)
	// The countries new in this incident, including this one.
	news := []CountrySeen{{Country: country, FirstSeen: formatTime(msTime(c.t))}}
	var prev Evidence
	if inc := d.inc.current(name, c.t); inc != nil {
		prev = inc.evidence
		for _, n := range inc.evidence.NewCountries {
			if n.Country != country {
				news = append(news, n)
			}
		}
	}
	slices.SortFunc(news, func(a, b CountrySeen) int {
		return cmp.Or(strings.Compare(a.FirstSeen, b.FirstSeen), strings.Compare(a.Country, b.Country))
	})
	// Known: the baseline within history, without what this incident taught it.
	var known []string
	for i := 0; i < int(k.nCC); i++ {
		cc := k.at(i)
		name := unpackCountry(cc.code)
		if cc.last >= c.t-d.history && !slices.ContainsFunc(news, func(n CountrySeen) bool { return n.Country == name }) {
			known = append(known, name)
		}
	}
	slices.Sort(known)
	sev := p.severity
	if escalated(news) {
		sev = sev.raise()
	}
	d.inc.fire(firing{
		key:      name,
		at:       c.t,
		first:    c.t,
		last:     c.t,
		strength: len(news),
		severity: sev,
		labels:   map[string]string{"key_type": "client_key"},
	}, func() (Evidence, string) {
		ev := Evidence{
			NewCountry:       news[0].Country,
			NewCountries:     news,
			KnownCountries:   known,
			KeyEvents:        before,
			KeyFirstSeen:     formatTime(msTime(k.first)),
			SamplePaths:      sortedUnique(append(slices.Clone(prev.SamplePaths), c.samples[0]...)),
			ClientIPs:        sortedUnique(append(slices.Clone(prev.ClientIPs), c.samples[1]...)),
			SampleRequestIDs: sortedUnique(append(slices.Clone(prev.SampleRequestIDs), c.samples[2]...)),
		}
		knownText := "none"
		if len(known) > 0 {
			knownText = strings.Join(known, ", ")
		}
		summary := fmt.Sprintf("Client key %s was used from %s, a country not seen for it within %s (known: %s).",
			name, country, d.cfg.History, knownText)
		if len(news) > 1 {
			names := make([]string, len(news))
			for i, n := range news {
				names[i] = n.Country
			}
			span := "within the incident"
			if escalated(news) {
				span = "within an hour"
			}
			summary = fmt.Sprintf("Client key %s was used from %d new countries %s: %s (known: %s).",
				name, len(news), span, strings.Join(names, ", "), knownText)
		}
		return ev, summary
	})
}

// escalated reports whether two of the new countries were first seen within an hour
// of each other; news is sorted by time.
func escalated(news []CountrySeen) bool {
	for i := 1; i < len(news); i++ {
		a, errA := time.Parse(ingest.TimeLayout, news[i-1].FirstSeen)
		b, errB := time.Parse(ingest.TimeLayout, news[i].FirstSeen)
		if errA == nil && errB == nil && b.Sub(a).Milliseconds() <= escalation {
			return true
		}
	}
	return false
}

func (d *newCountry) baseline(slot int32) KeyBaseline {
	k := &d.tab.ents[slot].s
	b := KeyBaseline{Key: d.tab.keyOf(slot), FirstSeen: msTime(k.first), Events: k.total()}
	for i := 0; i < int(k.nCC); i++ {
		c := k.at(i)
		b.Countries = append(b.Countries, CountryBaseline{
			Country:   unpackCountry(c.code),
			FirstSeen: msTime(c.first),
			LastSeen:  msTime(c.last),
			Events:    uint64(c.events),
		})
	}
	slices.SortFunc(b.Countries, func(x, y CountryBaseline) int { return strings.Compare(x.Country, y.Country) })
	return b
}

func (d *newCountry) flush() {
	d.decideDue(math.MaxInt64)
	d.inc.endAll()
	d.next = math.MinInt64
}

// load seeds keys from a snapshot, oldest first so that past max_keys the most recent
// survive.
func (d *newCountry) load(b *Baselines) {
	keys := b.Keys
	order := make([]keyByLast, 0, len(keys))
	for i := range keys {
		order = append(order, keyByLast{&keys[i], keys[i].lastSeen()})
	}
	slices.SortStableFunc(order, func(x, y keyByLast) int { return cmp.Compare(x.last, y.last) })
	for _, o := range order {
		if o.kb.Key == "" || d.tab.find(o.kb.Key) >= 0 {
			continue
		}
		d.adopt(o.kb, o.last)
	}
}

type keyByLast struct {
	kb   *KeyBaseline
	last int64
}

// lastSeen returns the latest time in kb, ms: its first-seen time or a country's
// last-seen time.
func (kb *KeyBaseline) lastSeen() int64 {
	last := kb.FirstSeen.UnixMilli()
	for _, c := range kb.Countries {
		last = max(last, c.LastSeen.UnixMilli())
	}
	return last
}

// adopt adds a key the table does not hold with the stored baseline kb, last seen at
// last (kb.lastSeen()).
func (d *newCountry) adopt(kb *KeyBaseline, last int64) {
	slot := d.tab.add(kb.Key, last)
	k := &d.tab.ents[slot].s
	k.first, k.asOf = kb.FirstSeen.UnixMilli(), last
	k.settled = kb.Events
	k.lo = math.MinInt64 / 2
	if i, ok := d.keyParams[kb.Key]; ok {
		k.prm = i
	}
	for _, c := range kb.Countries {
		if code := packCountry(c.Country); code != 0 && k.country(code) == nil {
			nc := k.add(code, c.FirstSeen.UnixMilli())
			nc.last = c.LastSeen.UnixMilli()
			nc.events = uint32(min(c.Events, math.MaxUint32))
		}
	}
}

// takeDirty adds to u the keys whose baseline changed since the last call.
func (d *newCountry) takeDirty(u *Baselines) {
	out := u.Keys
	for _, r := range d.dirty {
		if d.tab.valid(r) {
			out = append(out, d.baseline(r.slot))
			d.tab.ents[r.slot].s.dirty = false
		}
	}
	clear(d.dirty)
	d.dirty = d.dirty[:0]
	slices.SortFunc(out, func(x, y KeyBaseline) int { return strings.Compare(x.Key, y.Key) })
	u.Keys = out
}
