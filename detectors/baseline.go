package detectors

import (
	"cmp"
	"context"
	"maps"
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
	// LoadBaselines returns every stored baseline.
	LoadBaselines(ctx context.Context) (Baselines, error)
	// UpdateBaselines upserts the keys and routes in u and returns once they are
	// durable. Each entry is the whole current baseline of its key or route, not a
	// delta, so writing one twice is harmless. After a restart, events re-read from
	// the last committed offset may already be in the loaded baselines: their event
	// counts are added again (a few minutes' worth, against min_events and weeks of
	// rates), their first and last seen times are not.
	UpdateBaselines(ctx context.Context, u Baselines) error
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
	// merge folds a snapshot into what the detector holds at watermark wm
	// (math.MinInt64: no event yet; see Engine.RefreshBaselines) and returns how many
	// keys it adopted and how many it tracks it changed.
	merge(b *Baselines, wm int64) (adopted, merged int)
}

// seed loads a snapshot into the detectors.
func (e *Engine) seed(b *Baselines) {
	if !b.TrafficSince.IsZero() {
		e.traffic.since = min(e.traffic.since, b.TrafficSince.UnixMilli())
	}
	for _, l := range e.learners {
		l.load(b)
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
	return u
}

// MemoryBaselines is a BaselineStore in memory: the default when no store is
// configured, and a way for tests and replays to start from a known snapshot. It is safe
// for concurrent use.
type MemoryBaselines struct {
	mu         sync.Mutex
	since      time.Time
	keys       map[string]KeyBaseline
	routes     map[string]RouteBaseline
	clients    map[string]ClientBaseline
	objects    map[[2]string]ObjectBaseline
	privileged map[string]PrivilegeBaseline
	updates    int
}

// NewMemoryBaselines returns a store holding snap.
func NewMemoryBaselines(snap Baselines) *MemoryBaselines {
	m := &MemoryBaselines{
		keys:       map[string]KeyBaseline{},
		routes:     map[string]RouteBaseline{},
		clients:    map[string]ClientBaseline{},
		objects:    map[[2]string]ObjectBaseline{},
		privileged: map[string]PrivilegeBaseline{},
	}
	m.apply(snap)
	return m
}

// LoadBaselines returns a copy of everything m holds, sorted.
func (m *MemoryBaselines) LoadBaselines(context.Context) (Baselines, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := Baselines{TrafficSince: m.since}
	for _, k := range m.keys {
		k.Countries = slices.Clone(k.Countries)
		b.Keys = append(b.Keys, k)
	}
	b.Routes = slices.Collect(maps.Values(m.routes))
	b.Clients = slices.Collect(maps.Values(m.clients))
	b.Objects = slices.Collect(maps.Values(m.objects))
	b.Privileged = slices.Collect(maps.Values(m.privileged))
	b.sort()
	return b, nil
}

// sort sorts every list of b by its key.
func (b *Baselines) sort() {
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

// Updates returns how many times UpdateBaselines was called.
func (m *MemoryBaselines) Updates() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.updates
}

func (m *MemoryBaselines) apply(u Baselines) {
	if !u.TrafficSince.IsZero() && (m.since.IsZero() || u.TrafficSince.Before(m.since)) {
		m.since = u.TrafficSince
	}
	for _, k := range u.Keys {
		k.Countries = slices.Clone(k.Countries)
		m.keys[k.Key] = k
	}
	for _, r := range u.Routes {
		m.routes[r.Route] = r
	}
	for _, c := range u.Clients {
		m.clients[c.Key] = c
	}
	for _, o := range u.Objects {
		m.objects[[2]string{o.Client, o.Route}] = o
	}
	for _, p := range u.Privileged {
		m.privileged[p.Key] = p
	}
}
