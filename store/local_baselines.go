package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/gatewatch/gatewatch/detectors"
)

// The local store keeps baselines in buckets of its bbolt file: "baseline_keys" (key →
// first seen, events, countries), "baseline_routes" (route → rate, as of, peak, peak
// at), "baseline_clients" (client key → first seen, rate, as of, peak, peak at),
// "baseline_objects" (client and route → peak, peak at), "baseline_privileged" (key →
// first and last privileged request, events), all in the spill's record encoding
// (appendKeyBody, appendRouteBody, ...), and "baseline_meta" (traffic_since, and
// newest: the newest time any update mentioned, which dates the baselines' own
// retention). The buckets of the detectors added later are created by the first update
// that has something for them. bbolt keeps one version of each entry, so
// UpdateBaselines is a plain overwrite in one transaction, durable when it returns.
//
// So that a refresh reads what changed rather than every entry (LoadBaselinesSince),
// each update takes the next number of "baseline_changes" and notes there each entry
// it wrote, under that number (8 bytes, big-endian), the entry's kind (its index in
// baselineBuckets) and its name. Notes are only appended, which costs a write next to
// nothing: they land on the last page. Past maxNotes the oldest go, and meta's
// "notes_dropped" says up to which number, so that a load since before it reads every
// entry instead.

var (
	bucketBaselineKeys       = []byte("baseline_keys")
	bucketBaselineRoutes     = []byte("baseline_routes")
	bucketBaselineClients    = []byte("baseline_clients")
	bucketBaselineObjects    = []byte("baseline_objects")
	bucketBaselinePrivileged = []byte("baseline_privileged")
	bucketBaselineMeta       = []byte("baseline_meta")
	bucketBaselineChanges    = []byte("baseline_changes")

	// baselineBuckets are the buckets of baseline entries; an entry's kind in the
	// change log is its bucket's index here, so the order is fixed: append only.
	baselineBuckets = [][]byte{bucketBaselineKeys, bucketBaselineRoutes, bucketBaselineClients, bucketBaselineObjects, bucketBaselinePrivileged}

	metaTrafficSince = []byte("traffic_since")
	metaNewest       = []byte("newest")
	metaNotes        = []byte("notes")         // how many notes the change log holds
	metaNotesDropped = []byte("notes_dropped") // the number of the newest note dropped
)

// The kinds of baseline entries, their buckets' indexes in baselineBuckets.
const (
	kindKey byte = iota
	kindRoute
	kindClient
	kindObject
	kindPrivileged
)

// maxBaselineName is the longest name an entry may have: its name in the change log,
// after the number and the kind, must fit bbolt's key limit (32 KiB). Ingest never
// produces keys or routes anywhere near it.
const maxBaselineName = bolt.MaxKeySize - 9

// UpdateBaselines upserts u in one transaction and returns once it is on disk. Entries
// with an empty key or route are skipped (the detectors never learn one), and so are
// keys and routes longer than maxBaselineName.
func (l *Local) UpdateBaselines(_ context.Context, u detectors.Baselines) error {
	if emptyUpdate(&u) {
		return nil
	}
	err := l.db.Update(func(tx *bolt.Tx) error {
		log, err := openChangeLog(tx, l.maxNotes)
		if err != nil {
			return err
		}
		// bbolt keeps key and value slices until the commit: each gets its own bytes.
		if err := putAll(log, kindKey, u.Keys, func(k *detectors.KeyBaseline) ([]byte, []byte) {
			return []byte(k.Key), appendKeyBody(nil, k)
		}); err != nil {
			return err
		}
		if err := putAll(log, kindRoute, u.Routes, func(r *detectors.RouteBaseline) ([]byte, []byte) {
			return []byte(r.Route), appendRouteBody(nil, r)
		}); err != nil {
			return err
		}
		if err := putAll(log, kindClient, u.Clients, func(c *detectors.ClientBaseline) ([]byte, []byte) {
			return []byte(c.Key), appendClientBody(nil, c)
		}); err != nil {
			return err
		}
		if err := putAll(log, kindObject, u.Objects, func(o *detectors.ObjectBaseline) ([]byte, []byte) {
			if o.Client == "" {
				return nil, nil
			}
			return objectName(o), appendObjectBody(nil, o)
		}); err != nil {
			return err
		}
		if err := putAll(log, kindPrivileged, u.Privileged, func(p *detectors.PrivilegeBaseline) ([]byte, []byte) {
			return []byte(p.Key), appendPrivilegeBody(nil, p)
		}); err != nil {
			return err
		}
		meta := tx.Bucket(bucketBaselineMeta)
		if !u.TrafficSince.IsZero() {
			ms := u.TrafficSince.UnixMilli()
			if old, ok := metaTime(meta, metaTrafficSince); !ok || ms < old {
				if err := meta.Put(metaTrafficSince, binary.AppendVarint(nil, ms)); err != nil {
					return err
				}
			}
		}
		if n := newestSeen(&u); n != math.MinInt64 {
			if old, ok := metaTime(meta, metaNewest); !ok || n > old {
				if err := meta.Put(metaNewest, binary.AppendVarint(nil, n)); err != nil {
					return err
				}
			}
		}
		return log.close(meta)
	})
	if err != nil {
		return fmt.Errorf("store: writing baselines: %w", err)
	}
	return nil
}

