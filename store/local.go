package store

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/gatewatch/gatewatch/ingest"
)

// LocalOptions are the runtime dependencies of a Local store.
type LocalOptions struct {
	Logger     *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // the archive's metrics; nil: a registry of its own
	Now        func() time.Time      // nil: time.Now; dates the retention
	// Baselines are the detector settings behind the stored baselines: they date
	// the baselines' retention and guide BaselinesAsOf; zero fields: the detectors
	// defaults.
	Baselines BaselineSettings
}

// Local is the embedded store, one bbolt file (gatewatch.db) under data_dir, for a
// gatewatch without ClickHouse. It archives events for replay and forensics and keeps
// them for the configured retention, and it keeps the detectors' baselines (see
// local_baselines.go).
//
// Events live in the "events" bucket under (time in Unix ms, sequence), both
// big-endian, so a time range is one cursor walk and events of one millisecond keep
// the order they were archived in. "events_by_key" holds an empty entry per event
// under (key, time, sequence) for its client key and, when different, its token
// fingerprint: reading one key's events is a walk over that key's entries, in time
// order, with no filter over the rest of the archive. Values use the spill's record
// encoding (see appendRecord).
//
// ArchiveEvents buffers up to archiveBuffer events and writes them in one transaction,
// in the background; Sync, Flush, a read and Close write what is waiting, after the
// write under way, so events are durable once Sync returns (the pipeline calls it
// before it commits their offsets). The file is locked while open; a second gatewatch
// on the same data_dir fails to open it.
type Local struct {
	db        *bolt.DB
	log       *slog.Logger
	now       func() time.Time
	retention time.Duration
	settings  BaselineSettings // local_baselines.go
	maxNotes  int64            // the change log's bound, maxNotes but in tests

	// The archive is written in transactions of up to archiveBuffer events, or at the
	// next Sync, Flush or read: one fsync'd transaction per Kafka batch held the live
	// pipeline to the disk's fsync rate. A full buffer is written by a goroutine of its
	// own while ArchiveEvents goes on filling the next, so the engine does not wait for
	// bbolt. writeMu is held by the write under way: writes go one at a time, each
	// taking what is waiting, so the archive keeps arrival order.
	m       *archiveMetrics
	archMu  sync.Mutex // guards archBuf, writing and spare
	archBuf []ingest.Event
	writing int            // events in the write under way
	spare   []ingest.Event // a written buffer, for reuse
	writeMu sync.Mutex
}

// archiveBuffer is how many events ArchiveEvents keeps before it writes them: a few
// megabytes, written in about a tenth of a second.
const archiveBuffer = 16384

var (
	bucketEvents = []byte("events")
	bucketByKey  = []byte("events_by_key")
)

// localFile is the store's file name under data_dir.
const localFile = "gatewatch.db"

// LocalPath returns the file of the embedded store cfg names; whether it exists says
// whether an embedded store was ever opened there.
func LocalPath(cfg Config) string {
	dir := cfg.DataDir
	if dir == "" {
		dir = DefaultDataDir
	}
	return filepath.Join(dir, localFile)
}

// NewLocal checks cfg and opens (or creates) the store under cfg.DataDir. It starts
// no goroutine; Run keeps the retention.
func NewLocal(cfg Config, o LocalOptions) (*Local, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	file := filepath.Join(cfg.DataDir, localFile)
	db, err := bolt.Open(file, 0o640, &bolt.Options{
		Timeout:      time.Second, // the file lock: another process has the store open
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("store: opening %s: %w", file, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketEvents, bucketByKey, bucketBaselineKeys, bucketBaselineRoutes, bucketBaselineMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: preparing %s: %w", file, err)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	return &Local{db: db, log: o.Logger.With("component", "store"), now: o.Now, retention: cfg.Retention,
		settings: o.Baselines.withDefaults(), maxNotes: maxNotes, m: newArchiveMetrics(o.Registerer)}, nil
}

// eventKey is an events bucket key: time in Unix ms, then the sequence.
func eventKey(dst []byte, msec int64, seq uint64) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(msec))
	return binary.BigEndian.AppendUint64(dst, seq)
}

// keyPrefix is the events_by_key prefix of key: its length, so that no key's entries
// run into a longer key's, then its bytes.
func keyPrefix(dst []byte, key string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(key)))
	return append(dst, key...)
}

