// Package outbox is alerting's durable outbox: every delivery, from the moment its
// alert is accepted until it is delivered (and then for outbox.retention), in one bbolt
// file on local disk. It implements alerting.OutboxStore and passes
// alertingtest.RunOutboxSuite, crash-and-restart tests included. It lives on local
// disk whatever store the rest of gatewatch uses, because alerts must become durable,
// and be delivered, while ClickHouse is down.
package outbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatewatch/gatewatch/alerting"
	"github.com/gatewatch/gatewatch/detectors"
)

// Store is the durable outbox (an alerting.OutboxStore): one bbolt file, outbox.db,
// in a directory of its own on local disk.
//
// Buckets:
//
//	deliveries  (receiver, version, alert id, round) → state: state, queue seq,
//	            attempts, first failure, done, queued, last error
//	bodies      the same key → the alert as JSON, written once: an attempt's outcome
//	            rewrites only the small state record
//	queue       (receiver, seq) → deliveries key: each receiver's pending deliveries
//	            in the order they were queued; the bucket's sequence numbers them
//	delivered   (done, deliveries key) → nothing: what Prune walks, oldest first
//	depth       receiver → pending deliveries, kept in the same transactions
//	parked      receiver → parked (failed) deliveries, likewise
//
// Every key that a delivery adds sorts by time (the alert's last_seen, a sequence,
// the time of delivery), so the alerts of a burst land at the end of each bucket
// instead of in random pages: a commit writes a few pages per bucket, not one per
// alert, and the file grows at the speed of the data. Keying deliveries by alert id
// first would scatter a burst over the whole tree. The dedup is a point lookup of the
// exact key. Strings in keys are length-prefixed, so no key is a prefix of another's.
//
// Writes are group-committed: calls that arrive while a transaction commits wait and
// then share the next one (one fsync) instead of queueing for one each. A call alone
// commits at once; nothing waits for a batch to fill.
//
// The alerts of pending deliveries queued by this process are also kept decoded in
// memory (up to cacheSize), so that handing them to a receiver costs no JSON
// decoding; after a restart they are read from the file.
type Store struct {
	db     *bolt.DB
	log    *slog.Logger
	commit committer

	mu    sync.Mutex
	cache map[string]detectors.Alert // deliveries key → alert, while pending
}

// cacheSize bounds the decoded alerts kept in memory: a receiver that is down
// for a day must not hold a day of alerts in memory.
const cacheSize = 20_000

// Options are the runtime dependencies of a Store.
type Options struct {
	Logger *slog.Logger // nil: discard
}

var _ alerting.OutboxStore = (*Store)(nil)

var (
	bucketDeliveries = []byte("deliveries")
	bucketBodies     = []byte("bodies")
	bucketQueue      = []byte("queue")
	bucketDelivered  = []byte("delivered")
	bucketDepth      = []byte("depth")
	bucketParked     = []byte("parked") // added after the others: Open counts what older files hold
)

// File is the outbox's file name in its directory.
const File = "outbox.db"

// Open opens (or creates) the outbox in dir. The file is locked while open: a second
// gatewatch on the same directory fails here instead of delivering twice.
func Open(dir string, o Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("alerting: outbox: no directory")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("alerting: outbox: %w", err)
	}
	file := filepath.Join(dir, File)
	db, err := bolt.Open(file, 0o600, &bolt.Options{
		Timeout:      time.Second, // the file lock: another process has the outbox open
		FreelistType: bolt.FreelistMapType,
		// The free list is rebuilt at open instead of written at every commit:
		// commits are what the outbox does most.
		NoFreelistSync: true,
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("alerting: outbox: %s is in use by another process (a running gatewatch run or notify); "+
			"stop it, or run this with another alerting.outbox.dir", file)
	}
	if err != nil {
		return nil, fmt.Errorf("alerting: outbox: opening %s: %w", file, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketDeliveries, bucketBodies, bucketQueue, bucketDelivered, bucketDepth} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if tx.Bucket(bucketParked) != nil {
			return nil
		}
		// A file from before the parked counts: count them once.
		parked, err := tx.CreateBucket(bucketParked)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketDeliveries).ForEach(func(k, v []byte) error {
			r, _, ok := cutString(k)
			if !ok || len(v) < 2 {
				return errCorrupt
			}
			if alerting.DeliveryState(v[1]) == alerting.Failed {
				return addCount(parked, r, 1)
			}
			return nil
		})
	})
	if err != nil {
		_ = db.Close() // the create error is the one that matters
		return nil, fmt.Errorf("alerting: outbox: creating buckets in %s: %w", file, err)
	}
	ob := &Store{db: db, log: o.Logger.With("component", "alerting"), cache: map[string]detectors.Alert{}}
	ob.commit.db = db
	stats, err := ob.Stats(context.Background())
	if err != nil {
		_ = db.Close() // the read error is the one that matters
		return nil, err
	}
	pending, parked := 0, 0
	for _, st := range stats {
		pending, parked = pending+st.Pending, parked+st.Parked
	}
	// Once per start: what a restart has to deliver, and what waits for an operator.
	ob.log.Info("outbox opened", "path", file, "pending", pending, "parked", parked)
	return ob, nil
}

