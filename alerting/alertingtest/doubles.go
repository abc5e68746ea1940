// Package alertingtest helps test alerting and what plugs into it: receiver doubles
// that record what they were given, test alerts, and RunOutboxSuite, the behaviour
// every alerting.OutboxStore must have (alerting runs it on its MemoryOutbox,
// alerting/outbox on its bbolt file), including a Router's crash safety on top of the store.
package alertingtest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// NewAlert returns an alert of detector for key, open since first and last seen at
// last, with the id the engine would give it.
func NewAlert(detector, key string, first, last time.Time) detectors.Alert {
	return detectors.Alert{
		ID:         detectors.AlertID(detector, key, first),
		Detector:   detector,
		Severity:   detectors.SeverityHigh,
		Key:        key,
		FirstSeen:  first.UTC(),
		LastSeen:   last.UTC(),
		Summary:    fmt.Sprintf("Test alert of %s for %s.", detector, key),
		Evidence:   detectors.Evidence{Window: "1m0s", ForbiddenCount: 25, TotalCount: 30, ClientIPs: []string{"192.0.2.7"}},
		RunbookURL: "https://runbooks.example.com/gatewatch/" + detector + ".md",
		Labels:     map[string]string{"key_type": "client_key"},
	}
}

// Alerts returns n alerts of distinct incidents, spread over the detectors, last
// seen from base on, one a second.
func Alerts(n int, base time.Time) []detectors.Alert {
	out := make([]detectors.Alert, n)
	for i := range out {
		first := base.Add(time.Duration(i) * time.Second)
		out[i] = NewAlert(detectors.Names[i%len(detectors.Names)], fmt.Sprintf("key-%04d", i), first, first.Add(time.Minute))
	}
	return out
}

// Identity names one delivery as a receiver sees it: the alert's ID and version and
// the reminder number (empty for a first delivery).
type Identity struct {
	ID       string
	LastSeen int64 // Unix ms
	Reminder string
}

// IdentityOf returns the identity of a delivered alert.
func IdentityOf(a *detectors.Alert) Identity {
	return Identity{ID: a.ID, LastSeen: a.LastSeen.UnixMilli(), Reminder: a.Labels[alerting.ReminderLabel]}
}

// Recorder is a Receiver double that keeps every call. By default it accepts
// everything; Fail makes it answer with an error.
type Recorder struct {
	name string

	mu      sync.Mutex
	calls   [][]detectors.Alert
	times   []time.Time
	fail    func(call int, alerts []detectors.Alert) (retry bool, err error)
	batch   int
	wait    bool
	release chan struct{}
}

var (
	_ alerting.Receiver   = (*Recorder)(nil)
	_ alerting.BatchSizer = (*Recorder)(nil)
)

// NewRecorder returns a Recorder called name.
func NewRecorder(name string) *Recorder { return &Recorder{name: name} }

// Name returns the receiver's name.
func (r *Recorder) Name() string { return r.name }

// MaxBatch returns what SetMaxBatch set; 0 leaves the Router's default.
func (r *Recorder) MaxBatch() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.batch
}

// SetMaxBatch makes the Recorder a BatchSizer taking at most n alerts a call.
func (r *Recorder) SetMaxBatch(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batch = n
}

// Fail sets what the Recorder answers: f gets the number of the call (from 0) and
// its alerts; a nil error accepts them. nil f accepts everything.
func (r *Recorder) Fail(f func(call int, alerts []detectors.Alert) (retry bool, err error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = f
}

// Block makes every later call wait for its context to end, as a destination that
// never answers does.
func (r *Recorder) Block() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.wait = true
}

// Notify records the call and answers as Fail said.
func (r *Recorder) Notify(ctx context.Context, alerts []detectors.Alert) (bool, error) {
	r.mu.Lock()
	n := len(r.calls)
	r.calls = append(r.calls, slices.Clone(alerts))
	r.times = append(r.times, time.Now())
	fail, wait := r.fail, r.wait
	r.mu.Unlock()
	if wait {
		<-ctx.Done()
		return true, context.Cause(ctx)
	}
	if fail != nil {
		return fail(n, alerts)
	}
	return false, nil
}

// Calls returns the alerts of every call, in order.
func (r *Recorder) Calls() [][]detectors.Alert {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// Times returns when each call came, by time.Now (virtual time in a synctest bubble).
func (r *Recorder) Times() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.times)
}

// Identities returns the identity of every alert of every call, in order.
func (r *Recorder) Identities() []Identity {
	var out []Identity
	for _, c := range r.Calls() {
		for i := range c {
			out = append(out, IdentityOf(&c[i]))
		}
	}
	return out
}

// Idempotent is a Receiver double of a destination that deduplicates on its side,
// the way the Slack receiver does with the alert ID and version: it keeps each
// delivery once, by its Identity, and drops a delivery it already has. It outlives
// Routers, as the destination outlives a gatewatch restart.
type Idempotent struct {
	name string

	mu       sync.Mutex
	kept     []detectors.Alert
	seen     map[Identity]bool
	requests int
	dropped  int
}

