package detectors

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/gatewatch/gatewatch/ingest"
)

// PrivilegeAnomalyConfig configures privilege_anomaly: once the detector has seen
// LearningPeriod of traffic, a client key that made no successful privileged request
// within History before the window makes at least MinCount successful privileged
// requests within Window. Privileged says which requests are privileged.
type PrivilegeAnomalyConfig struct {
	Common         `yaml:",inline"`
	Window         time.Duration              `yaml:"window"`
	LearningPeriod time.Duration              `yaml:"learning_period"`
	History        time.Duration              `yaml:"history"`
	MinCount       int                        `yaml:"min_count"`
	Privileged     []PrivilegeRule            `yaml:"privileged"`
	Allowlist      []ClientAllow              `yaml:"allowlist"` // admin consoles, automation
	Overrides      []PrivilegeAnomalyOverride `yaml:"overrides"`
}

// A PrivilegeRule says which requests are privileged: those whose route template (or
// path, where the gateway logs a route name) has a path segment equal to Segment
// (without regard to case), or starts with RoutePrefix; exactly one is set. Methods, when set, narrows the rule to those
// methods: a role change is a PUT to .../roles, a read of the roles is not.
type PrivilegeRule struct {
	Segment     string   `yaml:"segment,omitempty"`
	RoutePrefix string   `yaml:"route_prefix,omitempty"`
	Methods     []string `yaml:"methods,omitempty"`
}

// PrivilegeAnomalyOverride is an Override with privilege_anomaly's threshold; a
// route_prefix override may only set enabled: false.
type PrivilegeAnomalyOverride struct {
	Override `yaml:",inline"`
	MinCount *int `yaml:"min_count,omitempty"`
}

// defaultPrivileged is what counts as privileged unless the config says otherwise:
// administrative and internal routes, impersonation, and changes of roles,
// permissions and grants, whether the API names them in the plural
// (/users/{id}/roles) or the singular (PUT /users/{id}/role).
func defaultPrivileged() []PrivilegeRule {
	changes := []string{"POST", "PUT", "PATCH", "DELETE"}
	rules := []PrivilegeRule{{Segment: "admin"}, {Segment: "internal"}, {Segment: "impersonate"}}
	for _, s := range []string{"roles", "role", "permissions", "permission", "privileges", "privilege", "grants", "grant"} {
		rules = append(rules, PrivilegeRule{Segment: s, Methods: changes})
	}
	return rules
}

func (c *PrivilegeAnomalyConfig) validate(add func(error)) {
	validateClientKeyed(add, PrivilegeAnomaly, &c.Common, c.Allowlist, c.Overrides, func(p string, o *PrivilegeAnomalyOverride) bool {
		if o.MinCount != nil {
			checkCount(add, p+".min_count", *o.MinCount)
		}
		return o.MinCount != nil
	})
	checkLearning(add, PrivilegeAnomaly+".learning_period", c.LearningPeriod)
	if c.History <= 0 {
		add(cfgErr(PrivilegeAnomaly+".history", "must be positive, got %s", c.History))
	}
	checkCount(add, PrivilegeAnomaly+".min_count", c.MinCount)
	if len(c.Privileged) == 0 {
		add(cfgErr(PrivilegeAnomaly+".privileged", "must list at least one rule"))
	}
	for i, r := range c.Privileged {
		p := fmt.Sprintf("%s.privileged[%d]", PrivilegeAnomaly, i)
		switch {
		case (r.Segment == "") == (r.RoutePrefix == ""):
			add(cfgErr(p, "must set exactly one of segment and route_prefix"))
		case strings.Contains(r.Segment, "/"):
			add(cfgErr(p+".segment", "must be one path segment, without /, got %q", r.Segment))
		case r.RoutePrefix != "" && !strings.HasPrefix(r.RoutePrefix, "/"):
			add(cfgErr(p+".route_prefix", "must start with /, got %q", r.RoutePrefix))
		}
		for j, m := range r.Methods {
			if m == "" || strings.ContainsAny(m, " /") {
				add(cfgErr(fmt.Sprintf("%s.methods[%d]", p, j), "must be an HTTP method, got %q", m))
			}
		}
	}
}