// putAll writes the entries of list into the bucket of kind, creating it, and notes
// them in the change log; entry returns an entry's name and value, and an empty name
// for one to skip.
func putAll[T any](log *changeLog, kind byte, list []T, entry func(*T) (name, value []byte)) error {
	if len(list) == 0 {
		return nil
	}
	b, err := log.tx.CreateBucketIfNotExists(baselineBuckets[kind])
	if err != nil {
		return err
	}
	for i := range list {
		name, value := entry(&list[i])
		if len(name) == 0 || len(name) > maxBaselineName {
			continue
		}
		if err := b.Put(name, value); err != nil {
			return err
		}
		if err := log.note(kind, name); err != nil {
			return err
		}
	}
	return nil
}

// maxNotes bounds the change log. When a refresh finds more notes than this since its
// last, about as many as the entries a store of an engine's limits holds, a whole load
// costs it about as much anyway.
const maxNotes = 1 << 20

// changeLog is the change log of one write transaction (see the top of this file).
type changeLog struct {
	tx    *bolt.Tx
	notes *bolt.Bucket
	seq   []byte // the transaction's number
	n     int64  // notes written
	max   int64  // maxNotes
}

// openChangeLog opens the change log in tx and takes the next number for the notes tx
// writes.
func openChangeLog(tx *bolt.Tx, max int64) (*changeLog, error) {
	notes, err := tx.CreateBucketIfNotExists(bucketBaselineChanges)
	if err != nil {
		return nil, err
	}
	seq, err := notes.NextSequence()
	if err != nil {
		return nil, err
	}
	return &changeLog{tx: tx, notes: notes, seq: binary.BigEndian.AppendUint64(nil, seq), max: max}, nil
}

// note notes the entry kind and name under the transaction's number.
func (c *changeLog) note(kind byte, name []byte) error {
	c.n++
	return c.notes.Put(append(append(slices.Clip(c.seq), kind), name...), nil)
}

// close counts the notes written and, past maxNotes, drops the oldest down to three
// quarters of it, so that dropping happens once in many updates.
func (c *changeLog) close(meta *bolt.Bucket) error {
	if c.n == 0 {
		return nil
	}
	n, _ := metaTime(meta, metaNotes)
	n += c.n
	if n > c.max {
		var dropped []byte
		cur := c.notes.Cursor()
		for k, _ := cur.First(); k != nil && n > c.max*3/4; k, _ = cur.First() {
			dropped = append(dropped[:0], k[:8]...)
			if err := cur.Delete(); err != nil {
				return err
			}
			n--
		}
		if dropped != nil {
			if err := meta.Put(metaNotesDropped, binary.AppendVarint(nil, int64(binary.BigEndian.Uint64(dropped)))); err != nil {
				return err
			}
		}
	}
	return meta.Put(metaNotes, binary.AppendVarint(nil, n))
}

// readBucket reads every entry of kind into set; its bucket may not exist yet.
func readBucket(tx *bolt.Tx, kind byte, r *recordReader, set *detectors.RecentSet) error {
	b := tx.Bucket(baselineBuckets[kind])
	if b == nil {
		return nil
	}
	return b.ForEach(func(name, v []byte) error { return readEntry(kind, name, v, r, set) })
}

