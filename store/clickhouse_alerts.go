package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// The ClickHouse store keeps the alert history in alerts (0001, one row per alert, the
// latest version by last_seen) and alert_deliveries (0004, see there). RecordAlerts
// and RecordDeliveries buffer in memory and return at once, as ArchiveEvents does;
// Run writes the buffer every flush_interval. While ClickHouse fails, each batch is
// spilled to <spill_dir>/alerts (the archive's segment format, one fsynced segment per
// batch, JSON inside) and Run writes the segments, oldest first, once it is back;
// Close writes or spills what is still in memory. So an outage loses nothing taken.
// Writing a batch twice (a crash between its insert and the removal of its segment)
// is harmless: its rows carry their versions and fold into one.

// historyState is the ClickHouse store's alert history side.
type historyState struct {
	mu      sync.Mutex   // guards pending and clock
	pending historyBatch // taken, not yet written or spilled
	clock   versionClock // orders delivery records and names spilled batches
	wake    chan struct{}

	write   sync.Mutex // held by whoever writes: Run's loop, Alerts or Close; guards below
	spill   *spill
	retryAt time.Time // zero while ClickHouse takes history writes
	bo      *backoff.ExponentialBackOff
}

func newHistoryState(c *ClickHouse) (*historyState, error) {
	sp, err := openSpill(filepath.Join(c.cfg.SpillDir, "alerts"))
	if err != nil {
		return nil, err
	}
	h := &historyState{
		spill: sp,
		wake:  make(chan struct{}, 1),
		bo: &backoff.ExponentialBackOff{
			InitialInterval:     100 * time.Millisecond,
			RandomizationFactor: 0.5,
			Multiplier:          2,
			MaxInterval:         c.retryMax,
		},
	}
	h.bo.Reset()
	for _, seg := range sp.segs {
		h.clock.observe(seg.id) // a spilled batch's id is above its records' versions
	}
	return h, nil
}

// takeHistory adds n records to the buffer with add, unless it is closed or full.
func (c *ClickHouse) takeHistory(n int, add func(h *historyState)) error {
	if n == 0 {
		return nil
	}
	if c.isClosed() {
		return ErrClosed
	}
	h := c.hist
	h.mu.Lock()
	if h.pending.len()+n > c.cfg.BufferSize {
		held := h.pending.len()
		h.mu.Unlock()
		return fmt.Errorf("%w: %d alert history records held, %d more do not fit in buffer_size %d", ErrBufferFull, held, n, c.cfg.BufferSize)
	}
	add(h)
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return nil
}

// RecordAlerts takes alerts into the history and returns without waiting for
// ClickHouse (see the top of this file); it fails only when the buffer is full
// (ErrBufferFull) or after Close.
func (c *ClickHouse) RecordAlerts(_ context.Context, alerts []detectors.Alert) error {
	return c.takeHistory(len(alerts), func(h *historyState) {
		h.pending.Alerts = append(h.pending.Alerts, alerts...)
	})
}

// RecordDeliveries takes the states of ds into the history, as RecordAlerts.
func (c *ClickHouse) RecordDeliveries(_ context.Context, ds []alerting.Delivery) error {
	now := c.now()
	return c.takeHistory(len(ds), func(h *historyState) {
		for i := range ds {
			h.pending.Deliveries = append(h.pending.Deliveries, newDeliveryRow(&ds[i], now, h.clock.next(now)))
		}
	})
}

// runHistory writes the history buffer and spill to ClickHouse every flush_interval,
// or spills the buffer while ClickHouse fails, until ctx ends.
func (c *ClickHouse) runHistory(ctx context.Context) {
	h := c.hist
	tick := time.NewTicker(c.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		h.write.Lock()
		now := c.now()
		if now.Before(h.retryAt) {
			if err := c.spillHistoryLocked(); err != nil {
				c.log.Error("cannot spill alert history to disk; it waits in memory", "err", err)
			}
		} else if err := c.writeHistoryLocked(ctx); err != nil && ctx.Err() == nil {
			if h.retryAt.IsZero() {
				c.log.Warn("clickhouse alert history writes fail; spilling to disk until they succeed", "err", err)
			}
			h.retryAt = now.Add(h.bo.NextBackOff())
		} else if err == nil {
			if !h.retryAt.IsZero() {
				c.log.Info("clickhouse alert history writes succeed again")
			}
			h.retryAt = time.Time{}
			h.bo.Reset()
		}
		h.write.Unlock()
	}
}

// takePending empties the buffer and returns what it held, or nil.
func (h *historyState) takePending() (*historyBatch, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending.len() == 0 {
		return nil, 0
	}
	b := h.pending
	h.pending = historyBatch{}
	return &b, h.clock.next(time.Time{})
}

// putBack returns b to the front of the buffer.
func (h *historyState) putBack(b *historyBatch) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending.Alerts = append(b.Alerts, h.pending.Alerts...)
	h.pending.Deliveries = append(b.Deliveries, h.pending.Deliveries...)
}

