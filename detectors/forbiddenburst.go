package detectors

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// forbiddenBurst fires when, within window, at least threshold responses to one client
// (its client key, else its IP) have a status in statuses and they are at least
// min_ratio of that client's requests.
//
// Per key it keeps a ring of (forbidden, total) counts per bucket. A key whose ring
// holds at least threshold forbidden responses may fire and is hot: its windows are
// judged as the watermark closes them. Others cannot fire and cost nothing until their
// next event.
type forbiddenBurst struct {
	windowed[fbKey]
	cnt      counters
	smp      samplers
	statuses []int
	rules    clientRules[fbParams]
	sink     uint64 // what prefetch loaded, so that the loads are not optimised away
}

type fbParams struct {
	enabled   bool
	threshold uint32
	minRatio  float64
	severity  Severity
}

type fbKey struct {
	r    ring
	sums [1]uint32 // forbidden over the live buckets (the totals are summed when judged)
	smp  *sampler  // while the ring holds forbidden responses
	prm  uint16
	byIP bool // keyed by client IP: the request had no client key
}

// Evidence fields the sampler keeps, per forbidden response.
const (
	fbPath = iota
	fbRequestID
	fbClientIP
	fbFields
)

func newForbiddenBurst(c ForbiddenBurstConfig, lateness time.Duration, inc *incidents) *forbiddenBurst {
	lay := newRingLayout(c.Window, lateness, 12, false)
	d := &forbiddenBurst{
		cnt:      newCounters(lay, 2, true, false, 0),
		smp:      newSamplers(lay, c.MaxKeys, fbFields, 2, len(c.Statuses)),
		statuses: slices.Clone(c.Statuses),
	}
	// Keys live while a future window may still need their buckets.
	d.init(ForbiddenBurst, lay, c.MaxKeys, lay.size*lay.width, inc, d)
	d.tab.onRemove = d.release
	d.samples = &d.smp.arena
	base := fbParams{enabled: true, threshold: uint32(c.Threshold), minRatio: c.MinRatio, severity: c.Severity}
	d.rules = newClientRules(base, fbParams{}, c.Overrides, c.Allowlist, func(p *fbParams, o *ForbiddenBurstOverride) {
		o.apply(&p.enabled, &p.severity)
		if o.Threshold != nil {
			p.threshold = uint32(*o.Threshold)
		}
		setIf(&p.minRatio, o.MinRatio)
	})
	return d
}

// prefetchIndex and prefetchState load, for a run of events, the index cells, then the
// entries and the ring buckets they will touch: each pass has only independent loads,
// so their cache misses overlap.
func (d *forbiddenBurst) prefetchIndex(events []ingest.Event, hs *runHashes, out []uint64) {
	var sink uint64
	for i := range events {
		if events[i].ClientKey != "" {
			out[i] = hs.ck[i]
		} else {
			out[i] = hs.ip[i]
		}
		sink += d.tab.touchIndex(out[i])
	}
	d.sink = sink
}

func (d *forbiddenBurst) prefetchState(events []ingest.Event, hs []uint64) {
	var sink uint64
	for i := range events {
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += d.tab.warm(slot)
			sink += d.cnt.prefetch(slot, events[i].Time.UnixMilli(), &d.buck)
		}
	}
	d.sink = sink
}