var _ alerting.Receiver = (*Idempotent)(nil)

// NewIdempotent returns an Idempotent called name.
func NewIdempotent(name string) *Idempotent {
	return &Idempotent{name: name, seen: map[Identity]bool{}}
}

// Name returns the receiver's name.
func (d *Idempotent) Name() string { return d.name }

// Notify keeps what it does not have yet.
func (d *Idempotent) Notify(_ context.Context, alerts []detectors.Alert) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range alerts {
		d.requests++
		id := IdentityOf(&alerts[i])
		if d.seen[id] {
			d.dropped++
			continue
		}
		d.seen[id] = true
		d.kept = append(d.kept, alerts[i])
	}
	return false, nil
}

// Kept returns the deliveries the destination shows, each once.
func (d *Idempotent) Kept() []detectors.Alert {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.kept)
}

// Dropped returns how many deliveries arrived again and were dropped.
func (d *Idempotent) Dropped() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped
}

// GroupRecorder is a GroupReceiver double: it keeps every group it was handed, as a
// destination that renders groups (Slack) would get them.
type GroupRecorder struct {
	name string

	mu     sync.Mutex
	groups []alerting.Group
	times  []time.Time
	fail   func(call int, g alerting.Group) (retry bool, err error)
}

var _ alerting.GroupReceiver = (*GroupRecorder)(nil)

// NewGroupRecorder returns a GroupRecorder called name.
func NewGroupRecorder(name string) *GroupRecorder { return &GroupRecorder{name: name} }

// Name returns the receiver's name.
func (r *GroupRecorder) Name() string { return r.name }

// Notify must not be called: the Router hands a GroupReceiver groups.
func (r *GroupRecorder) Notify(context.Context, []detectors.Alert) (bool, error) {
	return false, fmt.Errorf("alertingtest: %s: Notify called on a GroupReceiver", r.name)
}

// Fail sets what the recorder answers, as Recorder.Fail does.
func (r *GroupRecorder) Fail(f func(call int, g alerting.Group) (retry bool, err error)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = f
}

// NotifyGroup records g (its alerts copied).
func (r *GroupRecorder) NotifyGroup(_ context.Context, g alerting.Group) (bool, error) {
	r.mu.Lock()
	n := len(r.groups)
	g.Alerts = slices.Clone(g.Alerts)
	r.groups = append(r.groups, g)
	r.times = append(r.times, time.Now())
	fail := r.fail
	r.mu.Unlock()
	if fail != nil {
		return fail(n, g)
	}
	return false, nil
}

// Groups returns every group handed over, in order.
func (r *GroupRecorder) Groups() []alerting.Group {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.groups)
}

// Times returns when each group came, by time.Now (virtual in a synctest bubble).
func (r *GroupRecorder) Times() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.times)
}

// AnalystStore is an alerting.SilenceStore and AckStore in memory, as the store keeps
// them: the latest version of each silence, the first acknowledgement of each alert.
type AnalystStore struct {
	mu       sync.Mutex
	silences map[string]alerting.SilenceRecord
	acks     map[string]alerting.Ack
	Fail     error // when set, every save fails with it
}

var (
	_ alerting.SilenceStore = (*AnalystStore)(nil)
	_ alerting.AckStore     = (*AnalystStore)(nil)
)

// NewAnalystStore returns an empty AnalystStore.
func NewAnalystStore() *AnalystStore {
	return &AnalystStore{silences: map[string]alerting.SilenceRecord{}, acks: map[string]alerting.Ack{}}
}

// LoadSilences returns every silence.
func (s *AnalystStore) LoadSilences(context.Context) ([]alerting.SilenceRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]alerting.SilenceRecord, 0, len(s.silences))
	for _, r := range s.silences {
		out = append(out, r)
	}
	return out, nil
}

// SaveSilence keeps r unless a later version is kept.
func (s *AnalystStore) SaveSilence(_ context.Context, r alerting.SilenceRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Fail != nil {
		return s.Fail
	}
	if old, ok := s.silences[r.ID]; !ok || !old.Updated.After(r.Updated) {
		s.silences[r.ID] = r
	}
	return nil
}

// LoadAcks returns the acknowledgements at or after since.
func (s *AnalystStore) LoadAcks(_ context.Context, since time.Time) ([]alerting.Ack, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []alerting.Ack
	for _, a := range s.acks {
		if !a.At.Before(since) {
			out = append(out, a)
		}
	}
	return out, nil
}

// SaveAck keeps a unless the alert has one.
func (s *AnalystStore) SaveAck(_ context.Context, a alerting.Ack) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Fail != nil {
		return s.Fail
	}
	if _, ok := s.acks[a.ID]; !ok {
		s.acks[a.ID] = a
	}
	return nil
}