// ArchiveEvents takes evs into the archive; they are on disk once archiveBuffer events
// are waiting (written in the background), or after the next Sync or Flush. Readers
// see them at once. When writes fall behind by another archiveBuffer events, it writes
// first, so the caller waits instead of the buffer growing; if that write fails (a
// full disk), it takes none of evs and returns ErrBufferFull with the cause.
func (l *Local) ArchiveEvents(_ context.Context, evs []ingest.Event) error {
	if len(evs) == 0 {
		return nil
	}
	l.archMu.Lock()
	if len(l.archBuf)+l.writing >= 2*archiveBuffer {
		l.archMu.Unlock()
		if err := l.writeArchive(); err != nil {
			l.m.events.WithLabelValues(resultRejected).Add(float64(len(evs)))
			return fmt.Errorf("%w: %w", ErrBufferFull, err)
		}
		l.archMu.Lock()
	}
	l.archBuf = append(l.archBuf, evs...)
	n := len(l.archBuf)
	l.m.buffered.Set(float64(n + l.writing))
	l.archMu.Unlock()
	if n >= archiveBuffer && l.writeMu.TryLock() {
		go func() {
			defer l.writeMu.Unlock()
			if err := l.writeWaiting(); err != nil {
				// The events wait for the next write; Sync reports it, and holds
				// the commits back.
				l.log.Warn("writing the archive failed; the events wait for the next write", "err", err)
			}
		}()
	}
	return nil
}

// writeArchive writes the waiting events, after the write under way.
func (l *Local) writeArchive() error {
	l.writeMu.Lock()
	defer l.writeMu.Unlock()
	return l.writeWaiting()
}

// writeWaiting writes the events waiting in one transaction; the caller holds writeMu.
// On failure they wait again, in front of those that came meanwhile.
func (l *Local) writeWaiting() error {
	l.archMu.Lock()
	evs := l.archBuf
	l.archBuf, l.spare, l.writing = l.spare[:0], nil, len(evs)
	l.archMu.Unlock()
	start := time.Now()
	err := l.writeEvents(evs)
	l.archMu.Lock()
	defer l.archMu.Unlock()
	l.writing = 0
	if err != nil {
		l.m.insertErrors.Inc()
		l.archBuf = append(evs, l.archBuf...)
		return err
	}
	if len(evs) > 0 {
		l.m.insertDuration.Observe(time.Since(start).Seconds())
		l.m.events.WithLabelValues(resultWritten).Add(float64(len(evs)))
		l.m.buffered.Set(float64(len(l.archBuf)))
	}
	clear(evs) // the events' strings hold their batches' memory
	l.spare = evs[:0]
	return nil
}

