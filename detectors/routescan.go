package detectors

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// RouteScanConfig configures route_scan: within Window, one client (its IP, else its
// client key) gets at least MinRoutes distinct route templates answered with a status
// in Statuses or blocked with a WAF action in Actions, and those responses are at least
// MinRatio of its requests.
type RouteScanConfig struct {
	Common    `yaml:",inline"`
	Window    time.Duration       `yaml:"window"`
	Statuses  []int               `yaml:"statuses"`
	Actions   []string            `yaml:"actions"` // WAF actions as logged, compared without case
	MinRoutes int                 `yaml:"min_routes"`
	MinRatio  float64             `yaml:"min_ratio"`
	Allowlist []ClientAllow       `yaml:"allowlist"` // your own scanners
	Overrides []RouteScanOverride `yaml:"overrides"`
}

// RouteScanOverride is an Override with route_scan's thresholds; a route_prefix
// override may only set enabled: false.
type RouteScanOverride struct {
	Override  `yaml:",inline"`
	MinRoutes *int     `yaml:"min_routes,omitempty"`
	MinRatio  *float64 `yaml:"min_ratio,omitempty"`
}

func (c *RouteScanConfig) validate(add func(error)) {
	validateClientKeyed(add, RouteScan, &c.Common, c.Allowlist, c.Overrides, func(p string, o *RouteScanOverride) bool {
		if o.MinRoutes != nil {
			checkCount(add, p+".min_routes", *o.MinRoutes)
		}
		if o.MinRatio != nil {
			checkShare(add, p+".min_ratio", *o.MinRatio)
		}
		return o.MinRoutes != nil || o.MinRatio != nil
	})
	checkStatuses(add, RouteScan+".statuses", c.Statuses)
	for i, a := range c.Actions {
		if a == "" {
			add(cfgErr(fmt.Sprintf("%s.actions[%d]", RouteScan, i), "must not be empty"))
		}
	}
	checkCount(add, RouteScan+".min_routes", c.MinRoutes)
	checkShare(add, RouteScan+".min_ratio", c.MinRatio)
}

// routeScan fires when, within window, one client (its IP, else its client key) gets at
// least min_routes distinct route templates answered 404 or 405 (statuses) or blocked by
// the WAF (actions), and those responses are at least min_ratio of its requests:
// reconnaissance. A deploy that makes one route 404 for everyone, or an app calling one
// missing endpoint all day, is one route per client and never fires; nor does a walk
// over object ids on one route template (its paths differ, its template does not: that
// is object_enumeration's).
//
// Per client it keeps a ring of (scan, total) counts per bucket; a client whose ring
// holds at least min_routes scan responses may fire and is hot. A sampler counts the
// distinct route templates of its scan responses and keeps samples of them.
type routeScan struct {
	windowed[rsKey]
	cnt      counters
	smp      samplers
	statuses []int
	actions  []string
	rules    clientRules[rsParams]
	sink     uint64 // what prefetch loaded, so that the loads are not optimised away
}

type rsParams struct {
	enabled   bool
	minRoutes uint32
	minRatio  float64
	severity  Severity
}

type rsKey struct {
	r     ring
	sums  [1]uint32 // scan responses over the live buckets (all requests are summed when judged)
	smp   *sampler  // while the ring holds scan responses
	prm   uint16
	byKey bool // keyed by client key: the request had no client IP
}

// Evidence fields the sampler keeps, per scan response.
const (
	rsPath = iota
	rsRequestID
	rsClient // the client key, or the IP of a key-keyed client
	rsUserAgent
	rsAddress // the addresses of a client keyed by its IPv6 /64
	rsFields
)

func newRouteScan(c RouteScanConfig, lateness time.Duration, inc *incidents) *routeScan {
	lay := newRingLayout(c.Window, lateness, 10, false)
	d := &routeScan{
		cnt:      newCounters(lay, 2, true, false, 0),
		smp:      newSamplers(lay, c.MaxKeys, rsFields, 4, len(c.Statuses)+1), // the statuses, then blocked
		statuses: slices.Clone(c.Statuses),
		actions:  slices.Clone(c.Actions),
	}
	d.init(RouteScan, lay, c.MaxKeys, lay.size*lay.width, inc, d)
	d.tab.onRemove = d.release
	d.samples = &d.smp.arena
	base := rsParams{enabled: true, minRoutes: uint32(c.MinRoutes), minRatio: c.MinRatio, severity: c.Severity}
	d.rules = newClientRules(base, rsParams{}, c.Overrides, c.Allowlist, func(p *rsParams, o *RouteScanOverride) {
		o.apply(&p.enabled, &p.severity)
		if o.MinRoutes != nil {
			p.minRoutes = uint32(*o.MinRoutes)
		}
		setIf(&p.minRatio, o.MinRatio)
	})
	return d
}

func (d *routeScan) prefetchIndex(events []ingest.Event, hs *runHashes, out []uint64) {
	var sink uint64
	for i := range events {
		if events[i].ClientIP != "" {
			out[i] = hs.ip[i]
		} else {
			out[i] = keyHash(events[i].ClientKey)
		}
		sink += d.tab.touchIndex(out[i])
	}
	d.sink = sink
}

func (d *routeScan) prefetchState(events []ingest.Event, hs []uint64) {
	var sink uint64
	for i := range events {
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += d.tab.warm(slot)
			sink += d.cnt.prefetch(slot, events[i].Time.UnixMilli(), &d.buck)
		}
	}
	d.sink = sink
}

