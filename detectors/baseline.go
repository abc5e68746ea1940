package detectors

import (
	"cmp"
	"context"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// A BaselineStore keeps what normal looks like between runs, and between the instances
// of one consumer group. The engine loads it before the first event, again each time
// the watermark advances by baseline_refresh (merging it in: see
// Engine.RefreshBaselines), and writes what it learned before it acknowledges the
// events it learned it from. store.Local and store.ClickHouse implement it; MemoryBaselines is
// the in-memory default.
type BaselineStore interface {
	// LoadBaselines returns the stored baselines, at most lim's number of each kind:
	// the most recently seen (see BaselineLimits), sorted by key. A store of millions
	// of keys loads no more than the detectors can hold; the others come back on demand
	// (see BaselineLookup).
	LoadBaselines(ctx context.Context, lim BaselineLimits) (Baselines, error)
	// UpdateBaselines upserts the keys and routes in u and returns once they are
	// durable. Each entry is the whole current baseline of its key or route, not a
	// delta, so writing one twice is harmless. After a restart, events re-read from
	// the last committed offset may already be in the loaded baselines: their event
	// counts are added again (a few minutes' worth, against min_events and weeks of
	// rates), their first and last seen times are not.
	UpdateBaselines(ctx context.Context, u Baselines) error
}

// A BaselineChanges is a BaselineStore that can load only what was written since an
// earlier load, so that a baseline refresh reads what changed rather than the whole
// store (see Engine.RefreshBaselines). MemoryBaselines and store.ClickHouse implement
// it; a store that does not is loaded whole each time.
type BaselineChanges interface {
	// LoadBaselinesSince is LoadBaselines (up to lim of each kind, the most recent,
	// sorted; TrafficSince as ever) restricted to the baselines written since the
	// load that returned since, and it returns the since of the next call. since 0
	// loads every baseline, as LoadBaselines does; a next of 0 says the store cannot
	// tell, and the next call loads every baseline again. The restriction may return
	// more (a baseline written before since, every stored one), never less: a
	// baseline left out is one the caller already loaded, or learned otherwise, in
	// its current state.
	LoadBaselinesSince(ctx context.Context, lim BaselineLimits, since uint64) (b Baselines, next uint64, err error)
}

// BaselineLimits caps how many baselines of each kind a load returns. A load keeps the
// most recent of each kind, by the latest time each holds (a key's newest country, or
// its first seen; a route's or client's as-of or peak; an object's peak; a privileged
// key's last seen), ties going to the smaller key: the ones the detectors would keep
// past their max_keys.
type BaselineLimits struct {
	Keys, Routes, Clients, Objects, Privileged int
}

// AllBaselines loads every stored baseline: for forensics and tests, never for an
// engine.
var AllBaselines = BaselineLimits{math.MaxInt, math.MaxInt, math.MaxInt, math.MaxInt, math.MaxInt}

// LimitsOf returns what an engine of cfg loads: each kind up to the max_keys of the
// detector that learns it, none for a detector that is off.
func LimitsOf(cfg Config) BaselineLimits {
	of := func(c Common) int {
		if !c.Enabled {
			return 0
		}
		return c.MaxKeys
	}
	return BaselineLimits{
		Keys:       of(cfg.NewCountry.Common),
		Routes:     of(cfg.QuietEndpointSpike.Common),
		Clients:    of(cfg.ClientVolumeSpike.Common),
		Objects:    of(cfg.ObjectEnumeration.Common),
		Privileged: of(cfg.PrivilegeAnomaly.Common),
	}
}

// MemoryLimits returns what a MemoryBaselines for an engine of cfg keeps: twice what
// the engine loads, so that a key its detectors evicted is still there, for a while,
// when it comes back (see Engine.FetchBaselines), at about the memory per key of the
// smallest detector's state.
func MemoryLimits(cfg Config) BaselineLimits { return LimitsOf(cfg).Times(2) }

// Times returns l with every limit multiplied by n, saturating.
func (l BaselineLimits) Times(n int) BaselineLimits {
	mul := func(x int) int {
		if x > math.MaxInt/n {
			return math.MaxInt
		}
		return x * n
	}
	return BaselineLimits{mul(l.Keys), mul(l.Routes), mul(l.Clients), mul(l.Objects), mul(l.Privileged)}
}

// Baselines is a snapshot of what the detectors learned, or the part of it that
// changed. Every list is sorted by its key.
type Baselines struct {
	// TrafficSince is when the detectors first saw traffic; the learning periods of
	// quiet_endpoint_spike, object_enumeration and privilege_anomaly count from here.
	// Zero: not yet.
	TrafficSince time.Time
	Keys         []KeyBaseline       // new_country, per client key
	Routes       []RouteBaseline     // quiet_endpoint_spike, per method and route
	Clients      []ClientBaseline    // client_volume_spike, per client key
	Objects      []ObjectBaseline    // object_enumeration, per client and route
	Privileged   []PrivilegeBaseline // privilege_anomaly, per client key
}

func (b *Baselines) empty() bool {
	return b.TrafficSince.IsZero() && len(b.Keys) == 0 && len(b.Routes) == 0 && len(b.Clients) == 0 &&
		len(b.Objects) == 0 && len(b.Privileged) == 0
}

// KeyBaseline is what new_country knows about one client key.
type KeyBaseline struct {
	Key       string
	FirstSeen time.Time
	Events    uint64
	Countries []CountryBaseline // sorted by Country
}

// CountryBaseline is one country a key was seen from.
type CountryBaseline struct {
	Country   string
	FirstSeen time.Time
	LastSeen  time.Time
	Events    uint64
}

// RouteBaseline is what quiet_endpoint_spike knows about one route ("GET
// /v1/users/{id}"): its request rate, an exponentially weighted average of requests a
// minute with a time constant of the detector's learning_period, as of AsOf, and its
// peak, the largest count it had in a window, as of PeakAt (it decays with
// peak_memory). The rate is the raw average; the detector corrects it for the start of
// traffic (TrafficSince) when it reads it.
type RouteBaseline struct {
	Route         string
	RatePerMinute float64
	AsOf          time.Time
	Peak          float64
	PeakAt        time.Time
}

// ClientBaseline is what client_volume_spike knows about one client key: when it was
// first seen, its request rate (as a RouteBaseline's) and its peak window count.
type ClientBaseline struct {
	Key           string
	FirstSeen     time.Time
	RatePerMinute float64
	AsOf          time.Time
	Peak          float64
	PeakAt        time.Time
}

// ObjectBaseline is what object_enumeration knows about one client (its client key,
// else its IP) on one route ("GET /v1/invoices/{id}"): the most distinct object ids it
// requested in a window, as of PeakAt (it decays with peak_memory).
type ObjectBaseline struct {
	Client string
	Route  string
	Peak   float64
	PeakAt time.Time
}

// PrivilegeBaseline is what privilege_anomaly knows about a client key that has made
// privileged requests: the first and last it made successfully, and how many.
type PrivilegeBaseline struct {
	Key       string
	FirstSeen time.Time
	LastSeen  time.Time
	Events    uint64
}

// A learner is a detector whose baselines persist in the BaselineStore.
type learner interface {
	// load seeds the keys the detector does not hold from a snapshot, the most
	// recent first while there is room.
	load(b *Baselines)
	// takeDirty adds to u the baselines that changed since the last call.
	takeDirty(u *Baselines)
	// merge folds a snapshot, whole or only what changed, into what the detector
	// holds at watermark wm (math.MinInt64: no event yet; see Engine.RefreshBaselines)
	// and returns how many keys it adopted and how many it tracks it changed, and
	// whether it may have left a stored key out for want of room. A key the snapshot
	// lacks is no news: the detector keeps what it holds of it.
	merge(b *Baselines, wm int64) (adopted, merged int, left bool)
}

// seed loads a snapshot into the detectors.
func (e *Engine) seed(b *Baselines) {
	e.sawTraffic(b)
	for _, l := range e.learners {
		l.load(b)
	}
}

// sawTraffic moves the time traffic was first seen, which the learning periods count
// from, to the snapshot's TrafficSince; without one, to its earliest key's first
// sight, which is traffic all the same. A snapshot whose traffic_since was lost (an
// end-to-end test saw replays as of a time find 306 keys in ClickHouse but no
// traffic_since, and the learning detectors stayed silent; why it was missing is not
// known) still has its keys.
func (e *Engine) sawTraffic(b *Baselines) {
	if !b.TrafficSince.IsZero() {
		e.traffic.since = min(e.traffic.since, b.TrafficSince.UnixMilli())
		return
	}
	for i := range b.Keys {
		if fs := b.Keys[i].FirstSeen; !fs.IsZero() {
			e.traffic.since = min(e.traffic.since, fs.UnixMilli())
		}
	}
}

// takeDirty returns what the detectors learned since the last call.
func (e *Engine) takeDirty() Baselines {
	var u Baselines
	if e.traffic.dirty && e.traffic.since != math.MaxInt64 {
		u.TrafficSince = msTime(e.traffic.since)
		e.traffic.dirty = false
	}
	for _, l := range e.learners {
		l.takeDirty(&u)
	}
	e.fetch.takeEvicted(&u, e.log)
	return u
}

// MemoryBaselines is a BaselineStore in memory: the default when no store is
// configured, and the store of a replay, which starts it from the snapshot the
// replayed range begins with. It holds up to a BaselineLimits of each kind; past that
// it forgets the least recently updated, and counts them (Evictions). It is safe for
// concurrent use.
type MemoryBaselines struct {
	mu         sync.Mutex
	since      time.Time
	keys       capped[string, KeyBaseline]
	routes     capped[string, RouteBaseline]
	clients    capped[string, ClientBaseline]
	objects    capped[[2]string, ObjectBaseline]
	privileged capped[string, PrivilegeBaseline]
	// routesOf indexes objects by client, for LookupBaselines.
	routesOf map[string]map[string]struct{}
	updates  int
	// version counts the applied updates, the snapshot m starts from included: each
	// entry is stamped with the version that put it, for LoadBaselinesSince.
	version uint64
}

var _ BaselineChanges = (*MemoryBaselines)(nil)

// NewMemoryBaselines returns a store of up to lim holding snap (its most recent, when
// snap holds more).
func NewMemoryBaselines(snap Baselines, lim BaselineLimits) *MemoryBaselines {
	m := &MemoryBaselines{
		keys:       newCapped[string, KeyBaseline](lim.Keys),
		routes:     newCapped[string, RouteBaseline](lim.Routes),
		clients:    newCapped[string, ClientBaseline](lim.Clients),
		objects:    newCapped[[2]string, ObjectBaseline](lim.Objects),
		privileged: newCapped[string, PrivilegeBaseline](lim.Privileged),
		routesOf:   map[string]map[string]struct{}{},
	}
	m.objects.evict = func(id [2]string) {
		if rs := m.routesOf[id[0]]; rs != nil {
			delete(rs, id[1])
			if len(rs) == 0 {
				delete(m.routesOf, id[0])
			}
		}
	}
	m.apply(recentOf(&snap, lim))
	return m
}

// LoadBaselines returns a copy of the most recent of what m holds, up to lim, sorted.
func (m *MemoryBaselines) LoadBaselines(ctx context.Context, lim BaselineLimits) (Baselines, error) {
	b, _, err := m.LoadBaselinesSince(ctx, lim, 0)
	return b, err
}

// LoadBaselinesSince is LoadBaselines restricted to what updates applied after the
// load that returned since put: exactly those, since m's updates apply one at a
// time. It walks the most recent puts only, so it costs what changed, not what m
// holds.
func (m *MemoryBaselines) LoadBaselinesSince(_ context.Context, lim BaselineLimits, since uint64) (Baselines, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := NewRecentSet(lim)
	m.keys.since(since, func(v KeyBaseline) {
		v.Countries = slices.Clone(v.Countries)
		r.AddKey(v)
	})
	m.routes.since(since, r.AddRoute)
	m.clients.since(since, r.AddClient)
	m.objects.since(since, r.AddObject)
	m.privileged.since(since, r.AddPrivileged)
	b := r.Baselines()
	b.TrafficSince = m.since
	return b, m.version, nil
}

// recentOf returns the most recent of b, up to lim.
func recentOf(b *Baselines, lim BaselineLimits) Baselines {
	r := NewRecentSet(lim)
	for _, k := range b.Keys {
		r.AddKey(k)
	}
	for _, v := range b.Routes {
		r.AddRoute(v)
	}
	for _, v := range b.Clients {
		r.AddClient(v)
	}
	for _, v := range b.Objects {
		r.AddObject(v)
	}
	for _, v := range b.Privileged {
		r.AddPrivileged(v)
	}
	out := r.Baselines()
	out.TrafficSince = b.TrafficSince
	return out
}

// Sort sorts every list of b by its key.
func (b *Baselines) Sort() {
	slices.SortFunc(b.Keys, func(x, y KeyBaseline) int { return strings.Compare(x.Key, y.Key) })
	slices.SortFunc(b.Routes, func(x, y RouteBaseline) int { return strings.Compare(x.Route, y.Route) })
	slices.SortFunc(b.Clients, func(x, y ClientBaseline) int { return strings.Compare(x.Key, y.Key) })
	slices.SortFunc(b.Objects, func(x, y ObjectBaseline) int {
		return cmp.Or(strings.Compare(x.Client, y.Client), strings.Compare(x.Route, y.Route))
	})
	slices.SortFunc(b.Privileged, func(x, y PrivilegeBaseline) int { return strings.Compare(x.Key, y.Key) })
}

// UpdateBaselines upserts u.
func (m *MemoryBaselines) UpdateBaselines(_ context.Context, u Baselines) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.updates++
	m.apply(u)
	return nil
}