// privilegeAnomaly fires when, once the detector has seen learning_period of traffic, a
// client key whose history holds no successful privileged request (none within
// history before the window) makes at least min_count successful ones within window:
// a standard account doing admin work after a mass-assignment bug or a stolen session.
// Successful means 2xx, 3xx, or status 0 (the log carries none: the request went on).
// A key that does such work every day has it in its history and does not fire.
//
// Only keys that made privileged requests are tracked: their ring of privileged
// successes per bucket, and their history, the last privileged success before the
// ring (persisted as a PrivilegeBaseline). While an incident is open for a key, its
// further privileged work extends the incident instead of becoming history that would
// hide it.
type privilegeAnomaly struct {
	windowed[paKey]
	cnt     counters
	smp     samplers
	rules   clientRules[paParams]
	match   privilegeMatcher
	since   *traffic
	learn   int64
	history int64
	dirty   []slotRef
	scratch []byte
}

type paParams struct {
	enabled  bool
	minCount uint32
	severity Severity
}

type paKey struct {
	r      ring
	sums   [1]uint32
	smp    *sampler // while the ring holds privileged successes
	prm    uint16
	dirty  bool
	first  int64  // first privileged success, ms
	last   int64  // last privileged success before the ring, ms; noEvent: none
	events uint64 // privileged successes
	// before is last as it was when the key's latest incident opened: while the
	// incident goes on, it is the key's history.
	before int64
}

// noEvent marks a time that is not there.
const noEvent = math.MinInt64 / 2

// Evidence fields the sampler keeps, per privileged success.
const (
	paRoute = iota // "METHOD /route"
	paPath
	paRequestID
	paClientIP
	paFields
)

func newPrivilegeAnomaly(c PrivilegeAnomalyConfig, lateness time.Duration, since *traffic, inc *incidents) *privilegeAnomaly {
	lay := newRingLayout(c.Window, lateness, 10, false)
	d := &privilegeAnomaly{
		cnt:     newCounters(lay, 1, true, false, 0),
		smp:     newSamplers(lay, c.MaxKeys, paFields, 2, 1), // counts: no status logged
		match:   newPrivilegeMatcher(c.Privileged),
		since:   since,
		learn:   c.LearningPeriod.Milliseconds(),
		history: c.History.Milliseconds(),
	}
	d.init(PrivilegeAnomaly, lay, c.MaxKeys, d.history, inc, d)
	d.tab.onRemove = d.release
	d.samples = &d.smp.arena
	base := paParams{enabled: true, minCount: uint32(c.MinCount), severity: c.Severity}
	d.rules = newClientRules(base, paParams{}, c.Overrides, c.Allowlist, func(p *paParams, o *PrivilegeAnomalyOverride) {
		o.apply(&p.enabled, &p.severity)
		if o.MinCount != nil {
			p.minCount = uint32(*o.MinCount)
		}
	})
	return d
}