// spillHistoryLocked moves the buffer to a spill segment.
func (c *ClickHouse) spillHistoryLocked() error {
	h := c.hist
	b, id := h.takePending()
	if b == nil {
		return nil
	}
	data, err := encodeHistory(b)
	if err == nil {
		err = h.spill.write(&block{id: id, n: b.len(), data: data})
	}
	if err != nil {
		h.putBack(b)
	}
	return err
}

// writeHistoryLocked writes the spilled batches, oldest first, then the buffer, to
// ClickHouse; when the buffer cannot be written it is spilled.
func (c *ClickHouse) writeHistoryLocked(ctx context.Context) error {
	h := c.hist
	for len(h.spill.segs) > 0 {
		seg := h.spill.segs[0]
		blk, err := h.spill.read(seg)
		var b *historyBatch
		if err == nil {
			b, err = decodeHistory(blk.data)
		}
		if errors.Is(err, errCorrupt) {
			c.log.Error("spilled alert history is corrupt; set aside as .corrupt", "err", err, "records", seg.n)
			if err := h.spill.quarantine(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := c.insertHistory(ctx, b); err != nil {
			return err
		}
		if err := h.spill.remove(); err != nil {
			return err
		}
	}
	b, _ := h.takePending()
	if b == nil {
		return nil
	}
	err := c.insertHistory(ctx, b)
	if err == nil {
		return nil
	}
	h.putBack(b)
	if serr := c.spillHistoryLocked(); serr != nil {
		return errors.Join(err, serr)
	}
	return err
}

// historyWritten writes the history that waits in memory and in the spill, for a read
// that must reflect it.
func (c *ClickHouse) historyWritten(ctx context.Context) error {
	c.hist.write.Lock()
	defer c.hist.write.Unlock()
	if err := c.writeHistoryLocked(ctx); err != nil {
		return fmt.Errorf("store: writing the alert history before reading it: %w", err)
	}
	return nil
}

// closeHistory writes what is in memory to ClickHouse, or spills it once that fails
// or ctx has ended; spilled batches wait for the next process's Run.
func (c *ClickHouse) closeHistory(ctx context.Context) error {
	h := c.hist
	h.write.Lock()
	defer h.write.Unlock()
	if ctx.Err() == nil && c.writeHistoryLocked(ctx) == nil {
		return nil
	}
	if err := c.spillHistoryLocked(); err != nil {
		return fmt.Errorf("store: alert history neither written nor spilled: %w", err)
	}
	return nil
}

// insertHistory writes b: alerts, then delivery states, one insert each.
func (c *ClickHouse) insertHistory(ctx context.Context, b *historyBatch) error {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	if len(b.Alerts) > 0 {
		t := tableRows{table: "alerts",
			columns: "id, detector, severity, key, first_seen, first_seen_ms, last_seen, last_seen_ms, summary, evidence, runbook_url, labels, recorded, version",
			cols: []any{&[]string{}, &[]string{}, &[]string{}, &[]string{}, &[]int64{}, &[]uint16{}, &[]int64{}, &[]uint16{},
				&[]string{}, &[]string{}, &[]string{}, &[]string{}, &[]int64{}, &[]uint64{}}}
		recorded, _ := chTime(c.now())
		for i := range b.Alerts {
			a := &b.Alerts[i]
			ev, err := json.Marshal(a.Evidence)
			if err != nil {
				return fmt.Errorf("store: alert %s: evidence: %w", a.ID, err)
			}
			labels := a.Labels
			if labels == nil {
				labels = map[string]string{}
			}
			lb, err := json.Marshal(labels)
			if err != nil {
				return fmt.Errorf("store: alert %s: labels: %w", a.ID, err)
			}
			fs, fms := chTime(a.FirstSeen)
			ls, lms := chTime(a.LastSeen)
			t.add(a.ID, a.Detector, string(a.Severity), a.Key, fs, fms, ls, lms, a.Summary, string(ev), a.RunbookURL, string(lb), recorded,
				uint64(clampMilli(a.LastSeen.UnixMilli())))
		}
		if err := c.insertRows(ctx, &t); err != nil {
			return fmt.Errorf("store: writing alerts: %w", err)
		}
	}
	if len(b.Deliveries) > 0 {
		t := tableRows{table: "alert_deliveries",
			columns: "id, receiver, alert_version, round, first_seen, state, attempts, last_error, updated, updated_ms, version",
			cols: []any{&[]string{}, &[]string{}, &[]uint64{}, &[]uint32{}, &[]int64{}, &[]string{}, &[]uint32{}, &[]string{},
				&[]int64{}, &[]uint16{}, &[]uint64{}}}
		for i := range b.Deliveries {
			d := &b.Deliveries[i]
			fs, _ := chTime(d.FirstSeen)
			us, ums := chTime(d.Updated)
			t.add(d.ID, d.Receiver, uint64(clampMilli(d.Version.UnixMilli())), uint32(d.Round), fs, d.State.String(),
				uint32(d.Attempts), d.LastError, us, ums, d.Seq)
		}
		if err := c.insertRows(ctx, &t); err != nil {
			return fmt.Errorf("store: writing alert deliveries: %w", err)
		}
	}
	return nil
}

func parseDeliveryState(s string) alerting.DeliveryState {
	for _, st := range []alerting.DeliveryState{alerting.Pending, alerting.Delivered, alerting.Failed} {
		if st.String() == s {
			return st
		}
	}
	return 0
}

// Alerts returns the alerts open at some time in [from, to) (first seen before to,
// last seen at or after from), of detector unless it is empty, each in its latest
// version with the state of its newest delivery to each receiver, ordered by first
// seen. It first writes the history that waits in memory and in the spill, so it
// reflects every record taken before it; while ClickHouse fails it returns the error.
// A forensic query: it reads the alerts table, not the live path.
func (c *ClickHouse) Alerts(ctx context.Context, from, to time.Time, detector string) ([]AlertRecord, error) {
	// Candidates: ids with any version in the window. The latest version of each is
	// read with FINAL on the sorting key and checked against the window again.
	fromMs, toMs := uint64(clampMilli(from.UnixMilli())), uint64(clampMilli(to.UnixMilli()))
	ids := `SELECT DISTINCT id FROM alerts
WHERE toUInt64(first_seen) * 1000 + first_seen_ms < ? AND toUInt64(last_seen) * 1000 + last_seen_ms >= ?
  AND (? = '' OR detector = ?)`
	args := []any{toMs, fromMs, detector, detector}
	return c.readAlerts(ctx, ids, args, func(a *detectors.Alert) bool { return inWindow(a, from, to, detector) })
}

// AlertByID returns alert id in its latest version with its deliveries, as Alerts
// does, and whether the history has it.
func (c *ClickHouse) AlertByID(ctx context.Context, id string) (AlertRecord, bool, error) {
	recs, err := c.readAlerts(ctx, "SELECT ?", []any{id}, func(*detectors.Alert) bool { return true })
	if err != nil || len(recs) == 0 {
		return AlertRecord{}, false, err
	}
	return recs[0], true, nil
}

// readAlerts writes the history that waits, then reads the alerts whose ids the query
// ids (with args) selects, those keep accepts, with their deliveries.
func (c *ClickHouse) readAlerts(ctx context.Context, ids string, args []any, keep func(*detectors.Alert) bool) ([]AlertRecord, error) {
	if err := c.historyWritten(ctx); err != nil {
		return nil, err
	}
	rows, err := c.conn.Query(ctx, `SELECT id, detector, severity, key,
    toUInt64(first_seen) * 1000 + first_seen_ms, toUInt64(last_seen) * 1000 + last_seen_ms,
    summary, evidence, runbook_url, labels
FROM alerts FINAL WHERE id IN (`+ids+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("store: reading alerts: %w", err)
	}
	var alerts []detectors.Alert
	for rows.Next() {
		var a detectors.Alert
		var sev, ev, labels string
		var fs, ls uint64
		if err := rows.Scan(&a.ID, &a.Detector, &sev, &a.Key, &fs, &ls, &a.Summary, &ev, &a.RunbookURL, &labels); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: reading alerts: %w", err)
		}
		a.Severity, a.FirstSeen, a.LastSeen = detectors.Severity(sev), fromCHMilli(fs), fromCHMilli(ls)
		if err := json.Unmarshal([]byte(ev), &a.Evidence); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: alert %s: evidence: %w", a.ID, err)
		}
		if err := json.Unmarshal([]byte(labels), &a.Labels); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: alert %s: labels: %w", a.ID, err)
		}
		if keep(&a) {
			alerts = append(alerts, a)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: reading alerts: %w", err)
	}
	rows, err = c.conn.Query(ctx, `SELECT id, receiver, alert_version, round, state, attempts, last_error,
    toUInt64(updated) * 1000 + updated_ms, version
FROM alert_deliveries FINAL WHERE id IN (`+ids+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("store: reading alert deliveries: %w", err)
	}
	defer rows.Close()
	var ds []deliveryRow
	for rows.Next() {
		var d deliveryRow
		var version, updated uint64
		var round, attempts uint32
		var state string
		if err := rows.Scan(&d.ID, &d.Receiver, &version, &round, &state, &attempts, &d.LastError, &updated, &d.Seq); err != nil {
			return nil, fmt.Errorf("store: reading alert deliveries: %w", err)
		}
		d.Version, d.Round, d.State, d.Attempts, d.Updated = msTime(int64(version)), int(round), parseDeliveryState(state), int(attempts), fromCHMilli(updated)
		ds = append(ds, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: reading alert deliveries: %w", err)
	}
	return assemble(alerts, ds), nil
}
