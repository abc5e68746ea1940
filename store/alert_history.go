package store

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// Alert history: the alerts the Router accepted and where their deliveries stand, kept
// next to the event archive for analysts. Both stores implement alerting.History;
// Alerts reads the history back.
//
// An alert is kept once per ID, in its latest version: the one with the latest
// LastSeen (the detectors re-emit an incident under its ID with a later LastSeen).
// A delivery state is kept once per alert ID and receiver: that of the newest delivery
// (the largest alert version, then reminder round) and, for one delivery, the state
// recorded last.

var (
	_ alerting.History = (*ClickHouse)(nil)
	_ alerting.History = (*Local)(nil)
)

// AlertRecord is one alert of the history, in its latest version, with the state of
// its delivery to each receiver, by receiver name.
type AlertRecord struct {
	Alert      detectors.Alert
	Deliveries []DeliveryRecord
}

// DeliveryRecord is where the newest delivery of an alert to one receiver stands.
type DeliveryRecord struct {
	Receiver  string
	Version   time.Time // the LastSeen of the alert version delivered
	Round     int       // 0: the first delivery of that version; n: the n-th reminder
	State     alerting.DeliveryState
	Attempts  int
	LastError string
	Updated   time.Time // when it was delivered or parked; when recorded while pending
}

// deliveryRow is a DeliveryRecord as the stores keep it, with the alert it belongs to.
type deliveryRow struct {
	ID        string    `json:"id"`
	FirstSeen time.Time `json:"first_seen"` // the alert's, for ClickHouse's partitioning
	DeliveryRecord
	Seq uint64 `json:"seq"` // orders records of one delivery: the later wins
}

func newDeliveryRow(d *alerting.Delivery, now time.Time, seq uint64) deliveryRow {
	updated := d.Done
	if updated.IsZero() {
		updated = now
	}
	return deliveryRow{
		ID:        d.ID,
		FirstSeen: d.Alert.FirstSeen.UTC(),
		DeliveryRecord: DeliveryRecord{
			Receiver:  d.Receiver,
			Version:   msTime(d.Version),
			Round:     d.Round,
			State:     d.State,
			Attempts:  d.Attempts,
			LastError: d.LastError,
			Updated:   updated.UTC(),
		},
		Seq: seq,
	}
}

// newer reports whether r supersedes o (the same alert ID and receiver).
func (r *deliveryRow) newer(o *deliveryRow) bool {
	if c := r.Version.Compare(o.Version); c != 0 {
		return c > 0
	}
	if r.Round != o.Round {
		return r.Round > o.Round
	}
	return r.Seq >= o.Seq
}

// inWindow reports whether a was open at some time in [from, to) and, unless detector
// is empty, comes from detector.
func inWindow(a *detectors.Alert, from, to time.Time, detector string) bool {
	return a.FirstSeen.Before(to) && !a.LastSeen.Before(from) && (detector == "" || a.Detector == detector)
}

// assemble joins alerts and delivery rows into records, the newest delivery per
// receiver, ordered by FirstSeen, then ID.
func assemble(alerts []detectors.Alert, rows []deliveryRow) []AlertRecord {
	newest := map[string]map[string]deliveryRow{}
	for i := range rows {
		r := &rows[i]
		byRcv := newest[r.ID]
		if byRcv == nil {
			byRcv = map[string]deliveryRow{}
			newest[r.ID] = byRcv
		}
		if old, ok := byRcv[r.Receiver]; !ok || r.newer(&old) {
			byRcv[r.Receiver] = *r
		}
	}
	out := make([]AlertRecord, 0, len(alerts))
	for _, a := range alerts {
		rec := AlertRecord{Alert: a}
		for _, r := range newest[a.ID] {
			rec.Deliveries = append(rec.Deliveries, r.DeliveryRecord)
		}
		slices.SortFunc(rec.Deliveries, func(x, y DeliveryRecord) int { return strings.Compare(x.Receiver, y.Receiver) })
		out = append(out, rec)
	}
	slices.SortFunc(out, func(x, y AlertRecord) int {
		return cmp.Or(x.Alert.FirstSeen.Compare(y.Alert.FirstSeen), strings.Compare(x.Alert.ID, y.Alert.ID))
	})
	return out
}

// The Local store keeps the history in three buckets: "alerts" holds each alert's
// latest version under its ID, as JSON; "alert_recorded" when (wall clock, Unix ms) it
// was last recorded; "alert_deliveries" holds each receiver's newest delivery under
// (ID length, ID, receiver), as JSON. Writes are one transaction per call, durable when
// they return. Run deletes the alerts neither recorded nor delivered within the
// retention, with their deliveries. History ages by when gatewatch wrote it, not by the
// alert's event time: alerts that notify sends from a replay of last quarter's logs are
// as new to the history as live ones.
var (
	bucketAlerts          = []byte("alerts")
	bucketAlertRecorded   = []byte("alert_recorded")
	bucketAlertDeliveries = []byte("alert_deliveries")
)

