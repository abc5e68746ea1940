package alerting

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

// reminders keeps, per receiver and alert ID, the newest delivery of each incident
// that may still need a reminder: one whose route repeats and whose newest version
// is younger than resolve_timeout. The outbox is the truth; this index is rebuilt
// from it (OutboxStore.Recent) when Run starts.
type reminders struct {
	mu   sync.Mutex
	open map[incidentKey]*Delivery
	wake chan struct{}
}

func newReminders() *reminders {
	return &reminders{open: map[incidentKey]*Delivery{}, wake: make(chan struct{}, 1)}
}

// track records d as the newest delivery of its incident, unless a newer one is known.
func (m *reminders) track(d *Delivery) {
	ik := incidentKey{d.Receiver, d.ID}
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.open[ik]; ok && !cur.Less(d.DeliveryKey) {
		return
	}
	c := *d
	c.Alert.Labels = maps.Clone(d.Alert.Labels)
	m.open[ik] = &c
	m.poke()
}

// delivered records ds as delivered at their Done time, which starts their repeat
// interval. A delivery not tracked yet is added when repeats says its route repeats:
// a worker may deliver before the goroutine that queued it got to track it.
func (m *reminders) delivered(ds []Delivery, repeats func(*Delivery) bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range ds {
		d := &ds[i]
		ik := incidentKey{d.Receiver, d.ID}
		cur, ok := m.open[ik]
		switch {
		case ok && cur.DeliveryKey == d.DeliveryKey:
			cur.State, cur.Done = d.State, d.Done
		case ok && d.Less(cur.DeliveryKey):
			// An older version or reminder; the newer one is what reminders follow.
		case repeats(d):
			c := *d
			c.Alert.Labels = maps.Clone(d.Alert.Labels)
			m.open[ik] = &c
		}
	}
	m.poke()
}

// forget drops the incident's entry if it still is the delivery (version, round).
func (m *reminders) forget(receiver, id string, version int64, round int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ik := incidentKey{receiver, id}
	if cur, ok := m.open[ik]; ok && cur.Version == version && cur.Round == round {
		delete(m.open, ik)
	}
}

func (m *reminders) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// repeatFor returns the repeat interval of the route that sends a to receiver under
// the current config; 0 when none does, or it does not repeat.
func (r *Router) repeatFor(a *detectors.Alert, receiver string) time.Duration {
	for _, t := range r.routes.match(a, nil) {
		if t.receiver == receiver {
			return t.repeat
		}
	}
	return 0
}

// remindLoop queues reminders as they fall due, until wctx ends.
func (r *Router) remindLoop(ctx, wctx context.Context) error {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next, err := r.remindDue(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		t.Reset(time.Hour) // re-checks now and then even with nothing due
		if !next.IsZero() {
			t.Reset(max(next.Sub(r.now()), 0))
		}
		select {
		case <-t.C:
		case <-r.rem.wake:
		case <-wctx.Done():
			return nil
		}
	}
}

// remindDue queues a reminder for every tracked incident that was delivered at least
// its repeat interval ago, is still routed to that receiver and not silenced, and is
// still open (its newest version younger than resolve_timeout). It forgets incidents
// that are over, parked, or no longer repeat, and returns when the next reminder
// falls due (zero: none is scheduled).
func (r *Router) remindDue(ctx context.Context) (time.Time, error) {
	now := r.now()
	var due []Delivery
	var next time.Time
	r.rem.mu.Lock()
	for _, ik := range slices.Collect(maps.Keys(r.rem.open)) {
		d := r.rem.open[ik]
		if now.Sub(d.Alert.LastSeen) >= r.cfg.ResolveTimeout || d.State == Failed {
			delete(r.rem.open, ik)
			continue
		}
		if d.State != Delivered {
			continue // its own delivery is under way; the interval starts when it is done
		}
		repeat := r.repeatFor(&d.Alert, d.Receiver)
		if repeat <= 0 {
			delete(r.rem.open, ik)
			continue
		}
		at := d.Done.Add(repeat)
		if r.silence.mutes(&d.Alert, now) {
			// Muted now, maybe not when the silence expires: look again then.
			at = now.Add(repeat)
		} else if !at.After(now) {
			rd := *d
			rd.Round++
			rd.State, rd.Queued, rd.Attempts, rd.FirstFailure, rd.LastError, rd.Done, rd.Seq = Pending, now, 0, time.Time{}, "", time.Time{}, 0
			rd.Alert.Labels = maps.Clone(d.Alert.Labels)
			if rd.Alert.Labels == nil {
				rd.Alert.Labels = map[string]string{}
			}
			rd.Alert.Labels[ReminderLabel] = strconv.Itoa(rd.Round)
			due = append(due, rd)
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	r.rem.mu.Unlock()
	if len(due) == 0 {
		return next, nil
	}
	r.putMu.RLock()
	defer r.putMu.RUnlock()
	if r.closed {
		return time.Time{}, nil
	}
	if err := r.store.Enqueue(ctx, due); err != nil {
		return time.Time{}, fmt.Errorf("alerting: outbox: enqueue reminders: %w", err)
	}
	for i := range due {
		d := &due[i]
		if d.Seq == 0 {
			// A newer version came meanwhile and supersedes the reminder; stop
			// reminding of the old one even if the new one does not repeat.
			r.rem.forget(d.Receiver, d.ID, d.Version, d.Round-1)
			continue
		}
		w := r.workers[d.Receiver]
		w.m.reminders.Inc()
		w.poke()
		r.rem.track(d)
	}
	// The reminders just queued are tracked as pending; the next due time comes
	// once they are delivered, which wakes the loop.
	return next, nil
}
