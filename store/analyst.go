package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatewatch/gatewatch/alerting"
)

// What analysts decide while gatewatch runs: silences and acknowledgements (both
// stores implement alerting.SilenceStore and alerting.AckStore), and the audit log of
// every change made through the console or from Slack. These are written one at a
// time, by people, and each write returns once it is durable: a silence the console
// said was made must survive a crash.

var (
	_ alerting.SilenceStore = (*Local)(nil)
	_ alerting.AckStore     = (*Local)(nil)
	_ alerting.SilenceStore = (*ClickHouse)(nil)
	_ alerting.AckStore     = (*ClickHouse)(nil)
)

// An AuditEntry is one change made through the console or Slack.
type AuditEntry struct {
	At     time.Time `json:"at"`
	Who    string    `json:"who"`    // a console user, "token", "slack:<user id>"
	Action string    `json:"action"` // silence.create, silence.expire, ack, deliveries.requeue, login...
	Object string    `json:"object"` // what it acted on: a silence id, an alert id, a receiver
	Detail string    `json:"detail"` // in words: the matcher and expiry, the count requeued
}

// maxAuditRead bounds what Audit returns.
const maxAuditRead = 10_000

// The Local store keeps them in three buckets: "silences" (id → the record as JSON,
// latest Updated wins), "acks" (alert id → the acknowledgement as JSON, the first
// stands) and "audit" ((time ns, sequence) → the entry as JSON).
var (
	bucketSilences = []byte("silences")
	bucketAcks     = []byte("acks")
	bucketAudit    = []byte("audit")
)

// LoadSilences returns every silence record.
func (l *Local) LoadSilences(ctx context.Context) ([]alerting.SilenceRecord, error) {
	var out []alerting.SilenceRecord
	err := l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSilences)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r alerting.SilenceRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("silence %q: %w", k, err)
			}
			out = append(out, r)
			return ctx.Err()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: loading silences: %w", err)
	}
	return out, nil
}

// SaveSilence keeps r unless a later version of it is kept.
func (l *Local) SaveSilence(_ context.Context, r alerting.SilenceRecord) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketSilences)
		if err != nil {
			return err
		}
		if old := b.Get([]byte(r.ID)); old != nil {
			var kept alerting.SilenceRecord
			if json.Unmarshal(old, &kept) == nil && kept.Updated.After(r.Updated) {
				return nil
			}
		}
		v, err := json.Marshal(&r)
		if err != nil {
			return err
		}
		return b.Put([]byte(r.ID), v)
	})
	if err != nil {
		return fmt.Errorf("store: saving silence %s: %w", r.ID, err)
	}
	return nil
}

// LoadAcks returns the acknowledgements made at or after since.
func (l *Local) LoadAcks(ctx context.Context, since time.Time) ([]alerting.Ack, error) {
	var out []alerting.Ack
	err := l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAcks)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var a alerting.Ack
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("acknowledgement %q: %w", k, err)
			}
			if !a.At.Before(since) {
				out = append(out, a)
			}
			return ctx.Err()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("store: loading acknowledgements: %w", err)
	}
	return out, nil
}

// SaveAck keeps a unless the alert has an acknowledgement already.
func (l *Local) SaveAck(_ context.Context, a alerting.Ack) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketAcks)
		if err != nil {
			return err
		}
		if b.Get([]byte(a.ID)) != nil {
			return nil
		}
		v, err := json.Marshal(&a)
		if err != nil {
			return err
		}
		return b.Put([]byte(a.ID), v)
	})
	if err != nil {
		return fmt.Errorf("store: saving acknowledgement of %s: %w", a.ID, err)
	}
	return nil
}

// RecordAudit appends e to the audit log.
func (l *Local) RecordAudit(_ context.Context, e AuditEntry) error {
	err := l.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketAudit)
		if err != nil {
			return err
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		v, err := json.Marshal(&e)
		if err != nil {
			return err
		}
		k := binary.BigEndian.AppendUint64(nil, uint64(max(e.At.UnixNano(), 0)))
		return b.Put(binary.BigEndian.AppendUint64(k, seq), v)
	})
	if err != nil {
		return fmt.Errorf("store: writing the audit log: %w", err)
	}
	return nil
}

// Audit returns the newest limit entries of the audit log (at most 10,000), newest
// first.
func (l *Local) Audit(ctx context.Context, limit int) ([]AuditEntry, error) {
	limit = min(max(limit, 0), maxAuditRead)
	var out []AuditEntry
	err := l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAudit)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Last(); k != nil && len(out) < limit; k, v = c.Prev() {
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("audit entry %x: %w", k, err)
			}
			out = append(out, e)
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: reading the audit log: %w", err)
	}
	return out, nil
}