func (d *privilegeAnomaly) observe(ev *ingest.Event, h evHashes, t int64, late bool) {
	if ev.ClientKey == "" || !succeeded(ev.Status) || !d.privileged(ev, h) || d.rules.skip(ev) {
		return
	}
	slot := d.tab.find(ev.ClientKey)
	if slot < 0 {
		slot = d.tab.add(ev.ClientKey, t)
		k := &d.tab.ents[slot].s
		k.prm = d.rules.of(ev.ClientKey)
		k.first, k.last, k.before = t, noEvent, noEvent
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	k.first = min(k.first, t)
	if late {
		// It happened: it is history, though it enters no window.
		k.last = max(k.last, t)
		k.events++
		d.markDirty(slot)
		return
	}
	b, bs := d.buck.of(t)
	data := d.cnt.keyData(slot)
	d.fold(slot, d.keep())
	o, _ := d.cnt.place(data, &k.r, k.sums[:], b, bs, d.keep())
	d.settle(k)
	d.cnt.count(data, &k.r, k.sums[:], o, b, bs, t)
	k.events++
	d.markDirty(slot)
	p := &d.rules.params[k.prm]
	if !p.enabled {
		return
	}
	if k.smp == nil {
		k.smp = d.smp.get()
	}
	s := k.smp
	cs := d.smp.claim(s, b, bs)
	d.scratch = append(append(append(d.scratch[:0], ev.Method...), ' '), ev.Route...)
	d.smp.offer(s, b, cs, paRoute, unsafe.String(unsafe.SliceData(d.scratch), len(d.scratch))) // copied, not kept
	d.smp.offer(s, b, cs, paPath, ev.Path)
	d.smp.offer(s, b, cs, paRequestID, ev.RequestID)
	d.smp.offer(s, b, cs, paClientIP, ev.ClientIP)
	if ev.Status == 0 {
		d.smp.inc(s, cs, 0)
	}
	if k.sums[0] >= p.minCount {
		d.markHot(slot)
	}
}

// fold moves the buckets of slot before keep out of the ring into the key's history:
// its last privileged success.
func (d *privilegeAnomaly) fold(slot int32, keep int64) {
	k := &d.tab.ents[slot].s
	if !k.r.used || keep <= k.r.lo {
		return
	}
	data := d.cnt.keyData(slot)
	if _, last, ok := d.cnt.span(data, &k.r, k.r.lo, keep-1); ok && last > k.last {
		k.last = last
		d.markDirty(slot)
	}
	d.cnt.trim(data, &k.r, k.sums[:], keep)
}

func (d *privilegeAnomaly) settle(k *paKey) {
	if k.sums[0] == 0 && k.smp != nil {
		d.smp.put(k.smp)
		k.smp = nil
	}
}

func (d *privilegeAnomaly) markDirty(slot int32) {
	k := &d.tab.ents[slot].s
	if !k.dirty {
		k.dirty = true
		d.dirty = append(d.dirty, d.tab.ref(slot))
	}
}

func (d *privilegeAnomaly) bounds(slot int32) (int64, int64, bool) {
	r := &d.tab.ents[slot].s.r
	return r.lo, r.top, r.used
}

func (d *privilegeAnomaly) cool(slot int32, keep int64) bool {
	d.fold(slot, keep)
	k := &d.tab.ents[slot].s
	d.settle(k)
	return d.mayFire(slot)
}

func (d *privilegeAnomaly) mayFire(slot int32) bool {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	return p.enabled && k.sums[0] >= p.minCount
}

// expiry: a key whose last privileged success is older than history has no history
// left to judge by.
func (d *privilegeAnomaly) expiry(wm int64) int64 { return d.lay.oldestOpenMs(wm) - d.history }

func (d *privilegeAnomaly) judge(slot int32, end int64) {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	data := d.cnt.keyData(slot)
	n, w := d.lay.n, d.lay.width
	from := end - n + 1
	count := d.cnt.sum(data, &k.r, from, end, 0)
	start := from * w
	if count < p.minCount || !d.since.learnt(start, d.learn) {
		return
	}
	name := d.tab.keyOf(slot)
	last := k.last
	if d.inc.current(name, (end+1)*w) != nil {
		last = k.before // the incident goes on: its own work is no history
	} else if _, l, ok := d.cnt.span(data, &k.r, k.r.lo, from-1); ok {
		last = max(last, l)
	}
	if last != noEvent && last >= start-d.history {
		return
	}
	d.fire(slot, end, count, last)
}

func (d *privilegeAnomaly) fire(slot int32, end int64, count uint32, last int64) {
	name := d.tab.keyOf(slot)
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	from := end - d.lay.n + 1
	at := (end + 1) * d.lay.width
	first, lastSeen, _ := d.cnt.span(d.cnt.keyData(slot), &k.r, from, end)
	if d.inc.current(name, at) == nil {
		k.before = last
	}
	d.inc.fire(firing{
		key:      name,
		at:       at,
		first:    first,
		last:     lastSeen,
		strength: int(count),
		severity: p.severity,
		labels:   map[string]string{"key_type": "client_key"},
	}, func() (Evidence, string) {
		ev := d.windowEvidence(end)
		ev.PrivilegedCount, ev.MinCount = int(count), int(p.minCount)
		ev.History = time.Duration(d.history * int64(time.Millisecond)).String()
		if last != noEvent {
			ev.LastPrivileged = formatTime(msTime(last))
		}
		if s := k.smp; s != nil {
			w := d.smp.window(s, from, end)
			ev.PrivilegedRoutes = d.smp.collect(s, w, paRoute, 10)
			ev.SamplePaths = d.smp.collect(s, w, paPath, 5)
			ev.SampleRequestIDs = d.smp.collect(s, w, paRequestID, 5)
			ev.ClientIPs = d.smp.collect(s, w, paClientIP, 5)
			ev.UnloggedStatusCount = d.smp.countIn(s, w, 0)
		}
		// A request whose log has no response status (an AWS WAF ALLOW) went on to the
		// origin, which may still have refused it: the summary does not call it a
		// success.
		made := fmt.Sprintf("%d successful privileged requests", count)
		switch u := ev.UnloggedStatusCount; {
		case u >= int(count):
			made = fmt.Sprintf("%d privileged requests that went through to the origin (no response status logged)", count)
		case u > 0:
			made = fmt.Sprintf("%d privileged requests that succeeded or went through to the origin (%d with no response status logged)", count, u)
		}
		summary := fmt.Sprintf("Client key %s made %s within %s and none within %s before.", name, made, d.window, ev.History)
		return ev, summary
	})
}

func (d *privilegeAnomaly) release(slot int32, _ bool) {
	k := &d.tab.ents[slot].s
	if k.smp != nil {
		d.smp.put(k.smp)
	}
	clear(d.cnt.keyData(slot))
}

// flushed folds every key's ring into its history: keys stay, their history is the
// baseline.
func (d *privilegeAnomaly) flushed() {
	for slot := range d.tab.ents {
		if e := &d.tab.ents[slot]; e.live && e.s.r.used {
			d.fold(int32(slot), e.s.r.top+1)
			d.settle(&e.s)
		}
	}
}

// baseline is the key's history as no open window holds it. The successes in open
// windows are read again after a restart or a task's move (the commit waits for them)
// and judged there: stored as history, they would hide the very incident they make.
func (d *privilegeAnomaly) baseline(slot int32) PrivilegeBaseline {
	k := &d.tab.ents[slot].s
	last := k.last
	if _, l, ok := d.cnt.span(d.cnt.keyData(slot), &k.r, k.r.lo, d.open()-1); ok {
		last = max(last, l)
	}
	return PrivilegeBaseline{Key: d.tab.keyOf(slot), FirstSeen: msTime(k.first), LastSeen: msTime(last), Events: k.events}
}

func (d *privilegeAnomaly) load(b *Baselines) {
	d.adoptAll(b.Privileged, math.MinInt64, false)
}

// adoptAll adds the stored keys the table does not hold whose last privileged success
// is within history of wm (math.MinInt64: any), and returns how many, and whether it
// left some out for want of room. With room, the most recent go first while the table
// has room; without, all go in, oldest first, so that past max_keys the most recent
// survive.
func (d *privilegeAnomaly) adoptAll(list []PrivilegeBaseline, wm int64, room bool) (int, bool) {
	cutoff := int64(math.MinInt64)
	if wm != math.MinInt64 {
		cutoff = d.expiry(wm)
	}
	var fresh []*PrivilegeBaseline
	for i := range list {
		if pb := &list[i]; pb.Key != "" && pb.LastSeen.UnixMilli() >= cutoff && d.tab.find(pb.Key) < 0 {
			fresh = append(fresh, pb)
		}
	}
	slices.SortFunc(fresh, func(x, y *PrivilegeBaseline) int {
		return cmp.Or(x.LastSeen.Compare(y.LastSeen), strings.Compare(x.Key, y.Key))
	})
	if room {
		slices.Reverse(fresh)
	}
	n := 0
	for _, pb := range fresh {
		if room && d.tab.live >= d.tab.max {
			break
		}
		last := pb.LastSeen.UnixMilli()
		slot := d.tab.add(pb.Key, last)
		k := &d.tab.ents[slot].s
		k.prm = d.rules.of(pb.Key)
		k.first, k.last, k.before, k.events = pb.FirstSeen.UnixMilli(), last, noEvent, pb.Events
		n++
	}
	return n, n < len(fresh)
}

// merge adopts stored keys the detector does not track; a tracked key keeps its own
// history.
func (d *privilegeAnomaly) merge(b *Baselines, wm int64) (adopted, merged int, left bool) {
	n, left := d.adoptAll(b.Privileged, wm, true)
	return n, 0, left
}

// takeDirty adds to u the keys whose baseline changed since the last call. A key with
// successes still in open windows stays dirty: written again once they are history.
func (d *privilegeAnomaly) takeDirty(u *Baselines) {
	open := d.open()
	kept := d.dirty[:0]
	for _, r := range d.dirty {
		if !d.tab.valid(r) {
			continue
		}
		u.Privileged = append(u.Privileged, d.baseline(r.slot))
		k := &d.tab.ents[r.slot].s
		if _, _, ok := d.cnt.span(d.cnt.keyData(r.slot), &k.r, open, k.r.top); ok {
			kept = append(kept, r)
		} else {
			k.dirty = false
		}
	}
	clear(d.dirty[len(kept):])
	d.dirty = kept
	slices.SortFunc(u.Privileged, func(x, y PrivilegeBaseline) int { return strings.Compare(x.Key, y.Key) })
}

// privilegeMatcher decides whether a request is privileged, remembering the answer for
// recent routes: the rules are checked once per route, not once per event.
type privilegeMatcher struct {
	rules []PrivilegeRule
	memo  [256]struct {
		h uint64
		v uint8 // 0: not known, 1: no, 2: yes
	}
}

func newPrivilegeMatcher(rules []PrivilegeRule) privilegeMatcher {
	m := privilegeMatcher{rules: slices.Clone(rules)}
	for i := range m.rules {
		m.rules[i].Segment = strings.ToLower(m.rules[i].Segment)
	}
	return m
}

// privilegeRoute is what the privilege rules read: the route template, or the path
// when the gateway logs a route name instead (Kong's "post-v1-admin-users-roles" has no
// segments, and no rule would ever match it).
func privilegeRoute(ev *ingest.Event) string {
	if strings.HasPrefix(ev.Route, "/") {
		return ev.Route
	}
	return ev.Path
}

// privileged is match.privileged for an event, with the route hash the engine has.
func (d *privilegeAnomaly) privileged(ev *ingest.Event, h evHashes) bool {
	route := privilegeRoute(ev)
	if route == "" {
		return false
	}
	if route == ev.Route {
		return d.match.privileged(ev.Method, route, h.routeHashOf(ev))
	}
	return d.match.privileged(ev.Method, route, routeHash(ev.Method, route))
}

// privileged reports whether a request of method to route, whose routeHash is h, is
// privileged.
func (m *privilegeMatcher) privileged(method, route string, h uint64) bool {
	if route == "" {
		return false
	}
	c := &m.memo[h&255]
	if c.h == h && c.v != 0 {
		return c.v == 2
	}
	yes := m.check(method, route)
	c.h, c.v = h, 1
	if yes {
		c.v = 2
	}
	return yes
}

func (m *privilegeMatcher) check(method, route string) bool {
	for _, r := range m.rules {
		if len(r.Methods) > 0 && !slices.ContainsFunc(r.Methods, func(x string) bool { return strings.EqualFold(x, method) }) {
			continue
		}
		if r.RoutePrefix != "" {
			if strings.HasPrefix(route, r.RoutePrefix) {
				return true
			}
			continue
		}
		for seg := range strings.SplitSeq(route, "/") {
			if strings.EqualFold(seg, r.Segment) {
				return true
			}
		}
	}
	return false
}
