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