func alertDeliveryKey(dst []byte, id, receiver string) []byte {
	return append(keyPrefix(dst, id), receiver...)
}

type historyBucketSet struct{ alerts, recorded, deliveries *bolt.Bucket }

// historyBuckets returns the history's buckets, created in a writable transaction; in
// a read-only one they are nil until the first write.
func historyBuckets(tx *bolt.Tx) (historyBucketSet, error) {
	if !tx.Writable() {
		return historyBucketSet{tx.Bucket(bucketAlerts), tx.Bucket(bucketAlertRecorded), tx.Bucket(bucketAlertDeliveries)}, nil
	}
	var hb historyBucketSet
	for _, b := range []struct {
		name []byte
		dst  **bolt.Bucket
	}{{bucketAlerts, &hb.alerts}, {bucketAlertRecorded, &hb.recorded}, {bucketAlertDeliveries, &hb.deliveries}} {
		var err error
		if *b.dst, err = tx.CreateBucketIfNotExists(b.name); err != nil {
			return hb, err
		}
	}
	return hb, nil
}

// RecordAlerts keeps each alert unless a later version of it is kept already, and
// notes that it was recorded now.
func (l *Local) RecordAlerts(_ context.Context, alerts []detectors.Alert) error {
	if len(alerts) == 0 {
		return nil
	}
	now := binary.BigEndian.AppendUint64(nil, uint64(l.now().UnixMilli()))
	err := l.db.Update(func(tx *bolt.Tx) error {
		hb, err := historyBuckets(tx)
		if err != nil {
			return err
		}
		b := hb.alerts
		for i := range alerts {
			a := &alerts[i]
			if err := hb.recorded.Put([]byte(a.ID), now); err != nil {
				return err
			}
			if old := b.Get([]byte(a.ID)); old != nil {
				var kept detectors.Alert
				if err := json.Unmarshal(old, &kept); err == nil && kept.LastSeen.After(a.LastSeen) {
					continue
				}
			}
			v, err := json.Marshal(a)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(a.ID), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: recording alerts: %w", err)
	}
	return nil
}

// RecordDeliveries keeps each delivery's state unless a newer delivery of its alert
// to its receiver is kept already.
func (l *Local) RecordDeliveries(_ context.Context, ds []alerting.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	now := l.now()
	err := l.db.Update(func(tx *bolt.Tx) error {
		hb, err := historyBuckets(tx)
		if err != nil {
			return err
		}
		b := hb.deliveries
		var k []byte
		for i := range ds {
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			row := newDeliveryRow(&ds[i], now, seq)
			k = alertDeliveryKey(k[:0], row.ID, row.Receiver)
			if old := b.Get(k); old != nil {
				var kept deliveryRow
				if err := json.Unmarshal(old, &kept); err == nil && !row.newer(&kept) {
					continue
				}
			}
			v, err := json.Marshal(&row)
			if err != nil {
				return err
			}
			if err := b.Put(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: recording deliveries: %w", err)
	}
	return nil
}

// Alerts returns the alerts open at some time in [from, to) (first seen before to,
// last seen at or after from), of detector unless it is empty, each in its latest
// version with the state of its newest delivery to each receiver, ordered by first
// seen. It reads the whole history: a forensic query, not one for the live path.
func (l *Local) Alerts(ctx context.Context, from, to time.Time, detector string) ([]AlertRecord, error) {
	var alerts []detectors.Alert
	var rows []deliveryRow
	err := l.db.View(func(tx *bolt.Tx) error {
		hb, _ := historyBuckets(tx)
		ab, db := hb.alerts, hb.deliveries
		if ab == nil {
			return nil
		}
		err := ab.ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			var a detectors.Alert
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("alert %q: %w", k, err)
			}
			if !inWindow(&a, from, to, detector) {
				return nil
			}
			alerts = append(alerts, a)
			var err error
			rows, err = appendDeliveries(rows, db, a.ID)
			return err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: reading alerts: %w", err)
	}
	return assemble(alerts, rows), nil
}

// AlertByID returns alert id in its latest version with its deliveries, and whether
// the history has it.
func (l *Local) AlertByID(_ context.Context, id string) (AlertRecord, bool, error) {
	var rec AlertRecord
	var rows []deliveryRow
	found := false
	err := l.db.View(func(tx *bolt.Tx) error {
		hb, _ := historyBuckets(tx)
		if hb.alerts == nil {
			return nil
		}
		v := hb.alerts.Get([]byte(id))
		if v == nil {
			return nil
		}
		found = true
		if err := json.Unmarshal(v, &rec.Alert); err != nil {
			return fmt.Errorf("alert %q: %w", id, err)
		}
		var err error
		rows, err = appendDeliveries(rows, hb.deliveries, id)
		return err
	})
	if err != nil || !found {
		if err != nil {
			err = fmt.Errorf("store: reading alert %s: %w", id, err)
		}
		return AlertRecord{}, false, err
	}
	return assemble([]detectors.Alert{rec.Alert}, rows)[0], true, nil
}

// deleteExpiredAlerts deletes the alerts that were neither recorded nor delivered
// since now minus the retention, with their deliveries, and returns how many alerts.
// An alert kept before recording times were (none noted) is noted as recorded now.
func (l *Local) deleteExpiredAlerts(ctx context.Context, now time.Time) (int, error) {
	if l.retention <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-l.retention)
	n := 0
	err := l.db.Update(func(tx *bolt.Tx) error {
		hb, err := historyBuckets(tx)
		if err != nil {
			return err
		}
		var expired, unnoted, dkeys [][]byte
		err = hb.alerts.ForEach(func(k, _ []byte) error {
			v := hb.recorded.Get(k)
			switch {
			case len(v) != 8:
				unnoted = append(unnoted, bytes.Clone(k))
			case !time.UnixMilli(int64(binary.BigEndian.Uint64(v))).Before(cutoff):
			case deliveredSince(hb.deliveries, k, cutoff):
			default:
				expired = append(expired, bytes.Clone(k))
			}
			return ctx.Err()
		})
		if err != nil {
			return err
		}
		noted := binary.BigEndian.AppendUint64(nil, uint64(now.UnixMilli()))
		for _, id := range unnoted {
			if err := hb.recorded.Put(id, noted); err != nil {
				return err
			}
		}
		// Deleting under a live cursor skips entries in bbolt, so collect, then delete.
		for _, id := range expired {
			prefix := keyPrefix(nil, string(id))
			c := hb.deliveries.Cursor()
			for dk, _ := c.Seek(prefix); dk != nil && bytes.HasPrefix(dk, prefix); dk, _ = c.Next() {
				dkeys = append(dkeys, bytes.Clone(dk))
			}
		}
		for _, k := range dkeys {
			if err := hb.deliveries.Delete(k); err != nil {
				return err
			}
		}
		for _, id := range expired {
			if err := hb.alerts.Delete(id); err != nil {
				return err
			}
			if err := hb.recorded.Delete(id); err != nil {
				return err
			}
		}
		n = len(expired)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("store: deleting expired alerts: %w", err)
	}
	return n, nil
}

// deliveredSince reports whether a delivery of alert id was updated at or after cutoff.
// An undecodable delivery counts as recent: it is left for a human.
func deliveredSince(deliveries *bolt.Bucket, id []byte, cutoff time.Time) bool {
	prefix := keyPrefix(nil, string(id))
	c := deliveries.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var r deliveryRow
		if err := json.Unmarshal(v, &r); err != nil || !r.Updated.Before(cutoff) {
			return true
		}
	}
	return false
}

// encodeHistory and decodeHistory are a spilled history batch's segment data.
func encodeHistory(h *historyBatch) ([]byte, error) { return json.Marshal(h) }

func decodeHistory(data []byte) (*historyBatch, error) {
	var h historyBatch
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("%w: alert history: %v", errCorrupt, err)
	}
	return &h, nil
}

// historyBatch is alert history waiting for ClickHouse: in memory, or spilled.
type historyBatch struct {
	Alerts     []detectors.Alert `json:"alerts,omitempty"`
	Deliveries []deliveryRow     `json:"deliveries,omitempty"`
}

func (h *historyBatch) len() int { return len(h.Alerts) + len(h.Deliveries) }

// appendDeliveries appends the delivery rows of alert id, from the deliveries bucket b.
func appendDeliveries(rows []deliveryRow, b *bolt.Bucket, id string) ([]deliveryRow, error) {
	c := b.Cursor()
	prefix := keyPrefix(nil, id)
	for dk, dv := c.Seek(prefix); dk != nil && bytes.HasPrefix(dk, prefix); dk, dv = c.Next() {
		var r deliveryRow
		if err := json.Unmarshal(dv, &r); err != nil {
			return rows, fmt.Errorf("delivery %q: %w", dk, err)
		}
		rows = append(rows, r)
	}
	return rows, nil
}