// LoadSilences returns every silence record, the latest version of each.
func (c *ClickHouse) LoadSilences(ctx context.Context) ([]alerting.SilenceRecord, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	rows, err := c.conn.Query(ctx, "SELECT argMax(record, updated) FROM silences GROUP BY id")
	if err != nil {
		return nil, fmt.Errorf("store: loading silences: %w", err)
	}
	defer rows.Close()
	var out []alerting.SilenceRecord
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("store: loading silences: %w", err)
		}
		var r alerting.SilenceRecord
		if err := json.Unmarshal([]byte(s), &r); err != nil {
			return nil, fmt.Errorf("store: silence record: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: loading silences: %w", err)
	}
	return out, nil
}

// SaveSilence inserts r as a version of its record and returns once ClickHouse took it.
func (c *ClickHouse) SaveSilence(ctx context.Context, r alerting.SilenceRecord) error {
	v, err := json.Marshal(&r)
	if err != nil {
		return fmt.Errorf("store: saving silence %s: %w", r.ID, err)
	}
	t := tableRows{table: "silences", columns: "id, record, updated", cols: []any{&[]string{}, &[]string{}, &[]uint64{}}}
	t.add(r.ID, string(v), uint64(max(r.Updated.UnixNano(), 0)))
	return c.insertNow(ctx, &t, "saving silence "+r.ID)
}

// LoadAcks returns the first acknowledgement of each alert made at or after since.
func (c *ClickHouse) LoadAcks(ctx context.Context, since time.Time) ([]alerting.Ack, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	rows, err := c.conn.Query(ctx, `SELECT id, argMin(by, at_ns), argMin(via, at_ns), min(at_ns) AS first
FROM acks GROUP BY id HAVING first >= ?`, uint64(max(since.UnixNano(), 0)))
	if err != nil {
		return nil, fmt.Errorf("store: loading acknowledgements: %w", err)
	}
	defer rows.Close()
	var out []alerting.Ack
	for rows.Next() {
		var a alerting.Ack
		var ns uint64
		if err := rows.Scan(&a.ID, &a.By, &a.Via, &ns); err != nil {
			return nil, fmt.Errorf("store: loading acknowledgements: %w", err)
		}
		a.At = time.Unix(0, int64(ns)).UTC()
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: loading acknowledgements: %w", err)
	}
	return out, nil
}

// SaveAck inserts a; when the alert has an earlier acknowledgement, LoadAcks keeps that.
func (c *ClickHouse) SaveAck(ctx context.Context, a alerting.Ack) error {
	t := tableRows{table: "acks", columns: "id, by, via, at_ns", cols: []any{&[]string{}, &[]string{}, &[]string{}, &[]uint64{}}}
	t.add(a.ID, a.By, a.Via, uint64(max(a.At.UnixNano(), 0)))
	return c.insertNow(ctx, &t, "saving acknowledgement of "+a.ID)
}

// RecordAudit appends e to the audit log.
func (c *ClickHouse) RecordAudit(ctx context.Context, e AuditEntry) error {
	t := tableRows{table: "audit_log", columns: "at, at_ns, who, action, object, detail",
		cols: []any{&[]int64{}, &[]uint64{}, &[]string{}, &[]string{}, &[]string{}, &[]string{}}}
	at, _ := chTime(e.At)
	t.add(at, uint64(max(e.At.UnixNano(), 0)), e.Who, e.Action, e.Object, e.Detail)
	return c.insertNow(ctx, &t, "writing the audit log")
}

// Audit returns the newest limit entries of the audit log (at most 10,000), newest first.
func (c *ClickHouse) Audit(ctx context.Context, limit int) ([]AuditEntry, error) {
	limit = min(max(limit, 0), maxAuditRead)
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	rows, err := c.conn.Query(ctx, "SELECT at_ns, who, action, object, detail FROM audit_log ORDER BY at DESC, at_ns DESC LIMIT ?", uint64(limit))
	if err != nil {
		return nil, fmt.Errorf("store: reading the audit log: %w", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var ns uint64
		if err := rows.Scan(&ns, &e.Who, &e.Action, &e.Object, &e.Detail); err != nil {
			return nil, fmt.Errorf("store: reading the audit log: %w", err)
		}
		e.At = time.Unix(0, int64(ns)).UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: reading the audit log: %w", err)
	}
	slices.SortStableFunc(out, func(a, b AuditEntry) int { return b.At.Compare(a.At) })
	return out, nil
}

// insertNow writes t within write_timeout: a person waits for it.
func (c *ClickHouse) insertNow(ctx context.Context, t *tableRows, what string) error {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
	defer cancel()
	if err := c.insertRows(ctx, t); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		return fmt.Errorf("store: %s: %w", what, err)
	}
	return nil
}
