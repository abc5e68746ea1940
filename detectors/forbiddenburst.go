package detectors

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/gatewatch/gatewatch/ingest"
)

// forbiddenBurst fires when, within window, at least threshold responses to one client
// (its client key, else its IP) have a status in statuses and they are at least
// min_ratio of that client's requests.
//
// Per key it keeps a ring of (forbidden, total) counts per bucket. A key whose ring
// holds at least threshold forbidden responses may fire and is "hot": its windows are
// evaluated as the watermark closes them. Others cannot fire and cost nothing until
// their next event.
type forbiddenBurst struct {
	lay      ringLayout
	tab      *keyTable[fbKey]
	cnt      counters
	buck     bucketer
	statuses []int

	params    []fbParams        // [0]: the detector's settings, [1]: disabled; then one per key override
	keyParams map[string]uint16 // key override → params index
	skipRoute []string          // route prefixes whose requests are ignored
	allowKey  map[string]bool
	allowNet  []netip.Prefix

	hot    []hotKey
	cols   collectors
	inc    *incidents
	sink   uint64 // what prefetch loaded, so that the loads are not optimised away
	wm     int64  // watermark of the latest advance
	next   int64  // due
	window string
}

type fbParams struct {
	enabled   bool
	threshold uint32
	minRatio  float64
	severity  Severity
}

type fbKey struct {
	r    ring
	sums [2]uint32 // forbidden, total over the live buckets
	col  *collector
	prm  uint16
	hot  bool
	byIP bool // keyed by client IP: the request had no client key
}

// Evidence fields the collector samples, per forbidden response.
const (
	fbPath = iota
	fbRequestID
	fbClientIP
	fbFields
)