// getEntry reads the entry of kind named name into set, if the store holds it.
func getEntry(tx *bolt.Tx, kind byte, name []byte, r *recordReader, set *detectors.RecentSet) error {
	b := tx.Bucket(baselineBuckets[kind])
	if b == nil || len(name) == 0 || len(name) > maxBaselineName {
		return nil
	}
	if v := b.Get(name); v != nil {
		return readEntry(kind, name, v, r, set)
	}
	return nil
}

// readEntry decodes the entry of kind named name, value v, into set.
func readEntry(kind byte, name, v []byte, r *recordReader, set *detectors.RecentSet) error {
	r.data = v
	switch kind {
	case kindKey:
		kb := detectors.KeyBaseline{Key: string(name)}
		r.keyBody(&kb)
		set.AddKey(kb)
	case kindRoute:
		rb := detectors.RouteBaseline{Route: string(name)}
		r.localRoute(&rb)
		set.AddRoute(rb)
	case kindClient:
		c := detectors.ClientBaseline{Key: string(name)}
		r.clientBody(&c)
		set.AddClient(c)
	case kindObject:
		set.AddObject(r.localObject(name))
	case kindPrivileged:
		p := detectors.PrivilegeBaseline{Key: string(name)}
		r.privilegeBody(&p)
		set.AddPrivileged(p)
	}
	if r.err == nil && len(r.data) != 0 {
		r.fail("bytes after the entry")
	}
	if r.err != nil {
		return fmt.Errorf("%s %q: %w", baselineBuckets[kind], name, r.err)
	}
	return nil
}

// localRoute reads a route as Local stores it: routes written before they had peaks
// end after their as of.
func (r *recordReader) localRoute(rb *detectors.RouteBaseline) {
	r.routeBody(rb, true)
	if len(r.data) > 0 {
		rb.Peak = r.float("peak")
		rb.PeakAt = r.time("peak at")
	}
}

func metaTime(meta *bolt.Bucket, name []byte) (int64, bool) {
	v := meta.Get(name)
	if v == nil {
		return 0, false
	}
	ms, n := binary.Varint(v)
	return ms, n > 0
}

// LoadBaselines returns the most recent stored baselines, up to lim, sorted. It reads
// every entry but keeps no more than lim of each kind at any time.
func (l *Local) LoadBaselines(ctx context.Context, lim detectors.BaselineLimits) (detectors.Baselines, error) {
	b, _, err := l.LoadBaselinesSince(ctx, lim, 0)
	return b, err
}

var _ detectors.BaselineChanges = (*Local)(nil)