// Close closes the file. Call it after the Router using the outbox has stopped.
func (o *Store) Close() error {
	if err := o.db.Close(); err != nil {
		return fmt.Errorf("alerting: outbox: close: %w", err)
	}
	return nil
}

// Keys and records.

// recordVersion is the first byte of every state record, so a later gatewatch can
// read what this one wrote. Version 1 lacked the queued time; it is still read.
const (
	recordVersion   = 2
	recordVersionV1 = 1
)

// appendString appends the length-prefixed string s.
func appendString(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// deliveryKey encodes a deliveries key: (receiver, version, id, round). The version's
// sign bit is flipped so that negative versions sort before positive ones.
func deliveryKey(k *alerting.DeliveryKey) []byte {
	b := make([]byte, 0, 16+len(k.Receiver)+len(k.ID))
	b = appendString(b, k.Receiver)
	b = binary.BigEndian.AppendUint64(b, uint64(k.Version)^(1<<63))
	b = appendString(b, k.ID)
	return binary.BigEndian.AppendUint32(b, uint32(k.Round))
}

// versionKey is where the deliveries of receiver with version at or after
// version start.
func versionKey(receiver string, version int64) []byte {
	b := appendString(nil, receiver)
	return binary.BigEndian.AppendUint64(b, uint64(version)^(1<<63))
}

// parseDeliveryKey decodes a deliveries key.
func parseDeliveryKey(b []byte) (alerting.DeliveryKey, bool) {
	var k alerting.DeliveryKey
	r, rest, ok := cutString(b)
	if !ok || len(rest) < 8 {
		return k, false
	}
	version := int64(binary.BigEndian.Uint64(rest) ^ (1 << 63))
	id, rest, ok := cutString(rest[8:])
	if !ok || len(rest) != 4 {
		return k, false
	}
	return alerting.DeliveryKey{Receiver: r, ID: id, Version: version, Round: int(binary.BigEndian.Uint32(rest))}, true
}

func cutString(b []byte) (string, []byte, bool) {
	if len(b) < 2 {
		return "", nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return "", nil, false
	}
	return string(b[2 : 2+n]), b[2+n:], true
}

// queueKey is (receiver, seq).
func queueKey(receiver string, seq uint64) []byte {
	b := make([]byte, 0, 2+len(receiver)+8)
	b = appendString(b, receiver)
	return binary.BigEndian.AppendUint64(b, seq)
}

// stateRecord is a delivery's state record.
type stateRecord struct {
	state        alerting.DeliveryState
	seq          uint64
	attempts     uint32
	firstFailure int64 // Unix ms; math.MinInt64: none
	done         int64 // Unix ms; math.MinInt64: not done
	queued       int64 // Unix ms; math.MinInt64: unknown (written by version 1)
	lastError    string
}

func millis(t time.Time) int64 {
	if t.IsZero() {
		return math.MinInt64
	}
	return t.UnixMilli()
}

func timeOf(ms int64) time.Time {
	if ms == math.MinInt64 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

func stateOf(d *alerting.Delivery) stateRecord {
	return stateRecord{
		state:        d.State,
		seq:          d.Seq,
		attempts:     uint32(max(d.Attempts, 0)),
		firstFailure: millis(d.FirstFailure),
		done:         millis(d.Done),
		queued:       millis(d.Queued),
		lastError:    d.LastError,
	}
}

// stateRecordSize is the fixed part of a state record; version 1's lacked queued.
const (
	stateRecordSize   = 38
	stateRecordSizeV1 = 30
)

func encodeState(st *stateRecord) []byte {
	b := make([]byte, 0, stateRecordSize+binary.MaxVarintLen64+len(st.lastError))
	b = append(b, recordVersion, byte(st.state))
	b = binary.BigEndian.AppendUint64(b, st.seq)
	b = binary.BigEndian.AppendUint32(b, st.attempts)
	b = binary.BigEndian.AppendUint64(b, uint64(st.firstFailure))
	b = binary.BigEndian.AppendUint64(b, uint64(st.done))
	b = binary.BigEndian.AppendUint64(b, uint64(st.queued))
	b = binary.AppendUvarint(b, uint64(len(st.lastError)))
	return append(b, st.lastError...)
}

var errCorrupt = errors.New("alerting: outbox: corrupt record")

func decodeState(v []byte) (stateRecord, error) {
	var st stateRecord
	size := stateRecordSize
	switch {
	case len(v) == 0:
		return st, errCorrupt
	case v[0] == recordVersionV1:
		size = stateRecordSizeV1
	case v[0] != recordVersion:
		return st, errCorrupt
	}
	if len(v) < size+1 {
		return st, errCorrupt
	}
	st.state = alerting.DeliveryState(v[1])
	st.seq = binary.BigEndian.Uint64(v[2:])
	st.attempts = binary.BigEndian.Uint32(v[10:])
	st.firstFailure = int64(binary.BigEndian.Uint64(v[14:]))
	st.done = int64(binary.BigEndian.Uint64(v[22:]))
	st.queued = math.MinInt64
	if size == stateRecordSize {
		st.queued = int64(binary.BigEndian.Uint64(v[30:]))
	}
	n, w := binary.Uvarint(v[size:])
	if w <= 0 || uint64(len(v)-size-w) != n {
		return st, errCorrupt
	}
	st.lastError = string(v[size+w:])
	return st, nil
}

// readDelivery rebuilds the delivery under key from its state and, from the
// cache or the bodies bucket, its alert.
func (o *Store) readDelivery(tx *bolt.Tx, key, state []byte) (alerting.Delivery, error) {
	k, ok := parseDeliveryKey(key)
	if !ok {
		return alerting.Delivery{}, errCorrupt
	}
	st, err := decodeState(state)
	if err != nil {
		return alerting.Delivery{}, err
	}
	d := alerting.Delivery{
		DeliveryKey:  k,
		State:        st.state,
		Seq:          st.seq,
		Queued:       timeOf(st.queued),
		Attempts:     int(st.attempts),
		FirstFailure: timeOf(st.firstFailure),
		Done:         timeOf(st.done),
		LastError:    st.lastError,
	}
	o.mu.Lock()
	a, cached := o.cache[string(key)]
	o.mu.Unlock()
	if cached {
		d.Alert = a
		d.Alert.Labels = maps.Clone(a.Labels)
		return d, nil
	}
	body := tx.Bucket(bucketBodies).Get(key)
	if body == nil {
		return alerting.Delivery{}, fmt.Errorf("%w: delivery %s/%s without its alert", errCorrupt, k.Receiver, k.ID)
	}
	if err := json.Unmarshal(body, &d.Alert); err != nil {
		return alerting.Delivery{}, fmt.Errorf("alerting: outbox: alert of %s/%s: %w", k.Receiver, k.ID, err)
	}
	return d, nil
}

// setFill tells bbolt how the buckets grow: at their end, so a page that
// splits stays full instead of half empty. State records keep some room, because an
// attempt's outcome makes them grow in place.
func setFill(tx *bolt.Tx) {
	tx.Bucket(bucketDeliveries).FillPercent = 0.9
	tx.Bucket(bucketBodies).FillPercent = 1
	tx.Bucket(bucketQueue).FillPercent = 1
	tx.Bucket(bucketDelivered).FillPercent = 1
}

// addCount adds delta to receiver's count in b (depth or parked); a count that
// reaches 0 is deleted, so the buckets hold only receivers with something in them.
func addCount(b *bolt.Bucket, receiver string, delta int64) error {
	if delta == 0 {
		return nil
	}
	var n int64
	if v := b.Get([]byte(receiver)); len(v) == 8 {
		n = int64(binary.BigEndian.Uint64(v))
	}
	n += delta
	if n <= 0 {
		return b.Delete([]byte(receiver))
	}
	return b.Put([]byte(receiver), binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// Enqueue adds, in one transaction, each delivery whose key the outbox does not hold.
func (o *Store) Enqueue(ctx context.Context, ds []alerting.Delivery) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Encode outside the transaction, which the other writers wait for. The
	// Router puts the deliveries of one alert next to each other; they share the
	// alert, so its JSON is encoded once.
	bodies := make([][]byte, len(ds))
	for i := range ds {
		if i > 0 && ds[i].ID == ds[i-1].ID && ds[i].Version == ds[i-1].Version && ds[i].Round == ds[i-1].Round {
			bodies[i] = bodies[i-1]
			continue
		}
		// MarshalJSON directly: json.Marshal would validate and compact its output
		// once more, which costs as much again.
		b, err := ds[i].Alert.MarshalJSON()
		if err != nil {
			return fmt.Errorf("alerting: outbox: encode alert %s: %w", ds[i].ID, err)
		}
		bodies[i] = b
	}
	keys := make([][]byte, len(ds))
	err := o.commit.do(func(tx *bolt.Tx) error {
		dels, bods := tx.Bucket(bucketDeliveries), tx.Bucket(bucketBodies)
		queue, depth := tx.Bucket(bucketQueue), tx.Bucket(bucketDepth)
		setFill(tx)
		added := map[string]int64{}
		for i := range ds {
			d := &ds[i]
			d.Seq = 0 // this function may run again after a failed group commit
			key := deliveryKey(&d.DeliveryKey)
			if dels.Get(key) != nil {
				continue
			}
			seq, err := queue.NextSequence()
			if err != nil {
				return err
			}
			st := stateOf(d)
			st.state, st.seq = alerting.Pending, seq
			if err := dels.Put(key, encodeState(&st)); err != nil {
				return err
			}
			if err := bods.Put(key, bodies[i]); err != nil {
				return err
			}
			if err := queue.Put(queueKey(d.Receiver, seq), key); err != nil {
				return err
			}
			d.Seq, keys[i] = seq, key
			added[d.Receiver]++
		}
		for r, n := range added {
			if err := addCount(depth, r, n); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("alerting: outbox: enqueue: %w", err)
	}
	o.mu.Lock()
	for i := range ds {
		if ds[i].Seq != 0 && len(o.cache) < cacheSize {
			o.cache[string(keys[i])] = ds[i].Alert
		}
	}
	o.mu.Unlock()
	return nil
}

// Pending returns the oldest pending deliveries of receiver.
func (o *Store) Pending(ctx context.Context, receiver string, limit int) ([]alerting.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []alerting.Delivery
	err := o.db.View(func(tx *bolt.Tx) error {
		dels := tx.Bucket(bucketDeliveries)
		prefix := appendString(nil, receiver)
		c := tx.Bucket(bucketQueue).Cursor()
		for k, key := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(out) < limit; k, key = c.Next() {
			st := dels.Get(key)
			if st == nil {
				return fmt.Errorf("%w: queue entry without its delivery", errCorrupt)
			}
			d, err := o.readDelivery(tx, key, st)
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("alerting: outbox: pending: %w", err)
	}
	return out, nil
}

// Update records the outcome of attempts, in one transaction. Only the small state
// records are rewritten.
func (o *Store) Update(ctx context.Context, ds []alerting.Delivery) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var left [][]byte // keys that left the queue, to drop from the cache
	err := o.commit.do(func(tx *bolt.Tx) error {
		left = left[:0]
		dels, queue, delivered := tx.Bucket(bucketDeliveries), tx.Bucket(bucketQueue), tx.Bucket(bucketDelivered)
		setFill(tx)
		moved, parked := map[string]int64{}, map[string]int64{}
		for i := range ds {
			d := &ds[i]
			key := deliveryKey(&d.DeliveryKey)
			old := dels.Get(key)
			if old == nil {
				continue
			}
			was, err := decodeState(old)
			if err != nil {
				return err
			}
			st := stateOf(d)
			st.seq = was.seq
			switch {
			case was.state == alerting.Pending && st.state != alerting.Pending:
				if err := queue.Delete(queueKey(d.Receiver, was.seq)); err != nil {
					return err
				}
				moved[d.Receiver]--
				left = append(left, key)
			case was.state != alerting.Pending && st.state == alerting.Pending:
				if st.seq, err = queue.NextSequence(); err != nil {
					return err
				}
				if err := queue.Put(queueKey(d.Receiver, st.seq), key); err != nil {
					return err
				}
				moved[d.Receiver]++
			}
			switch {
			case was.state == alerting.Failed && st.state != alerting.Failed:
				parked[d.Receiver]--
			case was.state != alerting.Failed && st.state == alerting.Failed:
				parked[d.Receiver]++
			}
			if was.state == alerting.Delivered {
				if err := delivered.Delete(doneKey(was.done, key)); err != nil {
					return err
				}
			}
			if st.state == alerting.Delivered {
				if err := delivered.Put(doneKey(st.done, key), nil); err != nil {
					return err
				}
			}
			if err := dels.Put(key, encodeState(&st)); err != nil {
				return err
			}
		}
		for b, counts := range map[string]map[string]int64{string(bucketDepth): moved, string(bucketParked): parked} {
			for r, n := range counts {
				if err := addCount(tx.Bucket([]byte(b)), r, n); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("alerting: outbox: update: %w", err)
	}
	o.mu.Lock()
	for _, k := range left {
		delete(o.cache, string(k))
	}
	o.mu.Unlock()
	return nil
}

// doneKey is (done, deliveries key), so Prune walks the oldest first.
func doneKey(done int64, key []byte) []byte {
	b := make([]byte, 0, 8+len(key))
	b = binary.BigEndian.AppendUint64(b, uint64(done)^(1<<63))
	return append(b, key...)
}

// Lookup returns the delivery stored under k.
func (o *Store) Lookup(ctx context.Context, k alerting.DeliveryKey) (alerting.Delivery, bool, error) {
	if err := ctx.Err(); err != nil {
		return alerting.Delivery{}, false, err
	}
	var d alerting.Delivery
	var found bool
	err := o.db.View(func(tx *bolt.Tx) error {
		key := deliveryKey(&k)
		st := tx.Bucket(bucketDeliveries).Get(key)
		if st == nil {
			return nil
		}
		var err error
		d, err = o.readDelivery(tx, key, st)
		found = err == nil
		return err
	})
	if err != nil {
		return alerting.Delivery{}, false, fmt.Errorf("alerting: outbox: lookup: %w", err)
	}
	return d, found, nil
}

// Parked returns failed deliveries of receiver, ordered by key. It reads the state of
// every delivery of the receiver that the retention keeps: an operator's question,
// not a hot path.
func (o *Store) Parked(ctx context.Context, receiver string, limit int) ([]alerting.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []alerting.Delivery
	err := o.db.View(func(tx *bolt.Tx) error {
		prefix := appendString(nil, receiver)
		c := tx.Bucket(bucketDeliveries).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(out) < limit; k, v = c.Next() {
			if len(v) < 2 || alerting.DeliveryState(v[1]) != alerting.Failed {
				continue
			}
			d, err := o.readDelivery(tx, k, v)
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("alerting: outbox: parked: %w", err)
	}
	return out, nil
}

// Stats returns where each receiver's queue stands: the counts kept in the depth
// and parked buckets, and the queued time of the head of each queue, one seek per
// receiver with pending deliveries. Cheap enough for every scrape.
func (o *Store) Stats(ctx context.Context) (map[string]alerting.QueueStats, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := map[string]alerting.QueueStats{}
	err := o.db.View(func(tx *bolt.Tx) error {
		counts := func(bucket []byte, set func(st *alerting.QueueStats, n int)) error {
			return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
				if len(v) != 8 {
					return errCorrupt
				}
				st := out[string(k)]
				set(&st, int(binary.BigEndian.Uint64(v)))
				out[string(k)] = st
				return nil
			})
		}
		if err := counts(bucketDepth, func(st *alerting.QueueStats, n int) { st.Pending = n }); err != nil {
			return err
		}
		if err := counts(bucketParked, func(st *alerting.QueueStats, n int) { st.Parked = n }); err != nil {
			return err
		}
		dels, c := tx.Bucket(bucketDeliveries), tx.Bucket(bucketQueue).Cursor()
		for r, st := range out {
			if st.Pending == 0 {
				continue
			}
			prefix := appendString(nil, r)
			k, key := c.Seek(prefix)
			if k == nil || !bytes.HasPrefix(k, prefix) {
				return fmt.Errorf("%w: receiver %s has pending deliveries but no queue", errCorrupt, r)
			}
			head, err := decodeState(dels.Get(key))
			if err != nil {
				return err
			}
			st.OldestPending = timeOf(head.queued)
			out[r] = st
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("alerting: outbox: stats: %w", err)
	}
	return out, nil
}

// Recent returns the newest delivery of every receiver and alert id whose version
// is at or after since. Deliveries are sorted by version within a receiver, so it
// reads only the recent ones (Run calls it at start).
func (o *Store) Recent(ctx context.Context, since time.Time) ([]alerting.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []alerting.Delivery
	err := o.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDeliveries).Cursor()
		k, _ := c.First()
		for k != nil {
			receiver, _, ok := cutString(k)
			if !ok {
				return errCorrupt
			}
			prefix := appendString(nil, receiver)
			newest := map[string][]byte{} // alert id → key of its newest delivery
			var ids []string
			for k, _ = c.Seek(versionKey(receiver, since.UnixMilli())); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				dk, ok := parseDeliveryKey(k)
				if !ok {
					return errCorrupt
				}
				if _, seen := newest[dk.ID]; !seen {
					ids = append(ids, dk.ID)
				}
				newest[dk.ID] = bytes.Clone(k) // keys ascend: the last one is the newest
			}
			for _, id := range ids {
				key := newest[id]
				d, err := o.readDelivery(tx, key, tx.Bucket(bucketDeliveries).Get(key))
				if err != nil {
					return err
				}
				out = append(out, d)
			}
			// k is the first key of the next receiver, or nil.
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("alerting: outbox: recent: %w", err)
	}
	return out, nil
}

// pruneChunk bounds one prune transaction, so that a large backlog of old
// deliveries does not hold the writers up for long.
const pruneChunk = 10_000

// Prune forgets deliveries delivered before before.
func (o *Store) Prune(ctx context.Context, before time.Time) (int, error) {
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n := 0
		err := o.commit.do(func(tx *bolt.Tx) error {
			n = 0
			dels, bods, delivered := tx.Bucket(bucketDeliveries), tx.Bucket(bucketBodies), tx.Bucket(bucketDelivered)
			end := binary.BigEndian.AppendUint64(nil, uint64(millis(before))^(1<<63))
			var keys [][]byte
			c := delivered.Cursor()
			for k, _ := c.First(); k != nil && bytes.Compare(k[:8], end) < 0 && len(keys) < pruneChunk; k, _ = c.Next() {
				keys = append(keys, bytes.Clone(k))
			}
			// Delete after the walk: deleting under a bbolt cursor can skip keys.
			for _, k := range keys {
				if err := delivered.Delete(k); err != nil {
					return err
				}
				if err := dels.Delete(k[8:]); err != nil {
					return err
				}
				if err := bods.Delete(k[8:]); err != nil {
					return err
				}
			}
			n = len(keys)
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("alerting: outbox: prune: %w", err)
		}
		total += n
		if n < pruneChunk {
			return total, nil
		}
	}
}

// committer group-commits writes. The first writer to arrive leads: it takes
// every write queued so far (its own included) into one transaction, commits it, and
// hands the lead to the first writer that queued meanwhile. So writers that arrive
// during a commit share the next one, and a writer alone commits at once.
type committer struct {
	db    *bolt.DB
	mu    sync.Mutex
	queue []*pendingWrite
	busy  bool
}

type pendingWrite struct {
	fn       func(*bolt.Tx) error
	err      error
	finished bool          // set before wake is signalled
	wake     chan struct{} // finished, or handed the lead
}

func (c *committer) do(fn func(*bolt.Tx) error) error {
	w := &pendingWrite{fn: fn, wake: make(chan struct{}, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, w)
	lead := !c.busy
	c.busy = true
	c.mu.Unlock()
	if !lead {
		<-w.wake
		if w.finished {
			return w.err
		}
	}
	c.mu.Lock()
	batch := c.queue
	c.queue = nil
	c.mu.Unlock()
	c.run(batch)
	c.mu.Lock()
	if len(c.queue) > 0 {
		c.queue[0].wake <- struct{}{} // not finished: it leads the next commit
	} else {
		c.busy = false
	}
	c.mu.Unlock()
	return w.err
}

// run commits batch in one transaction. When one write's function fails, the
// transaction is rolled back and each write runs in a transaction of its own, so one
// write's error is not every write's (bbolt's DB.Batch does the same).
func (c *committer) run(batch []*pendingWrite) {
	var failed *pendingWrite
	err := c.db.Update(func(tx *bolt.Tx) error {
		for _, w := range batch {
			if err := w.fn(tx); err != nil {
				failed = w
				return err
			}
		}
		return nil
	})
	if err != nil && failed != nil && len(batch) > 1 {
		for _, w := range batch {
			w.err = c.db.Update(w.fn)
		}
	} else {
		for _, w := range batch {
			w.err = err
		}
	}
	for _, w := range batch {
		w.finished = true
		w.wake <- struct{}{}
	}
}