// LookupBaselines returns what m holds of keys and routes, sorted.
func (m *MemoryBaselines) LookupBaselines(_ context.Context, keys, routes []string) (Baselines, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b Baselines
	for _, k := range keys {
		if v, ok := m.keys.get(k); ok {
			v.Countries = slices.Clone(v.Countries)
			b.Keys = append(b.Keys, v)
		}
		if v, ok := m.clients.get(k); ok {
			b.Clients = append(b.Clients, v)
		}
		if v, ok := m.privileged.get(k); ok {
			b.Privileged = append(b.Privileged, v)
		}
		for r := range m.routesOf[k] {
			if v, ok := m.objects.get([2]string{k, r}); ok {
				b.Objects = append(b.Objects, v)
			}
		}
	}
	for _, r := range routes {
		if v, ok := m.routes.get(r); ok {
			b.Routes = append(b.Routes, v)
		}
	}
	b.Sort()
	return b, nil
}

// Updates returns how many times UpdateBaselines was called.
func (m *MemoryBaselines) Updates() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.updates
}

// Evictions returns how many baselines m forgot at its limits.
func (m *MemoryBaselines) Evictions() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keys.evicted + m.routes.evicted + m.clients.evicted + m.objects.evicted + m.privileged.evicted
}

func (m *MemoryBaselines) apply(u Baselines) {
	m.version++
	for _, c := range []interface{ stamp(uint64) }{&m.keys, &m.routes, &m.clients, &m.objects, &m.privileged} {
		c.stamp(m.version)
	}
	if !u.TrafficSince.IsZero() && (m.since.IsZero() || u.TrafficSince.Before(m.since)) {
		m.since = u.TrafficSince
	}
	for _, k := range u.Keys {
		k.Countries = slices.Clone(k.Countries)
		m.keys.put(k.Key, k)
	}
	for _, r := range u.Routes {
		m.routes.put(r.Route, r)
	}
	for _, c := range u.Clients {
		m.clients.put(c.Key, c)
	}
	for _, o := range u.Objects {
		if m.objects.put([2]string{o.Client, o.Route}, o) {
			rs := m.routesOf[o.Client]
			if rs == nil {
				rs = map[string]struct{}{}
				m.routesOf[o.Client] = rs
			}
			rs[o.Route] = struct{}{}
		}
	}
	for _, p := range u.Privileged {
		m.privileged.put(p.Key, p)
	}
}