func (d *forbiddenBurst) observe(ev *ingest.Event, h evHashes, t int64, late bool) {
	if late {
		return // no baseline to learn, and late events enter no window
	}
	key, byIP := ClientOf(ev, &d.addr)
	if key == "" || d.rules.skip(ev) {
		return
	}
	slot := d.tab.findHash(key, h.key)
	if slot < 0 {
		slot = d.tab.add(key, t)
		k := &d.tab.ents[slot].s
		k.byIP = byIP
		k.prm = d.rules.of(key)
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
	o, _ := d.cnt.place(data, &k.r, k.sums[:], b, bs, d.keep())
	d.settle(k)
	d.cnt.add(data, k.sums[:], o, 1)
	j := slices.Index(d.statuses, ev.Status)
	if j < 0 {
		return
	}
	d.cnt.count(data, &k.r, k.sums[:], o, b, bs, t)
	if k.smp == nil {
		k.smp = d.smp.get()
	}
	cs := d.smp.claim(k.smp, b, bs)
	d.smp.offer(k.smp, b, cs, fbPath, ev.Path)
	d.smp.offer(k.smp, b, cs, fbRequestID, ev.RequestID)
	if !byIP {
		d.smp.offer(k.smp, b, cs, fbClientIP, ev.ClientIP)
	}
	d.smp.addID(k.smp, cs, h.pathHash(ev))
	d.smp.inc(k.smp, cs, j)
	if k.sums[0] >= p.threshold {
		d.markHot(slot)
	}
}

// settle recycles the sampler of a key whose forbidden responses all left the ring.
func (d *forbiddenBurst) settle(k *fbKey) {
	if k.sums[0] == 0 && k.smp != nil {
		d.smp.put(k.smp)
		k.smp = nil
	}
}

func (d *forbiddenBurst) bounds(slot int32) (int64, int64, bool) {
	r := &d.tab.ents[slot].s.r
	return r.lo, r.top, r.used
}

func (d *forbiddenBurst) cool(slot int32, keep int64) bool {
	k := &d.tab.ents[slot].s
	d.cnt.trim(d.cnt.keyData(slot), &k.r, k.sums[:], keep)
	d.settle(k)
	return d.mayFire(slot)
}

func (d *forbiddenBurst) mayFire(slot int32) bool {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	return p.enabled && k.sums[0] >= p.threshold
}

func (d *forbiddenBurst) expiry(wm int64) int64 { return d.lay.oldestOpenMs(wm) }

func (d *forbiddenBurst) judge(slot int32, end int64) {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	data := d.cnt.keyData(slot)
	from := end - d.lay.n + 1
	f := d.cnt.sum(data, &k.r, from, end, 0)
	tot := d.cnt.sum(data, &k.r, from, end, 1)
	if f >= p.threshold && float64(f) >= p.minRatio*float64(tot) {
		d.fire(slot, end, f, tot)
	}
}

func (d *forbiddenBurst) fire(slot int32, end int64, f, tot uint32) {
	name := d.tab.keyOf(slot)
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	from := end - d.lay.n + 1
	first, last, _ := d.cnt.span(d.cnt.keyData(slot), &k.r, from, end)
	keyType := "client_key"
	if k.byIP {
		keyType = "client_ip"
	}
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * d.lay.width,
		first:    first,
		last:     last,
		strength: int(f),
		severity: p.severity,
		labels:   map[string]string{"key_type": keyType},
	}, func() (Evidence, string) {
		ev := d.windowEvidence(end)
		ev.Statuses = slices.Clone(d.statuses)
		ev.ForbiddenCount = int(f)
		ev.TotalCount = int(tot)
		ev.Ratio = math.Round(float64(f)/float64(tot)*1e4) / 1e4
		ev.MinRatio = p.minRatio
		ev.Threshold = int(p.threshold)
		if s := k.smp; s != nil {
			w := d.smp.window(s, from, end)
			for j, st := range d.statuses {
				if cnt := d.smp.countIn(s, w, j); cnt > 0 {
					ev.StatusCounts = append(ev.StatusCounts, StatusCount{Status: st, Count: cnt})
				}
			}
			ev.DistinctPaths = min(d.smp.distinct(s, w), int(f)) // an estimate may overshoot
			ev.SamplePaths = d.smp.collect(s, w, fbPath, 5)
			ev.SampleRequestIDs = d.smp.collect(s, w, fbRequestID, 5)
			ev.ClientIPs = d.smp.collect(s, w, fbClientIP, 5)
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
	if k.smp != nil {
		d.smp.put(k.smp)
	}
	clear(d.cnt.keyData(slot))
}
