package detectors

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// An IncidentStore keeps the detectors' open incidents between runs. The engine saves
// what changed before it acknowledges the events behind it, so that after a restart or
// a crash, reading on from the committed offsets, an attack still under way continues
// under its existing id: it is neither paged again as a new incident nor lost.
// store.Local and store.ClickHouse implement it.
type IncidentStore interface {
	// LoadIncidents returns the incidents of scope that were open when last saved.
	LoadIncidents(ctx context.Context, scope string) ([]IncidentState, error)
	// SaveIncidents upserts the incidents in open and forgets those in closed, for
	// scope, and returns once that is durable.
	SaveIncidents(ctx context.Context, scope string, open []IncidentState, closed []IncidentRef) error
}

// IncidentRef names one detector's incident for one key.
type IncidentRef struct {
	Detector string `json:"detector"`
	Key      string `json:"key"`
}

// IncidentState is an open incident as the engine keeps it.
type IncidentState struct {
	IncidentRef
	ID       string            `json:"id"`
	Start    time.Time         `json:"start"`     // first_seen
	Last     time.Time         `json:"last"`      // last_seen
	LastFire time.Time         `json:"last_fire"` // event time of the latest firing: the cooldown counts from it
	LastEmit time.Time         `json:"last_emit"` // event time the latest version was emitted at
	Severity Severity          `json:"severity"`
	Strength int               `json:"strength"`
	Summary  string            `json:"summary"`
	Evidence Evidence          `json:"evidence"`
	Labels   map[string]string `json:"labels,omitempty"`
	Pending  bool              `json:"pending,omitempty"` // changed since the version last emitted
	// Ended: the incident ended, and only LastFire is kept, until the events behind
	// it cannot be read again (see incidents.ended).
	Ended bool `json:"ended,omitempty"`
}

// LoadIncidents restores the open incidents saved for scope: a firing for one of their
// keys continues the incident (same id) instead of opening one. Call it before the
// first event; Run calls it when Options.Incidents is set.
func (e *Engine) LoadIncidents(ctx context.Context) error {
	if e.incStore == nil || e.incLoaded {
		return nil
	}
	states, err := e.incStore.LoadIncidents(ctx, e.scope)
	if err != nil {
		return fmt.Errorf("detectors: load open incidents: %w", err)
	}
	byDetector := map[string]*incidents{}
	for _, inc := range e.incs {
		byDetector[inc.detector] = inc
	}
	n := 0
	for _, st := range states {
		switch inc := byDetector[st.Detector]; {
		case inc == nil:
		case st.Ended:
			inc.remember(st.Key, st.LastFire.UnixMilli())
		default:
			inc.restore(st)
			n++
		}
	}
	for _, inc := range e.incs {
		inc.trimOpen() // states saved under a larger max_keys, or a replay's alert history
	}
	e.incLoaded = true
	if n > 0 {
		e.log.Info("open incidents restored", "incidents", n)
	}
	return nil
}

// SaveIncidents writes the incidents opened, changed or ended since the last save.
func (e *Engine) SaveIncidents(ctx context.Context) error {
	if e.incStore == nil {
		return nil
	}
	var open []IncidentState
	var closed []IncidentRef
	for _, inc := range e.incs {
		o, c := inc.takeChanged()
		open, closed = append(open, o...), append(closed, c...)
	}
	if len(open) == 0 && len(closed) == 0 {
		return nil
	}
	if err := e.incStore.SaveIncidents(ctx, e.scope, open, closed); err != nil {
		// Keep them to save with the next call.
		for _, inc := range e.incs {
			inc.unsave(open, closed)
		}
		return fmt.Errorf("detectors: save open incidents: %w", err)
	}
	return nil
}

// trimOpen ends the incidents quiet longest while more than max are open.
func (s *incidents) trimOpen() {
	if len(s.open) <= s.max {
		return
	}
	quiet := slices.SortedFunc(maps.Values(s.open), func(a, b *incident) int {
		return cmp.Or(cmp.Compare(a.lastFire, b.lastFire), strings.Compare(a.key, b.key))
	})
	for _, inc := range quiet[:len(quiet)-s.max] {
		s.end(inc, inc.lastFire)
	}
}