// LoadBaselinesSince is LoadBaselines restricted to the entries written since the load
// that returned since: those the change log notes past it, or every entry when the log
// dropped notes past since. Entries written before the store kept a change log have no
// note; a load since 0 reads them, and they are noted once written again. A pruned
// entry is not reported: the detectors forget it as the store did.
func (l *Local) LoadBaselinesSince(_ context.Context, lim detectors.BaselineLimits, since uint64) (detectors.Baselines, uint64, error) {
	set := detectors.NewRecentSet(lim)
	var trafficSince time.Time
	var next uint64
	err := l.db.View(func(tx *bolt.Tx) error {
		if ms, ok := metaTime(tx.Bucket(bucketBaselineMeta), metaTrafficSince); ok {
			trafficSince = msTime(ms)
		}
		r := recordReader{}
		notes := tx.Bucket(bucketBaselineChanges)
		if notes != nil {
			next = notes.Sequence()
		}
		dropped, _ := metaTime(tx.Bucket(bucketBaselineMeta), metaNotesDropped)
		if since == 0 || notes == nil || since < uint64(dropped) {
			for kind := range baselineBuckets {
				if err := readBucket(tx, byte(kind), &r, set); err != nil {
					return err
				}
			}
			return nil
		}
		// An entry written by several updates has a note from each: it is read once.
		seen := map[string]struct{}{}
		c := notes.Cursor()
		for k, _ := c.Seek(binary.BigEndian.AppendUint64(nil, since+1)); k != nil; k, _ = c.Next() {
			if len(k) < 10 || int(k[8]) >= len(baselineBuckets) {
				return fmt.Errorf("%s %q: not a note", bucketBaselineChanges, k)
			}
			if _, ok := seen[string(k[8:])]; ok {
				continue
			}
			seen[string(k[8:])] = struct{}{}
			if err := getEntry(tx, k[8], k[9:], &r, set); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return detectors.Baselines{}, 0, fmt.Errorf("store: loading baselines: %w", err)
	}
	out := set.Baselines()
	out.TrafficSince = trafficSince
	return out, next, nil
}

// LookupBaselines returns what the store holds of keys and routes, sorted: point
// reads, and a prefix scan of each key's objects.
func (l *Local) LookupBaselines(_ context.Context, keys, routes []string) (detectors.Baselines, error) {
	set := detectors.NewRecentSet(detectors.AllBaselines)
	err := l.db.View(func(tx *bolt.Tx) error {
		r := recordReader{}
		for _, k := range keys {
			for _, kind := range []byte{kindKey, kindClient, kindPrivileged} {
				if err := getEntry(tx, kind, []byte(k), &r, set); err != nil {
					return err
				}
			}
			if b := tx.Bucket(bucketBaselineObjects); b != nil {
				prefix := appendString(nil, k)
				c := b.Cursor()
				for name, v := c.Seek(prefix); name != nil && bytes.HasPrefix(name, prefix); name, v = c.Next() {
					if err := readEntry(kindObject, name, v, &r, set); err != nil {
						return err
					}
				}
			}
		}
		for _, rt := range routes {
			if err := getEntry(tx, kindRoute, []byte(rt), &r, set); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return detectors.Baselines{}, fmt.Errorf("store: looking up baselines: %w", err)
	}
	return set.Baselines(), nil
}

// localObject reads an object_enumeration entry named name, as Local stores it: the
// name is the length-prefixed client and the route.
func (r *recordReader) localObject(name []byte) detectors.ObjectBaseline {
	n := recordReader{data: name}
	o := detectors.ObjectBaseline{Client: string(n.bytes("client"))}
	o.Route = string(n.data)
	r.objectBody(&o)
	if n.err != nil {
		r.fail("object name")
	}
	return o
}

// pruneScan bounds the entries one pruning pass reads in a transaction, so the file is
// never locked for long.
const pruneScan = 50_000

// PruneBaselines drops what the detectors have forgotten, dated by the newest time
// the baselines know (an event time, as the detectors' own expiry uses, so a backlog
// read late or a replayed day forgets what the detectors forget): new_country's keys
// not seen within history, route and client rates and peaks that have not moved for
// three of their time constants, client and route peaks of object_enumeration older
// than three of theirs, privilege_anomaly's keys whose last privileged request is
// older than its history. It returns how many routes it dropped, and how many entries
// keyed by a client. Run calls it hourly.
func (l *Local) PruneBaselines(ctx context.Context) (keys, routes int, err error) {
	var newest int64
	var ok bool
	if err := l.db.View(func(tx *bolt.Tx) error {
		newest, ok = metaTime(tx.Bucket(bucketBaselineMeta), metaNewest)
		return nil
	}); err != nil || !ok {
		return 0, 0, err
	}
	s := l.settings
	last := func(read func(r *recordReader) int64) func([]byte) (int64, error) {
		return func(v []byte) (int64, error) {
			r := recordReader{data: v}
			t := read(&r)
			return t, r.err
		}
	}
	for _, p := range []struct {
		kind   byte
		cutoff int64
		last   func([]byte) (int64, error)
		n      *int
	}{
		{kindKey, newest - s.History.Milliseconds(), last(func(r *recordReader) int64 {
			var kb detectors.KeyBaseline
			r.keyBody(&kb)
			return keyLastSeen(&kb).UnixMilli()
		}), &keys},
		{kindRoute, newest - s.routeTTL(), last(func(r *recordReader) int64 {
			var rb detectors.RouteBaseline
			r.localRoute(&rb)
			return routeLast(&rb)
		}), &routes},
		{kindClient, newest - s.clientTTL(), last(func(r *recordReader) int64 {
			var c detectors.ClientBaseline
			r.clientBody(&c)
			return clientLast(&c)
		}), &keys},
		{kindObject, newest - s.objectTTL(), last(func(r *recordReader) int64 {
			var o detectors.ObjectBaseline
			r.objectBody(&o)
			return o.PeakAt.UnixMilli()
		}), &keys},
		{kindPrivileged, newest - s.PrivilegeHistory.Milliseconds(), last(func(r *recordReader) int64 {
			var pb detectors.PrivilegeBaseline
			r.privilegeBody(&pb)
			return pb.LastSeen.UnixMilli()
		}), &keys},
	} {
		n, err := l.prune(ctx, p.kind, p.cutoff, p.last)
		*p.n += n
		if err != nil {
			return keys, routes, err
		}
	}
	return keys, routes, nil
}

// prune deletes the entries of kind whose last time is before cutoff. It looks in a
// read transaction and deletes in a write transaction that checks each entry again, so
// an entry updated in between is kept.
func (l *Local) prune(ctx context.Context, kind byte, cutoff int64, last func([]byte) (int64, error)) (int, error) {
	bucket := baselineBuckets[kind]
	deleted := 0
	var resume []byte
	for {
		if err := ctx.Err(); err != nil {
			return deleted, err
		}
		var expired [][]byte
		var next []byte
		err := l.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			if b == nil {
				return nil
			}
			c := b.Cursor()
			k, v := c.First()
			if resume != nil {
				k, v = c.Seek(resume)
			}
			for n := 0; k != nil; k, v = c.Next() {
				if n++; n > pruneScan {
					next = bytes.Clone(k)
					return nil
				}
				t, err := last(v)
				if err != nil {
					return fmt.Errorf("%s %q: %w", bucket, k, err)
				}
				if t < cutoff {
					expired = append(expired, bytes.Clone(k))
				}
			}
			return nil
		})
		if err != nil {
			return deleted, fmt.Errorf("store: pruning baselines: %w", err)
		}
		if len(expired) > 0 {
			err = l.db.Update(func(tx *bolt.Tx) error {
				b := tx.Bucket(bucket)
				for _, k := range expired {
					v := b.Get(k)
					if v == nil {
						continue
					}
					if t, err := last(v); err != nil || t >= cutoff {
						continue
					}
					if err := b.Delete(k); err != nil {
						return err
					}
					deleted++
				}
				return nil
			})
			if err != nil {
				return deleted, fmt.Errorf("store: pruning baselines: %w", err)
			}
		}
		if next == nil {
			return deleted, nil
		}
		resume = next
	}
}

// BaselinesAsOf returns what the baselines were at t, for replay and forensics,
// rebuilt from the stored baselines and the archived events as well as they allow (see
// reconstructAsOf for what is exact and what is estimated). It scans the archive from
// t minus history (route rates: t minus five learning periods; peaks that came after t:
// three peak memories) to its end.
func (l *Local) BaselinesAsOf(ctx context.Context, t time.Time) (detectors.Baselines, error) {
	cur, err := l.LoadBaselines(ctx, detectors.AllBaselines)
	if err != nil {
		return detectors.Baselines{}, err
	}
	facts, err := l.archiveFacts(ctx, t, &cur)
	if err != nil {
		return detectors.Baselines{}, fmt.Errorf("store: baselines as of %s: %w", t.UTC().Format(time.RFC3339), err)
	}
	return reconstructAsOf(cur, facts, t), nil
}

type pairAcc struct {
	last  int64
	after uint64
}

// archiveFacts scans the archive from the earliest of lookFrom and the starts of the
// route and client spans to its end, in chunks of read transactions.
func (l *Local) archiveFacts(ctx context.Context, t time.Time, cur *detectors.Baselines) (archiveFacts, error) {
	s := l.settings
	tm := t.UnixMilli()
	tau := s.tau()
	oldest := int64(math.MaxInt64)
	if err := l.db.View(func(tx *bolt.Tx) error {
		if k, _ := tx.Bucket(bucketEvents).Cursor().First(); k != nil {
			oldest = int64(binary.BigEndian.Uint64(k))
		}
		return nil
	}); err != nil {
		return archiveFacts{}, err
	}
	f := archiveFacts{lookFrom: lookFrom(tm, s.History.Milliseconds(), oldest)}
	if oldest == math.MaxInt64 {
		return f, nil
	}
	spanFrom := floorDiv(tm-s.asOfSpan(), 60000) * 60000
	ctau := s.clientTau()
	clientFrom := floorDiv(tm-s.clientAsOfSpan(), 60000) * 60000
	pairs := map[string]*pairAcc{}
	routes := map[string]float64{}
	clients := map[string]float64{}
	// The peaks rebuilt, of the routes and client keys whose stored peak came after t;
	// the archive is read in time order.
	peakRoutes, peakClients := map[string]*peakFolder{}, map[string]*peakFolder{}
	pr, pc := peaksToRebuild(cur, tm)
	for _, r := range pr {
		peakRoutes[r] = newPeakFolder(s.Window, s.Hot, s.PeakMemory)
	}
	for _, k := range pc {
		peakClients[k] = newPeakFolder(s.ClientWindow, s.ClientHot, s.ClientPeakMemory)
	}
	peakFrom := floorDiv(tm-peakSpan(s.PeakMemory), 60000) * 60000
	clientPeakFrom := floorDiv(tm-peakSpan(s.ClientPeakMemory), 60000) * 60000
	var scratch []byte
	cursor := eventKey(nil, clampMilli(min(f.lookFrom, spanFrom, clientFrom, peakFrom, clientPeakFrom)), 0)
	for cursor != nil {
		if err := ctx.Err(); err != nil {
			return f, err
		}
		err := l.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketEvents).Cursor()
			k, v := c.Seek(cursor)
			cursor = nil
			for n := 0; k != nil; k, v = c.Next() {
				if n++; n > pruneScan {
					cursor = bytes.Clone(k)
					return nil
				}
				ms := int64(binary.BigEndian.Uint64(k))
				var r rawRecord
				if _, err := parseRecord(v, &r); err != nil {
					return fmt.Errorf("event %x: %w", k, err)
				}
				key, country, method, route := r.fields[1], r.fields[5], r.fields[6], r.fields[8]
				if ms >= f.lookFrom && len(key) > 0 && len(country) > 0 {
					scratch = append(binary.AppendUvarint(scratch[:0], uint64(len(key))), key...)
					scratch = append(scratch, country...)
					p := pairs[string(scratch)]
					if p == nil {
						p = &pairAcc{last: noEvent}
						pairs[string(scratch)] = p
					}
					if ms < tm {
						p.last = max(p.last, ms)
					} else {
						p.after++
					}
				}
				end := (floorDiv(ms, 60000) + 1) * 60000
				if end <= tm && len(route) > 0 {
					scratch = append(append(append(scratch[:0], method...), ' '), route...)
					if ms >= spanFrom {
						routes[string(scratch)] += routeWeight(tm, end, tau)
					}
					if pf := peakRoutes[string(scratch)]; pf != nil && ms >= peakFrom {
						pf.add(end-60000, 1)
					}
				}
				if end <= tm && len(key) > 0 {
					if ms >= clientFrom {
						clients[string(key)] += routeWeight(tm, end, ctau)
					}
					if pf := peakClients[string(key)]; pf != nil && ms >= clientPeakFrom {
						pf.add(end-60000, 1)
					}
				}
			}
			return nil
		})
		if err != nil {
			return f, fmt.Errorf("reading the archive: %w", err)
		}
	}
	for pk, p := range pairs {
		n, k := binary.Uvarint([]byte(pk))
		f.pairs = append(f.pairs, pairFact{key: pk[k : k+int(n)], country: pk[k+int(n):], lastBefore: p.last, after: p.after})
	}
	sortPairs(f.pairs)
	for r, w := range routes {
		f.routes = append(f.routes, detectors.RouteBaseline{Route: r, RatePerMinute: w, AsOf: msTime(tm)})
	}
	slices.SortFunc(f.routes, func(a, b detectors.RouteBaseline) int { return strings.Compare(a.Route, b.Route) })
	for k, w := range clients {
		f.clients = append(f.clients, detectors.ClientBaseline{Key: k, RatePerMinute: w})
	}
	slices.SortFunc(f.clients, func(a, b detectors.ClientBaseline) int { return strings.Compare(a.Key, b.Key) })
	f.routePeaks = peaksOf(peakRoutes, tm)
	f.clientPeaks = peaksOf(peakClients, tm)
	return f, nil
}

// peaksOf returns the peaks as of tm of the folders.
func peaksOf(folders map[string]*peakFolder, tm int64) map[string]peakFact {
	peaks := make(map[string]peakFact, len(folders))
	for k, f := range folders {
		peaks[k] = f.peakAsOf(tm)
	}
	return peaks
}