// scanned returns the counter a response counts in, the index of its status or
// len(statuses) when the WAF blocked it; -1 when it is no scan response.
func (d *routeScan) scanned(ev *ingest.Event) int {
	if j := slices.Index(d.statuses, ev.Status); j >= 0 {
		return j
	}
	if ev.Action != "" {
		for _, a := range d.actions {
			if strings.EqualFold(a, ev.Action) {
				return len(d.statuses)
			}
		}
	}
	return -1
}

func (d *routeScan) observe(ev *ingest.Event, h evHashes, t int64, late bool) {
	if late {
		return
	}
	key, byKey := HostOf(ev, &d.addr)
	if key == "" || d.rules.skip(ev) {
		return
	}
	slot := d.tab.findHash(key, h.key)
	if slot < 0 {
		slot = d.tab.add(key, t)
		k := &d.tab.ents[slot].s
		k.byKey = byKey
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
	j := d.scanned(ev)
	if j < 0 {
		return
	}
	d.cnt.count(data, &k.r, k.sums[:], o, b, bs, t)
	if k.smp == nil {
		k.smp = d.smp.get()
	}
	s := k.smp
	cs := d.smp.claim(s, b, bs)
	d.smp.offer(s, b, cs, rsPath, ev.Path)
	d.smp.offer(s, b, cs, rsRequestID, ev.RequestID)
	if byKey {
		d.smp.offer(s, b, cs, rsClient, ev.ClientIP)
	} else {
		d.smp.offer(s, b, cs, rsClient, ev.ClientKey)
	}
	d.smp.offer(s, b, cs, rsUserAgent, ev.UserAgent)
	if !byKey && key != ev.ClientIP {
		d.smp.offer(s, b, cs, rsAddress, ev.ClientIP)
	}
	route := ev.Route
	if route == "" {
		route = ev.Path
	}
	d.smp.addID(s, cs, hash64(route))
	d.smp.inc(s, cs, j)
	if k.sums[0] >= p.minRoutes {
		d.markHot(slot)
	}
}

func (d *routeScan) settle(k *rsKey) {
	if k.sums[0] == 0 && k.smp != nil {
		d.smp.put(k.smp)
		k.smp = nil
	}
}

func (d *routeScan) bounds(slot int32) (int64, int64, bool) {
	r := &d.tab.ents[slot].s.r
	return r.lo, r.top, r.used
}

func (d *routeScan) cool(slot int32, keep int64) bool {
	k := &d.tab.ents[slot].s
	d.cnt.trim(d.cnt.keyData(slot), &k.r, k.sums[:], keep)
	d.settle(k)
	return d.mayFire(slot)
}

func (d *routeScan) mayFire(slot int32) bool {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	return p.enabled && k.sums[0] >= p.minRoutes
}

func (d *routeScan) expiry(wm int64) int64 { return d.lay.oldestOpenMs(wm) }

func (d *routeScan) judge(slot int32, end int64) {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	data := d.cnt.keyData(slot)
	from := end - d.lay.n + 1
	hits := d.cnt.sum(data, &k.r, from, end, 0)
	tot := d.cnt.sum(data, &k.r, from, end, 1)
	if hits < p.minRoutes || float64(hits) < p.minRatio*float64(tot) || k.smp == nil {
		return
	}
	w := d.smp.window(k.smp, from, end)
	// The distinct count is an estimate past exactLimit, which may overshoot the hits.
	if routes := min(d.smp.distinct(k.smp, w), int(hits)); routes >= int(p.minRoutes) {
		d.fire(slot, end, hits, tot, routes, w)
	}
}

func (d *routeScan) fire(slot int32, end int64, hits, tot uint32, routes int, w uint64) {
	name := d.tab.keyOf(slot)
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	first, last, _ := d.cnt.span(d.cnt.keyData(slot), &k.r, end-d.lay.n+1, end)
	keyType := "client_ip"
	if k.byKey {
		keyType = "client_key"
	}
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * d.lay.width,
		first:    first,
		last:     last,
		strength: routes,
		severity: p.severity,
		labels:   map[string]string{"key_type": keyType},
	}, func() (Evidence, string) {
		s := k.smp
		ev := d.windowEvidence(end)
		ev.Statuses = slices.Clone(d.statuses)
		ev.Actions = slices.Clone(d.actions)
		for j, st := range d.statuses {
			if c := d.smp.countIn(s, w, j); c > 0 {
				ev.StatusCounts = append(ev.StatusCounts, StatusCount{Status: st, Count: c})
			}
		}
		ev.BlockedCount = d.smp.countIn(s, w, len(d.statuses))
		ev.FailureCount, ev.TotalCount = int(hits), int(tot)
		ev.Ratio = math.Round(float64(hits)/float64(tot)*1e4) / 1e4
		ev.MinRatio = p.minRatio
		ev.DistinctRoutes, ev.MinRoutes = routes, int(p.minRoutes)
		ev.SamplePaths = d.smp.collect(s, w, rsPath, 10)
		ev.SampleRequestIDs = d.smp.collect(s, w, rsRequestID, 5)
		ev.UserAgents = d.smp.collect(s, w, rsUserAgent, 5)
		who := "Client IP " + name
		if k.byKey {
			who = "Client key " + name
			ev.ClientIPs = d.smp.collect(s, w, rsClient, 5)
		} else {
			ev.ClientKeys = d.smp.collect(s, w, rsClient, 5)
			ev.ClientIPs = d.smp.collect(s, w, rsAddress, 5)
		}
		summary := fmt.Sprintf("%s requested %d distinct routes that do not exist or were blocked (%d of its %d requests) within %s.",
			who, routes, hits, tot, d.window)
		return ev, summary
	})
}

func (d *routeScan) release(slot int32, _ bool) {
	k := &d.tab.ents[slot].s
	if k.smp != nil {
		d.smp.put(k.smp)
	}
	clear(d.cnt.keyData(slot))
}
