package alerting

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// MemoryOutbox is an OutboxStore in memory: for tests, for `notify --dry-run`, and
// for anything that may lose its outbox with the process. It is safe for concurrent
// use. A Router restarted on the same MemoryOutbox sees what the previous one left,
// which is how the tests model a restart without a disk.
type MemoryOutbox struct {
	mu    sync.Mutex
	seq   uint64
	ds    map[DeliveryKey]*Delivery
	queue map[string][]queued // per receiver, in Seq order; entries whose Seq no longer matches are stale
}

type incidentKey struct{ receiver, id string }

type queued struct {
	seq uint64
	key DeliveryKey
}

var _ OutboxStore = (*MemoryOutbox)(nil)

// NewMemoryOutbox returns an empty MemoryOutbox.
func NewMemoryOutbox() *MemoryOutbox {
	return &MemoryOutbox{
		ds:    map[DeliveryKey]*Delivery{},
		queue: map[string][]queued{},
	}
}

// Enqueue adds each delivery whose key the outbox does not hold. Alerts are kept as
// given (their labels copied), so callers must not change an alert's slices after
// handing it over, as the Router never does.
func (m *MemoryOutbox) Enqueue(ctx context.Context, ds []Delivery) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range ds {
		d := &ds[i]
		d.Seq = 0
		if _, ok := m.ds[d.DeliveryKey]; ok {
			continue
		}
		m.seq++
		d.Seq = m.seq
		c := *d
		c.Alert.Labels = maps.Clone(d.Alert.Labels)
		c.State = Pending
		m.ds[d.DeliveryKey] = &c
		m.queue[d.Receiver] = append(m.queue[d.Receiver], queued{c.Seq, c.DeliveryKey})
	}
	return nil
}

// Pending returns the oldest pending deliveries of receiver.
func (m *MemoryOutbox) Pending(ctx context.Context, receiver string, limit int) ([]Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	q := m.queue[receiver]
	// Drop the stale head, so the queue does not grow with what left it.
	for len(q) > 0 && !m.live(q[0]) {
		q = q[1:]
	}
	m.queue[receiver] = q
	var out []Delivery
	for _, e := range q {
		if len(out) >= limit {
			break
		}
		if m.live(e) {
			out = append(out, m.copyOf(m.ds[e.key]))
		}
	}
	return out, nil
}

func (m *MemoryOutbox) live(e queued) bool {
	d, ok := m.ds[e.key]
	return ok && d.State == Pending && d.Seq == e.seq
}

// copyOf returns d with its own labels, so no caller shares a map with the outbox.
func (m *MemoryOutbox) copyOf(d *Delivery) Delivery {
	c := *d
	c.Alert.Labels = maps.Clone(d.Alert.Labels)
	return c
}

// Update records outcomes.
func (m *MemoryOutbox) Update(ctx context.Context, ds []Delivery) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range ds {
		u := &ds[i]
		d, ok := m.ds[u.DeliveryKey]
		if !ok {
			continue
		}
		was := d.State
		d.State, d.Queued, d.Attempts, d.FirstFailure, d.LastError, d.Done = u.State, u.Queued, u.Attempts, u.FirstFailure, u.LastError, u.Done
		if was != Pending && d.State == Pending {
			m.seq++
			d.Seq = m.seq
			m.queue[d.Receiver] = append(m.queue[d.Receiver], queued{d.Seq, d.DeliveryKey})
		}
	}
	return nil
}

// Lookup returns the delivery stored under k.
func (m *MemoryOutbox) Lookup(ctx context.Context, k DeliveryKey) (Delivery, bool, error) {
	if err := ctx.Err(); err != nil {
		return Delivery{}, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.ds[k]
	if !ok {
		return Delivery{}, false, nil
	}
	return m.copyOf(d), true, nil
}

// Parked returns failed deliveries of receiver, oldest version first.
func (m *MemoryOutbox) Parked(ctx context.Context, receiver string, limit int) ([]Delivery, error) {
	return m.collect(ctx, limit, func(d *Delivery) bool { return d.Receiver == receiver && d.State == Failed })
}

// Recent returns the newest delivery of every receiver and alert ID whose version is
// at or after since.
func (m *MemoryOutbox) Recent(ctx context.Context, since time.Time) ([]Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	newest := map[incidentKey]*Delivery{}
	for k, d := range m.ds {
		ik := incidentKey{k.Receiver, k.ID}
		if cur, ok := newest[ik]; k.Version >= since.UnixMilli() && (!ok || cur.Less(k)) {
			newest[ik] = d
		}
	}
	var out []Delivery
	for _, d := range newest {
		out = append(out, m.copyOf(d))
	}
	sortDeliveries(out)
	return out, nil
}

func (m *MemoryOutbox) collect(ctx context.Context, limit int, keep func(*Delivery) bool) ([]Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Delivery
	for _, d := range m.ds {
		if keep(d) {
			out = append(out, m.copyOf(d))
		}
	}
	sortDeliveries(out)
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// sortDeliveries orders by receiver, version, ID and round, as the durable store's
// keys do, so both return the same order.
func sortDeliveries(ds []Delivery) {
	slices.SortFunc(ds, func(a, b Delivery) int {
		return cmp.Or(strings.Compare(a.Receiver, b.Receiver), cmp.Compare(a.Version, b.Version),
			strings.Compare(a.ID, b.ID), cmp.Compare(a.Round, b.Round))
	})
}

// Stats returns where each receiver's queue stands. It walks every delivery: the
// memory outbox serves tests and dry runs.
func (m *MemoryOutbox) Stats(ctx context.Context) (map[string]QueueStats, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]QueueStats{}
	for _, d := range m.ds {
		st := out[d.Receiver]
		switch d.State {
		case Pending:
			st.Pending++
		case Failed:
			st.Parked++
		default:
			continue
		}
		out[d.Receiver] = st
	}
	for r, q := range m.queue {
		i := slices.IndexFunc(q, m.live)
		if i < 0 {
			continue
		}
		st := out[r]
		st.OldestPending = m.ds[q[i].key].Queued
		out[r] = st
	}
	return out, nil
}

// Prune forgets deliveries delivered before before.
func (m *MemoryOutbox) Prune(ctx context.Context, before time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k, d := range m.ds {
		if d.State == Delivered && d.Done.Before(before) {
			delete(m.ds, k)
			n++
		}
	}
	return n, nil
}
