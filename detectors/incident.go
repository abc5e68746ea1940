package detectors

import (
	"cmp"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// emitter collects the alerts raised during one Observe or Flush call, each with the
// event time it was raised at.
type emitter struct {
	out []raised
}

type raised struct {
	at int64
	a  Alert
}

// take returns the collected alerts sorted by (raised at, detector, key, id) and
// forgets them; nil when there are none, so that a quiet call allocates nothing.
func (e *emitter) take() []Alert {
	if len(e.out) == 0 {
		return nil
	}
	slices.SortStableFunc(e.out, func(x, y raised) int {
		return cmp.Or(cmp.Compare(x.at, y.at),
			strings.Compare(x.a.Detector, y.a.Detector),
			strings.Compare(x.a.Key, y.a.Key),
			strings.Compare(x.a.ID, y.a.ID),
			x.a.LastSeen.Compare(y.a.LastSeen))
	})
	alerts := make([]Alert, len(e.out))
	for i, r := range e.out {
		alerts[i] = r.a
	}
	clear(e.out)
	e.out = e.out[:0]
	return alerts
}

// A firing is one decision of a detector that a key is abusive.
type firing struct {
	key         string
	at          int64 // event time it was decided at: a window's end, a new country's time
	first, last int64 // event times of the earliest and latest evidence
	strength    int   // how strong the evidence is; the strongest firing's evidence is kept
	severity    Severity
	labels      map[string]string
}

// An incident is one run of firings of a detector for a key, and one alert id.
type incident struct {
	id       string
	key      string
	start    int64 // first_seen; part of the id
	last     int64 // last_seen
	lastFire int64 // at of the latest firing; the cooldown counts from it
	lastEmit int64
	severity Severity
	strength int
	summary  string
	evidence Evidence
	labels   map[string]string
	dirty    bool // changed since last emitted
}

// incidents turns a detector's firings into alerts and updates: see the package
// documentation for when an update is emitted.
type incidents struct {
	detector string
	cooldown int64 // ms a key must stay quiet before a new incident opens
	every    int64 // ms of event time between two updates of one incident
	runbook  string
	open     map[string]*incident
	max      int // open incidents; past it the one quiet longest ends early
	// ended holds the incidents that ended while the events behind them may still be
	// read again, key → last firing. A restart, or a cluster task's next owner, reads
	// on from a commit that open windows held back, and must not open again an
	// incident that already ended: paged again, and with only the part of its events
	// after the commit, even under another id. They are saved with the open ones
	// (IncidentState.Ended) and forgotten endedMemory of event time later, far beyond
	// what open windows hold a commit back by, or when the input ends; at most max are
	// kept.
	ended    map[string]int64
	endedLow int64 // the earliest last firing in ended, while it has any
	out      *emitter
	alerts   *prometheus.CounterVec // by severity
	saved    map[string]struct{}    // keys whose incident changed since the last SaveIncidents
	muted    bool                   // the detector was disabled by a reload: firings raise nothing
}

func newIncidents(detector string, cooldown, every int64, max int, runbook string, out *emitter, alerts *prometheus.CounterVec) *incidents {
	return &incidents{
		detector: detector,
		max:      max,
		cooldown: cooldown,
		every:    every,
		runbook:  runbook,
		open:     make(map[string]*incident),
		out:      out,
		alerts:   alerts,
	}
}

// fire records f. build returns the evidence and summary of f; it is called only when
// they are needed: for a new incident, or when f is stronger than the incident's best.
func (s *incidents) fire(f firing, build func() (Evidence, string)) {
	if s.muted {
		return
	}
	inc := s.open[f.key]
	if last, ok := s.ended[f.key]; ok && inc == nil && f.at <= last {
		return // the events of an incident that ended, read again
	}
	if inc != nil && f.at-inc.lastFire > s.cooldown {
		s.end(inc, inc.lastFire+s.cooldown)
		inc = nil
	}
	if inc == nil {
		if len(s.open) >= s.max {
			s.endQuietest()
		}
		ev, summary := build()
		inc = &incident{
			id:       AlertID(s.detector, f.key, msTime(f.first)),
			key:      f.key,
			start:    f.first,
			last:     f.last,
			lastFire: f.at,
			severity: f.severity,
			strength: f.strength,
			summary:  summary,
			evidence: ev,
			labels:   f.labels,
		}
		s.open[f.key] = inc
		s.changed(f.key)
		s.emit(inc, f.at)
		return
	}
	s.changed(f.key)
	inc.lastFire = max64(inc.lastFire, f.at)
	if f.last > inc.last {
		inc.last = f.last
		inc.dirty = true
	}
	raised := f.severity.rank() > inc.severity.rank()
	if raised || f.strength > inc.strength {
		inc.strength = max(inc.strength, f.strength)
		inc.severity = maxSeverity(inc.severity, f.severity)
		inc.evidence, inc.summary = build()
		inc.dirty = true
	}
	if raised || (inc.dirty && f.at-inc.lastEmit >= s.every) {
		s.emit(inc, f.at)
	}
}

// current returns the incident a firing of key at at would update, or nil when it
// would open a new one.
func (s *incidents) current(key string, at int64) *incident {
	inc := s.open[key]
	if inc == nil || at-inc.lastFire > s.cooldown {
		return nil
	}
	return inc
}

func maxSeverity(a, b Severity) Severity {
	if b.rank() > a.rank() {
		return b
	}
	return a
}

// endQuiet ends every incident whose key has been quiet for the cooldown at watermark
// wm, and forgets those that ended endedMemory before.
func (s *incidents) endQuiet(wm int64) {
	for _, inc := range s.open {
		if wm-inc.lastFire > s.cooldown {
			s.end(inc, inc.lastFire+s.cooldown)
		}
	}
	if t := wm - endedMemory.Milliseconds(); len(s.ended) > 0 && s.endedLow < t {
		s.forgetEnded(t)
	}
}

// endQuietest ends the incident that has not fired for longest, to keep the open
// incidents bounded during an alert storm over many keys.
func (s *incidents) endQuietest() {
	var q *incident
	for _, inc := range s.open {
		if q == nil || inc.lastFire < q.lastFire || (inc.lastFire == q.lastFire && inc.key < q.key) {
			q = inc
		}
	}
	if q != nil {
		s.end(q, q.lastFire)
	}
}

// endAll ends every incident: the input is over, and nothing will be read again.
func (s *incidents) endAll() {
	for _, inc := range s.open {
		s.end(inc, inc.lastFire)
	}
	s.forgetEnded(math.MaxInt64)
}

func (s *incidents) end(inc *incident, at int64) {
	if inc.dirty {
		s.emit(inc, at)
	}
	delete(s.open, inc.key)
	s.remember(inc.key, inc.lastFire)
	s.changed(inc.key)
}

// remember keeps an ended incident's last firing (see ended); past max, the one that
// ended longest before makes room.
func (s *incidents) remember(key string, lastFire int64) {
	if s.ended == nil {
		s.ended = map[string]int64{}
	}
	if _, ok := s.ended[key]; !ok && len(s.ended) >= s.max {
		oldest, at := "", int64(math.MaxInt64)
		for k, l := range s.ended {
			if l < at || (l == at && k < oldest) {
				oldest, at = k, l
			}
		}
		delete(s.ended, oldest)
		s.changed(oldest)
	}
	s.ended[key] = max(s.ended[key], lastFire)
	if len(s.ended) == 1 {
		s.endedLow = s.ended[key]
	} else {
		s.endedLow = min(s.endedLow, s.ended[key])
	}
}

// endedMemory is how long, in event time after its last firing, an ended incident is
// remembered. Not acknowledgements: a cluster task's commit can fail in a rebalance
// without the engine knowing, and the next owner then reads from the one before.
const endedMemory = 24 * time.Hour

// forgetEnded forgets the ended incidents whose last firing is before t.
func (s *incidents) forgetEnded(t int64) {
	s.endedLow = math.MaxInt64
	for k, last := range s.ended {
		if last < t {
			delete(s.ended, k)
			s.changed(k)
		} else {
			s.endedLow = min(s.endedLow, last)
		}
	}
}

func (s *incidents) emit(inc *incident, at int64) {
	inc.lastEmit = at
	inc.dirty = false
	labels := maps.Clone(inc.labels)
	if labels == nil {
		labels = map[string]string{}
	}
	s.out.out = append(s.out.out, raised{at: at, a: Alert{
		ID:         inc.id,
		Detector:   s.detector,
		Severity:   inc.severity,
		Key:        inc.key,
		FirstSeen:  msTime(inc.start),
		LastSeen:   msTime(inc.last),
		Summary:    inc.summary,
		Evidence:   inc.evidence,
		RunbookURL: s.runbook,
		Labels:     labels,
	}})
	if s.alerts != nil {
		s.alerts.WithLabelValues(string(inc.severity)).Inc()
	}
}