// capped is a map of at most max entries that forgets the least recently put past it.
// order lists the puts, oldest first from head; a put of a key already in it leaves
// its older entry there, stale (its seq differs), to be skipped. Popped and stale
// entries are compacted away once they are the most of order.
type capped[K comparable, V any] struct {
	max     int
	m       map[K]cappedVal[V]
	order   []cappedRef[K]
	head    int
	seq     uint64
	ver     uint64 // the version puts are stamped with, never lower than before
	evicted uint64
	evict   func(K) // nil, or called for each key forgotten
}

type cappedVal[V any] struct {
	v   V
	seq uint64
	ver uint64
}

type cappedRef[K comparable] struct {
	k   K
	seq uint64
}

func newCapped[K comparable, V any](max int) capped[K, V] {
	return capped[K, V]{max: max, m: map[K]cappedVal[V]{}}
}

// put stores v under k and reports whether the map holds it (false under a limit of 0).
func (c *capped[K, V]) put(k K, v V) bool {
	if c.max <= 0 {
		return false
	}
	c.seq++
	c.m[k] = cappedVal[V]{v, c.seq, c.ver}
	c.order = append(c.order, cappedRef[K]{k, c.seq})
	for len(c.m) > c.max {
		r := c.order[c.head]
		c.order[c.head] = cappedRef[K]{}
		c.head++
		if c.m[r.k].seq == r.seq {
			delete(c.m, r.k)
			c.evicted++
			if c.evict != nil {
				c.evict(r.k)
			}
		}
	}
	// Compact once the popped or stale entries are the most of order: a flood of new
	// keys pops its front as fast as it appends.
	if len(c.order) > 2*len(c.m)+64 {
		c.compact()
	}
	_, ok := c.m[k]
	return ok
}

// stamp sets the version of the puts that follow.
func (c *capped[K, V]) stamp(ver uint64) { c.ver = ver }

// since calls f with each value put with a version above ver, the most recent first.
// order is in the order of the puts, and so of their versions: the walk stops at the
// first live entry at or below ver.
func (c *capped[K, V]) since(ver uint64, f func(V)) {
	for i := len(c.order) - 1; i >= c.head; i-- {
		r := c.order[i]
		v, ok := c.m[r.k]
		if !ok || v.seq != r.seq {
			continue // popped or stale: a later put of its key, if any, is further on
		}
		if v.ver <= ver {
			return
		}
		f(v.v)
	}
}

// get returns k's value.
func (c *capped[K, V]) get(k K) (V, bool) {
	v, ok := c.m[k]
	return v.v, ok
}

// compact drops the stale entries of order.
func (c *capped[K, V]) compact() {
	out := c.order[:0]
	for _, r := range c.order[c.head:] {
		if c.m[r.k].seq == r.seq {
			out = append(out, r)
		}
	}
	clear(c.order[len(out):])
	c.order, c.head = out, 0
}
