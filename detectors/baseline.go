package detectors

import (
	"context"
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
// changed. Keys and Routes are sorted.
type Baselines struct {
	// TrafficSince is when quiet_endpoint_spike first saw traffic; its learning period
	// counts from here. Zero: not yet.
	TrafficSince time.Time
	Keys         []KeyBaseline   // new_country, per client key
	Routes       []RouteBaseline // quiet_endpoint_spike, per method and route
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

// RouteBaseline is the request rate of one route ("GET /v1/users/{id}"): an
// exponentially weighted average of requests a minute with a time constant of the
// detector's learning_period, as of AsOf. It is the raw average; the detector corrects
// it for the start of traffic (TrafficSince) when it reads it.
type RouteBaseline struct {
	Route         string
	RatePerMinute float64
	AsOf          time.Time
}

// MemoryBaselines is a BaselineStore in memory: the default when no store is
// configured, and a way for tests and replays to start from a known snapshot. It is safe
// for concurrent use.
type MemoryBaselines struct {
	mu      sync.Mutex
	since   time.Time
	keys    map[string]KeyBaseline
	routes  map[string]RouteBaseline
	updates int
}

// NewMemoryBaselines returns a store holding snap.
func NewMemoryBaselines(snap Baselines) *MemoryBaselines {
	m := &MemoryBaselines{keys: map[string]KeyBaseline{}, routes: map[string]RouteBaseline{}}
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
	for _, r := range m.routes {
		b.Routes = append(b.Routes, r)
	}
	slices.SortFunc(b.Keys, func(x, y KeyBaseline) int { return strings.Compare(x.Key, y.Key) })
	slices.SortFunc(b.Routes, func(x, y RouteBaseline) int { return strings.Compare(x.Route, y.Route) })
	return b, nil
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
}