func newForbiddenBurst(c ForbiddenBurstConfig, lateness time.Duration, inc *incidents) *forbiddenBurst {
	lay := newRingLayout(c.Window, lateness, 12)
	d := &forbiddenBurst{
		lay:       lay,
		cnt:       counters{lay: lay, k: 2},
		buck:      newBucketer(lay.width, lay.size),
		statuses:  slices.Clone(c.Statuses),
		keyParams: map[string]uint16{},
		allowKey:  map[string]bool{},
		inc:       inc,
		wm:        math.MinInt64 / 2,
		next:      math.MinInt64,
		window:    lay.window().String(),
	}
	// Keys live while a future window may still need their buckets; the wheel files
	// them by quarters of that.
	d.tab = newKeyTable[fbKey](c.MaxKeys, (lay.size*lay.width)/4)
	d.tab.onRemove = d.release
	d.cols = collectors{lay: lay, fields: fbFields, k: 2, nCounts: len(c.Statuses)}
	base := fbParams{enabled: true, threshold: uint32(c.Threshold), minRatio: c.MinRatio, severity: c.Severity}
	d.params = append(d.params, base, fbParams{}) // [1]: allowlisted, disabled
	for _, o := range c.Overrides {
		if o.RoutePrefix != "" {
			d.skipRoute = append(d.skipRoute, o.RoutePrefix)
			continue
		}
		if _, dup := d.keyParams[o.Key]; dup {
			continue // the first override of a key wins
		}
		p := base
		o.apply(&p.enabled, &p.severity)
		if o.Threshold != nil {
			p.threshold = uint32(*o.Threshold)
		}
		setIf(&p.minRatio, o.MinRatio)
		d.keyParams[o.Key] = uint16(len(d.params))
		d.params = append(d.params, p)
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

func (d *forbiddenBurst) name() string { return ForbiddenBurst }
func (d *forbiddenBurst) due() *int64  { return &d.next }

func (d *forbiddenBurst) stats() (int, uint64, uint64) {
	return d.tab.live, d.tab.evictions, d.tab.expired
}

func (d *forbiddenBurst) horizon(wm int64) int64 {
	return d.lay.oldestOpenMs(wm)
}

// clientOf returns the key of an event's client: its client key, else its IP.
func clientOf(ev *ingest.Event) (key string, byIP bool) {
	if ev.ClientKey != "" {
		return ev.ClientKey, false
	}
	return ev.ClientIP, true
}

// prefetchIndex and prefetchState load, for a run of events, the index cells, then the
// entries and the ring buckets they will touch: each pass has only independent loads,
// so their cache misses overlap.
func (d *forbiddenBurst) prefetchIndex(events []ingest.Event, ck, hs []uint64) {
	var sink uint64
	for i := range events {
		if events[i].ClientKey != "" {
			hs[i] = ck[i]
		} else {
			hs[i] = keyHash(events[i].ClientIP)
		}
		sink += d.tab.touchIndex(hs[i])
	}
	d.sink = sink
}

func (d *forbiddenBurst) prefetchState(events []ingest.Event, hs []uint64) {
	var sink uint64
	for i := range events {
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += d.tab.warm(slot)
			// The whole ring: placing a bucket clears those that left the window.
			stride := d.cnt.lay.size * d.cnt.k
			if o := int64(slot) * stride; o+stride <= int64(len(d.cnt.data)) {
				sink += prefetchLines(unsafe.Pointer(&d.cnt.data[o]), uintptr(stride)*2)
			}
		}
	}
	d.sink = sink
}

func (d *forbiddenBurst) observe(ev *ingest.Event, h uint64, t int64, late bool) {
	if late {
		return // no baseline to learn, and late events enter no window
	}
	key, byIP := clientOf(ev)
	if key == "" || d.skip(ev) {
		return
	}
	slot := d.tab.findHash(key, h)
	if slot < 0 {
		slot = d.tab.add(key, t)
		k := &d.tab.ents[slot].s
		k.byIP = byIP
		if i, ok := d.keyParams[key]; ok {
			k.prm = i
		}
		if d.allowKey[key] {
			k.prm = 1
		}
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	if !p.enabled {
		return
	}
	forbidden := slices.Contains(d.statuses, ev.Status)
	b, bs := d.buck.of(t)
	data := d.cnt.keyData(slot)
	o := d.cnt.place(data, &k.r, k.sums[:], b, bs, d.keep())
	if k.sums[0] == 0 && k.col != nil {
		d.cols.put(k.col) // its forbidden responses all left the ring
		k.col = nil
	}
	if inc16(&data[o+1]) {
		k.sums[1]++
	}
	if !forbidden {
		return
	}
	if inc16(&data[o]) {
		k.sums[0]++
	}
	if k.col == nil {
		k.col = d.cols.get()
	}
	cs := k.col.claim(b)
	k.col.sample(cs, fbPath, ev.Path)
	k.col.sample(cs, fbRequestID, ev.RequestID)
	if !byIP {
		k.col.sample(cs, fbClientIP, ev.ClientIP)
	}
	k.col.addDistinct(cs, hash64(ev.Path))
	k.col.inc(cs, slices.Index(d.statuses, ev.Status))
	if !k.hot && k.sums[0] >= p.threshold {
		k.hot = true
		// Windows that closed before this event could not fire: the ring held too
		// little for them.
		d.hot = append(d.hot, hotKey{d.tab.ref(slot), d.closed()})
	}
}

// skip reports whether the request is excluded by a route override or the allowlist.
func (d *forbiddenBurst) skip(ev *ingest.Event) bool {
	for _, p := range d.skipRoute {
		if strings.HasPrefix(ev.Route, p) {
			return true
		}
	}
	return inNets(d.allowNet, ev.ClientIP)
}

// closed is the last bucket the latest advance closed.
func (d *forbiddenBurst) closed() int64 { return d.lay.closedThrough(d.wm) }

// keep is the oldest bucket a window that is not yet closed can contain.
func (d *forbiddenBurst) keep() int64 { return d.lay.oldestOpen(d.wm) }

func (d *forbiddenBurst) advance(wm int64) {
	d.wm = wm
	closed := d.lay.closedThrough(wm)
	d.evalHot(closed)
	d.tab.expire(d.lay.oldestOpenMs(wm))
	d.inc.endQuiet(wm)
	d.next = (closed + 2) * d.lay.width
}

// evalHot evaluates the windows of hot keys that end at buckets up to closed.
func (d *forbiddenBurst) evalHot(closed int64) {
	keep := d.hot[:0]
	for _, h := range d.hot {
		r := h.ref
		if !d.tab.valid(r) {
			continue
		}
		k := &d.tab.ents[r.slot].s
		d.eval(r.slot, &h.evalTo, closed)
		data := d.cnt.keyData(r.slot)
		d.cnt.trim(data, &k.r, k.sums[:], d.keep())
		if k.sums[0] == 0 && k.col != nil {
			d.cols.put(k.col)
			k.col = nil
		}
		if k.sums[0] < d.params[k.prm].threshold {
			k.hot = false
			continue
		}
		keep = append(keep, h)
	}
	clear(d.hot[len(keep):])
	d.hot = keep
}

// eval evaluates slot's windows ending at buckets *evalTo+1..upTo.
func (d *forbiddenBurst) eval(slot int32, evalTo *int64, upTo int64) {
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	n := d.lay.n
	from := max(*evalTo+1, k.r.lo)
	to := min(upTo, k.r.top+n-1)
	*evalTo = max(*evalTo, upTo)
	if !k.r.used || from > to {
		return
	}
	data := d.cnt.keyData(slot)
	var f, tot uint32
	for b := from - n + 1; b <= from; b++ {
		f += d.cnt.at(data, &k.r, b, 0)
		tot += d.cnt.at(data, &k.r, b, 1)
	}
	for e := from; e <= to; e++ {
		if e > from {
			f += d.cnt.at(data, &k.r, e, 0) - d.cnt.at(data, &k.r, e-n, 0)
			tot += d.cnt.at(data, &k.r, e, 1) - d.cnt.at(data, &k.r, e-n, 1)
		}
		if f >= p.threshold && float64(f) >= p.minRatio*float64(tot) {
			d.fire(slot, e, f, tot)
		}
	}
}

func (d *forbiddenBurst) fire(slot int32, end int64, f, tot uint32) {
	ent := &d.tab.ents[slot]
	name := d.tab.keyOf(slot)
	k := &ent.s
	p := &d.params[k.prm]
	n := d.lay.n
	data := d.cnt.keyData(slot)
	first, last := end, end-n+1
	for b := end - n + 1; b <= end; b++ {
		if d.cnt.at(data, &k.r, b, 0) > 0 {
			first, last = min(first, b), max(last, b)
		}
	}
	keyType := "client_key"
	if k.byIP {
		keyType = "client_ip"
	}
	w := d.lay.width
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * w,
		first:    first * w,
		last:     (last + 1) * w,
		strength: int(f),
		severity: p.severity,
		labels:   map[string]string{"key_type": keyType},
	}, func() (Evidence, string) {
		ev := Evidence{
			Window:         d.window,
			WindowStart:    formatTime(msTime((end - n + 1) * w)),
			WindowEnd:      formatTime(msTime((end + 1) * w)),
			Statuses:       slices.Clone(d.statuses),
			ForbiddenCount: int(f),
			TotalCount:     int(tot),
			Ratio:          math.Round(float64(f)/float64(tot)*1e4) / 1e4,
			MinRatio:       p.minRatio,
			Threshold:      int(p.threshold),
		}
		if c := k.col; c != nil {
			for j, s := range d.statuses {
				if cnt := c.countIn(j, end-n+1, end); cnt > 0 {
					ev.StatusCounts = append(ev.StatusCounts, StatusCount{Status: s, Count: cnt})
				}
			}
			ev.DistinctPaths = c.distinctIn(end-n+1, end)
			ev.SamplePaths = c.collect(fbPath, end-n+1, end, 5)
			ev.SampleRequestIDs = c.collect(fbRequestID, end-n+1, end, 5)
			ev.ClientIPs = c.collect(fbClientIP, end-n+1, end, 5)
		}
		who := "Client key " + name
		if k.byIP {
			who = "Client IP " + name
		}
		summary := fmt.Sprintf("%s received %d responses with status %s out of %d requests (%.0f%%) within %s.",
			who, f, statusList(d.statuses), tot, 100*float64(f)/float64(tot), d.window)
		return ev, summary
	})
}

func statusList(s []int) string {
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = strconv.Itoa(v)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " or " + parts[len(parts)-1]
}

// release frees what a key holds outside the slab when it leaves the table.
func (d *forbiddenBurst) release(slot int32, _ bool) {
	k := &d.tab.ents[slot].s
	if k.col != nil {
		d.cols.put(k.col)
	}
	clear(d.cnt.keyData(slot))
}

func (d *forbiddenBurst) flush() {
	for _, h := range d.hot {
		if d.tab.valid(h.ref) {
			k := &d.tab.ents[h.ref.slot].s
			d.eval(h.ref.slot, &h.evalTo, k.r.top+d.lay.n-1)
		}
	}
	clear(d.hot)
	d.hot = d.hot[:0]
	d.tab.reset()
	d.inc.endAll()
	d.wm, d.next = math.MinInt64/2, math.MinInt64
}
