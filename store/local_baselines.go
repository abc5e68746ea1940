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

// The local store keeps baselines in three buckets of its bbolt file:
// "baseline_keys" (key → first seen, events, countries), "baseline_routes" (route →
// rate, as of), both in the spill's record encoding (appendKeyBody, appendRouteBody),
// and "baseline_meta" (traffic_since, and newest: the newest time any update
// mentioned, which dates the baselines' own retention). bbolt keeps one version of each
// entry, so UpdateBaselines is a plain overwrite in one transaction, durable when it
// returns.

var (
	bucketBaselineKeys   = []byte("baseline_keys")
	bucketBaselineRoutes = []byte("baseline_routes")
	bucketBaselineMeta   = []byte("baseline_meta")

	metaTrafficSince = []byte("traffic_since")
	metaNewest       = []byte("newest")
)

// UpdateBaselines upserts u in one transaction and returns once it is on disk. Entries
// with an empty key or route are skipped (the detectors never learn one), and so are
// keys and routes longer than bbolt's key limit (32 KiB), which ingest never produces.
func (l *Local) UpdateBaselines(_ context.Context, u detectors.Baselines) error {
	if emptyUpdate(&u) {
		return nil
	}
	err := l.db.Update(func(tx *bolt.Tx) error {
		keys, routes, meta := tx.Bucket(bucketBaselineKeys), tx.Bucket(bucketBaselineRoutes), tx.Bucket(bucketBaselineMeta)
		// bbolt keeps key and value slices until the commit: each gets its own bytes.
		for i := range u.Keys {
			k := &u.Keys[i]
			if k.Key == "" || len(k.Key) > bolt.MaxKeySize {
				continue
			}
			if err := keys.Put([]byte(k.Key), appendKeyBody(nil, k)); err != nil {
				return err
			}
		}
		for i := range u.Routes {
			r := &u.Routes[i]
			if r.Route == "" || len(r.Route) > bolt.MaxKeySize {
				continue
			}
			if err := routes.Put([]byte(r.Route), appendRouteBody(nil, r)); err != nil {
				return err
			}
		}
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
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: writing baselines: %w", err)
	}
	return nil
}

func metaTime(meta *bolt.Bucket, name []byte) (int64, bool) {
	v := meta.Get(name)
	if v == nil {
		return 0, false
	}
	ms, n := binary.Varint(v)
	return ms, n > 0
}

// LoadBaselines returns every stored baseline, keys and routes sorted.
func (l *Local) LoadBaselines(context.Context) (detectors.Baselines, error) {
	var out detectors.Baselines
	err := l.db.View(func(tx *bolt.Tx) error {
		if ms, ok := metaTime(tx.Bucket(bucketBaselineMeta), metaTrafficSince); ok {
			out.TrafficSince = msTime(ms)
		}
		keys := tx.Bucket(bucketBaselineKeys)
		out.Keys = make([]detectors.KeyBaseline, 0, keys.Stats().KeyN)
		r := recordReader{}
		err := keys.ForEach(func(k, v []byte) error {
			kb := detectors.KeyBaseline{Key: string(k)}
			r.data = v
			r.keyBody(&kb)
			if r.err == nil && len(r.data) != 0 {
				r.fail("bytes after the key")
			}
			if r.err != nil {
				return fmt.Errorf("key %q: %w", k, r.err)
			}
			out.Keys = append(out.Keys, kb)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketBaselineRoutes).ForEach(func(k, v []byte) error {
			rb := detectors.RouteBaseline{Route: string(k)}
			r.data = v
			r.routeBody(&rb)
			if r.err != nil {
				return fmt.Errorf("route %q: %w", k, r.err)
			}
			out.Routes = append(out.Routes, rb)
			return nil
		})
	})
	if err != nil {
		return detectors.Baselines{}, fmt.Errorf("store: loading baselines: %w", err)
	}
	return out, nil
}

// pruneScan bounds the entries one pruning pass reads in a transaction, so the file is
// never locked for long.
const pruneScan = 50_000

// PruneBaselines drops the keys not seen within history, and the routes whose rate
// has not moved for three time constants, of the newest time the baselines know (an
// event time, as the detectors' own expiry uses, so a backlog read late or a replayed
// day forgets what the detectors forget). It returns how many keys and routes it
// dropped. Run calls it hourly.
func (l *Local) PruneBaselines(ctx context.Context) (keys, routes int, err error) {
	var newest int64
	var ok bool
	if err := l.db.View(func(tx *bolt.Tx) error {
		newest, ok = metaTime(tx.Bucket(bucketBaselineMeta), metaNewest)
		return nil
	}); err != nil || !ok {
		return 0, 0, err
	}
	keyLast := func(v []byte) (int64, error) {
		r := recordReader{data: v}
		var kb detectors.KeyBaseline
		r.keyBody(&kb)
		return keyLastSeen(&kb).UnixMilli(), r.err
	}
	routeLast := func(v []byte) (int64, error) {
		r := recordReader{data: v}
		var rb detectors.RouteBaseline
		r.routeBody(&rb)
		return rb.AsOf.UnixMilli(), r.err
	}
	keys, err = l.prune(ctx, bucketBaselineKeys, newest-l.settings.History.Milliseconds(), keyLast)
	if err != nil {
		return keys, 0, err
	}
	routes, err = l.prune(ctx, bucketBaselineRoutes, newest-l.settings.routeTTL(), routeLast)
	return keys, routes, err
}

// prune deletes the entries of bucket whose last time is before cutoff. It looks in a
// read transaction and deletes in a write transaction that checks each entry again, so
// an entry updated in between is kept.
func (l *Local) prune(ctx context.Context, bucket []byte, cutoff int64, last func([]byte) (int64, error)) (int, error) {
	deleted := 0
	var resume []byte
	for {
		if err := ctx.Err(); err != nil {
			return deleted, err
		}
		var expired [][]byte
		var next []byte
		err := l.db.View(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucket).Cursor()
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
// t minus history (route rates: t minus five learning periods) to its end.
func (l *Local) BaselinesAsOf(ctx context.Context, t time.Time) (detectors.Baselines, error) {
	cur, err := l.LoadBaselines(ctx)
	if err != nil {
		return detectors.Baselines{}, err
	}
	facts, err := l.archiveFacts(ctx, t)
	if err != nil {
		return detectors.Baselines{}, fmt.Errorf("store: baselines as of %s: %w", t.UTC().Format(time.RFC3339), err)
	}
	return reconstructAsOf(cur, facts, t), nil
}

type pairAcc struct {
	last  int64
	after uint64
}

// archiveFacts scans the archive from the earlier of lookFrom and the start of the
// route span to its end, in chunks of read transactions.
func (l *Local) archiveFacts(ctx context.Context, t time.Time) (archiveFacts, error) {
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
	pairs := map[string]*pairAcc{}
	routes := map[string]float64{}
	var scratch []byte
	cursor := eventKey(nil, clampMilli(min(f.lookFrom, spanFrom)), 0)
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
				if end := (floorDiv(ms, 60000) + 1) * 60000; ms >= spanFrom && end <= tm && len(route) > 0 {
					scratch = append(append(append(scratch[:0], method...), ' '), route...)
					routes[string(scratch)] += routeWeight(tm, end, tau)
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
	return f, nil
}