// writeEvents archives evs in one transaction.
func (l *Local) writeEvents(evs []ingest.Event) error {
	if len(evs) == 0 {
		return nil
	}
	// Puts go in key order. bbolt splits a node only when the transaction commits, so
	// until then a leaf takes every key put into it, and a key put in front of others
	// moves them all: put in arrival order, all of a client's index entries of the
	// transaction land in one leaf, each in front of those of the clients after it,
	// which made the puts quadratic. Ordered by time (stably: the sequence still
	// follows arrival within a millisecond), each event's key is the largest yet.
	msecs := make([]int64, len(evs))
	order := make([]int32, len(evs))
	for i := range evs {
		msecs[i], order[i] = clampMilli(evs[i].Time.UnixMilli()), int32(i)
	}
	if !slices.IsSorted(msecs) {
		slices.SortStableFunc(order, func(a, b int32) int { return cmp.Compare(msecs[a], msecs[b]) })
	}
	err := l.db.Update(func(tx *bolt.Tx) error {
		events, byKey := tx.Bucket(bucketEvents), tx.Bucket(bucketByKey)
		events.FillPercent = 0.9 // keys only grow at the end while time moves forward
		// bbolt keeps the key and value slices until the transaction commits, so each
		// one gets its own bytes: an append-only arena, never written behind a slice
		// handed out (a full arena moves on to a new array, leaving the old intact).
		arena := make([]byte, 0, len(evs)*320)
		carve := func(start int) []byte { return arena[start:len(arena):len(arena)] }
		index := make([][]byte, 0, 2*len(evs))
		indexAs := func(key string, k []byte) {
			start := len(arena)
			arena = append(keyPrefix(arena, key), k...)
			index = append(index, carve(start))
		}
		for _, i := range order {
			ev := evs[i]
			msec := msecs[i]
			ev.Time = time.UnixMilli(msec) // the time the key files it under
			seq, err := events.NextSequence()
			if err != nil {
				return err
			}
			start := len(arena)
			arena = eventKey(arena, msec, seq)
			k := carve(start)
			start = len(arena)
			arena = appendRecord(arena, &ev)
			if err := events.Put(k, carve(start)); err != nil {
				return err
			}
			if ev.ClientKey != "" {
				indexAs(ev.ClientKey, k)
			}
			if ev.TokenFP != "" && ev.TokenFP != ev.ClientKey {
				indexAs(ev.TokenFP, k)
			}
		}
		slices.SortFunc(index, bytes.Compare)
		for _, k := range index {
			if err := byKey.Put(k, nil); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: archiving %d events: %w", len(evs), err)
	}
	return nil
}

// Flush writes the waiting archive events.
func (l *Local) Flush(context.Context) error { return l.writeArchive() }

// Ping returns nil: the embedded store is a file this process holds open.
func (l *Local) Ping(context.Context) error { return nil }

// Sync writes the waiting archive events: a committed transaction is on disk.
func (l *Local) Sync(context.Context) error { return l.writeArchive() }

// readChunk bounds the events read in one read transaction. A bbolt read transaction
// that stays open while the caller works would stall a writer that must grow the file,
// so ReadEvents reads a chunk, closes the transaction, then yields.
const readChunk = 1024

// ReadEvents yields the archived events with from <= time < to, in time order (archive
// order within a millisecond); a non-empty key keeps the events whose client_key or
// token_fp is key. On failure it yields one zero Event with the error and stops.
func (l *Local) ReadEvents(ctx context.Context, from, to time.Time, key string) iter.Seq2[ingest.Event, error] {
	return func(yield func(ingest.Event, error) bool) {
		fromMs, toMs := clampMilli(ceilMilli(from)), clampMilli(ceilMilli(to))
		if fromMs >= toMs {
			return
		}
		if err := l.writeArchive(); err != nil { // readers see every event archived
			yield(ingest.Event{}, fmt.Errorf("store: reading the archive: %w", err))
			return
		}
		var prefix []byte
		if key != "" {
			prefix = keyPrefix(nil, key)
		}
		cursor := eventKey(nil, fromMs, 0) // the first event key still to read
		end := eventKey(nil, toMs, 0)
		batch := make([]ingest.Event, 0, readChunk)
		for {
			if err := ctx.Err(); err != nil {
				yield(ingest.Event{}, fmt.Errorf("store: reading the archive: %w", err))
				return
			}
			batch = batch[:0]
			var next []byte
			err := l.db.View(func(tx *bolt.Tx) error {
				var err error
				batch, next, err = readEventsChunk(tx, prefix, cursor, end, batch)
				return err
			})
			if err != nil {
				yield(ingest.Event{}, fmt.Errorf("store: reading the archive: %w", err))
				return
			}
			for _, ev := range batch {
				if !yield(ev, nil) {
					return
				}
			}
			if next == nil {
				return
			}
			cursor = next
		}
	}
}

// readEventsChunk appends up to readChunk events with keys in [cursor, end) to out,
// through the key index when prefix is set, and returns the key to resume at, or nil
// when the range is done.
func readEventsChunk(tx *bolt.Tx, prefix, cursor, end []byte, out []ingest.Event) ([]ingest.Event, []byte, error) {
	events := tx.Bucket(bucketEvents)
	add := func(k, v []byte) error {
		var ev ingest.Event
		if err := decodeEvent(v, &ev); err != nil {
			return fmt.Errorf("event %x: %w", k, err)
		}
		out = append(out, ev)
		return nil
	}
	if prefix == nil {
		c := events.Cursor()
		for k, v := c.Seek(cursor); k != nil && bytes.Compare(k, end) < 0; k, v = c.Next() {
			if len(out) == readChunk {
				return out, bytes.Clone(k), nil
			}
			if err := add(k, v); err != nil {
				return out, nil, err
			}
		}
		return out, nil, nil
	}
	c := tx.Bucket(bucketByKey).Cursor()
	seek := append(bytes.Clone(prefix), cursor...)
	for ik, _ := c.Seek(seek); ik != nil && bytes.HasPrefix(ik, prefix); ik, _ = c.Next() {
		k := ik[len(prefix):]
		if bytes.Compare(k, end) >= 0 {
			break
		}
		if len(out) == readChunk {
			return out, bytes.Clone(k), nil
		}
		v := events.Get(k)
		if v == nil {
			return out, nil, fmt.Errorf("index entry %x has no event", ik)
		}
		if err := add(k, v); err != nil {
			return out, nil, err
		}
	}
	return out, nil, nil
}

// decodeEvent fills ev from one record, copying its strings out of bbolt's memory,
// which is only valid during the transaction.
func decodeEvent(v []byte, ev *ingest.Event) error {
	var r rawRecord
	rest, err := parseRecord(v, &r)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%w: %d bytes after the record", errCorrupt, len(rest))
	}
	f := r.fields
	*ev = ingest.Event{
		Time:   time.UnixMilli(r.msec).UTC(),
		Source: string(f[0]), ClientKey: string(f[1]), TokenFP: string(f[2]), Device: string(f[3]),
		ClientIP: string(f[4]), Country: string(f[5]), Method: string(f[6]), Host: string(f[7]),
		Route: string(f[8]), Path: string(f[9]), Status: int(r.status), Action: string(f[10]),
		RuleID: string(f[11]), UserAgent: string(f[12]), RequestID: string(f[13]),
	}
	return nil
}

// Run keeps the retention until ctx ends: at once and then hourly, it deletes expired
// events and alerts (unless the retention is 0) and prunes the baselines
// (PruneBaselines). It returns nil when ctx ends.
func (l *Local) Run(ctx context.Context) error {
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		n, err := l.DeleteExpired(ctx, l.now())
		if err != nil && ctx.Err() == nil {
			l.log.Warn("archive retention pass failed", "err", err)
		}
		if n > 0 {
			l.log.Info("deleted expired archive events", "events", n)
		}
		n, err = l.deleteExpiredAlerts(ctx, l.now())
		if err != nil && ctx.Err() == nil {
			l.log.Warn("alert history retention pass failed", "err", err)
		}
		if n > 0 {
			l.log.Info("deleted expired alerts from the history", "alerts", n)
		}
		keys, routes, err := l.PruneBaselines(ctx)
		if err != nil && ctx.Err() == nil {
			l.log.Warn("baseline retention pass failed", "err", err)
		}
		if keys+routes > 0 {
			l.log.Info("dropped baselines not seen within their retention", "keys", keys, "routes", routes)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// deleteChunk bounds the events one retention transaction deletes, so the file lock is
// never held for long and a pass can stop between chunks.
const deleteChunk = 10_000

// DeleteExpired deletes the events older than the retention at now, with their index
// entries, and returns how many it deleted. Run calls it hourly.
func (l *Local) DeleteExpired(ctx context.Context, now time.Time) (int, error) {
	if l.retention <= 0 {
		return 0, nil
	}
	end := eventKey(nil, now.Add(-l.retention).UnixMilli(), 0)
	total := 0
	for ctx.Err() == nil {
		n := 0
		err := l.db.Update(func(tx *bolt.Tx) error {
			events, byKey := tx.Bucket(bucketEvents), tx.Bucket(bucketByKey)
			type expired struct{ k, clientKey, tokenFP []byte }
			var batch []expired
			c := events.Cursor()
			for k, v := c.First(); k != nil && bytes.Compare(k, end) < 0 && len(batch) < deleteChunk; k, v = c.Next() {
				var r rawRecord
				if _, err := parseRecord(v, &r); err != nil {
					return fmt.Errorf("event %x: %w", k, err)
				}
				batch = append(batch, expired{bytes.Clone(k), bytes.Clone(r.fields[1]), bytes.Clone(r.fields[2])})
			}
			// Deleting under a live cursor skips entries in bbolt, so collect, then delete.
			var ik []byte
			for _, e := range batch {
				for _, key := range [][]byte{e.clientKey, e.tokenFP} {
					if len(key) == 0 {
						continue
					}
					ik = append(keyPrefix(ik[:0], string(key)), e.k...)
					if err := byKey.Delete(ik); err != nil {
						return err
					}
				}
				if err := events.Delete(e.k); err != nil {
					return err
				}
			}
			n = len(batch)
			return nil
		})
		total += n
		if err != nil {
			return total, fmt.Errorf("store: deleting expired events: %w", err)
		}
		if n < deleteChunk {
			return total, nil
		}
	}
	return total, ctx.Err()
}

// Close closes the store file.
func (l *Local) Close(context.Context) error {
	werr := l.writeArchive()
	if errors.Is(werr, bolterrors.ErrDatabaseNotOpen) {
		werr = nil // closed before
	}
	if err := l.db.Close(); err != nil && !errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return errors.Join(werr, fmt.Errorf("store: %w", err))
	}
	return werr
}