// restore opens st's incident as it was saved.
func (s *incidents) restore(st IncidentState) {
	s.open[st.Key] = &incident{
		id:       st.ID,
		key:      st.Key,
		start:    st.Start.UnixMilli(),
		last:     st.Last.UnixMilli(),
		lastFire: st.LastFire.UnixMilli(),
		lastEmit: st.LastEmit.UnixMilli(),
		severity: st.Severity,
		strength: st.Strength,
		summary:  st.Summary,
		evidence: st.Evidence,
		labels:   st.Labels,
		dirty:    st.Pending,
	}
}

// changed notes that key's incident opened, changed or ended since the last save.
func (s *incidents) changed(key string) {
	if s.saved == nil {
		s.saved = map[string]struct{}{}
	}
	s.saved[key] = struct{}{}
}

// takeChanged returns the states of the incidents changed since the last call and the
// refs of those that ended, sorted by key.
func (s *incidents) takeChanged() (open []IncidentState, closed []IncidentRef) {
	for _, key := range slices.Sorted(maps.Keys(s.saved)) {
		inc := s.open[key]
		if inc == nil {
			ref := IncidentRef{Detector: s.detector, Key: key}
			if last, ok := s.ended[key]; ok {
				open = append(open, IncidentState{IncidentRef: ref, LastFire: msTime(last), Ended: true})
			} else {
				closed = append(closed, ref)
			}
			continue
		}
		open = append(open, IncidentState{
			IncidentRef: IncidentRef{Detector: s.detector, Key: key},
			ID:          inc.id,
			Start:       msTime(inc.start),
			Last:        msTime(inc.last),
			LastFire:    msTime(inc.lastFire),
			LastEmit:    msTime(inc.lastEmit),
			Severity:    inc.severity,
			Strength:    inc.strength,
			Summary:     inc.summary,
			Evidence:    inc.evidence,
			Labels:      inc.labels,
			Pending:     inc.dirty,
		})
	}
	clear(s.saved)
	return open, closed
}

// unsave marks the detector's entries of a save that failed as changed again.
func (s *incidents) unsave(open []IncidentState, closed []IncidentRef) {
	for _, st := range open {
		if st.Detector == s.detector {
			s.changed(st.Key)
		}
	}
	for _, r := range closed {
		if r.Detector == s.detector {
			s.changed(r.Key)
		}
	}
}

// MemoryIncidents is an IncidentStore in memory, for tests and replays. It is safe for
// concurrent use only through the engine that owns it.
type MemoryIncidents struct {
	m     map[string]map[IncidentRef]IncidentState
	Saves int
}

// NewMemoryIncidents returns an empty store.
func NewMemoryIncidents() *MemoryIncidents {
	return &MemoryIncidents{m: map[string]map[IncidentRef]IncidentState{}}
}

// LoadIncidents returns scope's incidents sorted by detector and key.
func (m *MemoryIncidents) LoadIncidents(_ context.Context, scope string) ([]IncidentState, error) {
	out := slices.Collect(maps.Values(m.m[scope]))
	slices.SortFunc(out, func(a, b IncidentState) int {
		return strings.Compare(a.Detector+"\x00"+a.Key, b.Detector+"\x00"+b.Key)
	})
	return out, nil
}

// SaveIncidents upserts open and deletes closed.
func (m *MemoryIncidents) SaveIncidents(_ context.Context, scope string, open []IncidentState, closed []IncidentRef) error {
	s := m.m[scope]
	if s == nil {
		s = map[IncidentRef]IncidentState{}
		m.m[scope] = s
	}
	for _, st := range open {
		s[st.IncidentRef] = st
	}
	for _, r := range closed {
		delete(s, r)
	}
	m.Saves++
	return nil
}
