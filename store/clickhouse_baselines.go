package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/cenkalti/backoff/v5"

	"github.com/gatewatch/gatewatch/detectors"
)

// The ClickHouse store keeps baselines in key_stats, key_countries, route_baselines and
// baseline_meta (migrations 0001 and 0003), and client_baselines, object_baselines and
// privilege_baselines (0007). UpdateBaselines writes to ClickHouse within
// baseline_timeout or, when it is slow or down, spills the update to
// <spill_dir>/baselines (the archive's spill format: one fsynced segment per update) and
// returns; Run writes spilled updates in order once ClickHouse is back. While updates
// wait in the spill, new ones join them rather than try ClickHouse first, so the engine
// waits on ClickHouse at most once per outage and the spill drains in order. Every row
// carries its update's version (see versionClock), so a later update wins over an
// earlier one whatever order they reach ClickHouse in.

var _ detectors.BaselineChanges = (*ClickHouse)(nil)

var errBaselineTimeout = errors.New("store: clickhouse did not take the baseline update within baseline_timeout")

// baselineState is the ClickHouse store's baseline side.
type baselineState struct {
	settings BaselineSettings
	m        *baselineMetrics

	mu      sync.Mutex // guards the fields below
	spill   *spill     // updates waiting for ClickHouse, oldest first
	clock   versionClock
	retryAt time.Time // zero while ClickHouse takes baseline writes
	bo      *backoff.ExponentialBackOff
	wake    chan struct{} // an update was spilled

	replay sync.Mutex // held by whoever writes spilled updates: Run's loop or LoadBaselines
}

// maxReplayEntries bounds the entries one replay write merges from spilled updates.
const maxReplayEntries = 200_000

func newBaselineState(c *ClickHouse, o ClickHouseOptions) (*baselineState, error) {
	sp, err := openSpill(filepath.Join(c.cfg.SpillDir, "baselines"))
	if err != nil {
		return nil, err
	}
	b := &baselineState{
		settings: o.Baselines.withDefaults(),
		m:        newBaselineMetrics(o.Registerer),
		spill:    sp,
		bo: &backoff.ExponentialBackOff{
			InitialInterval:     100 * time.Millisecond,
			RandomizationFactor: 0.5,
			Multiplier:          2,
			MaxInterval:         c.retryMax,
		},
		wake: make(chan struct{}, 1),
	}
	b.bo.Reset()
	for _, seg := range sp.segs {
		b.clock.observe(seg.id) // a spilled update's id is its version
	}
	b.m.spilled.Set(float64(len(sp.segs)))
	return b, nil
}

// A versioned update is one UpdateBaselines call and the version its rows carry.
type versioned struct {
	u *detectors.Baselines
	v uint64
}

// UpdateBaselines upserts u and returns once it is durable: in ClickHouse, or, when
// ClickHouse does not take it within baseline_timeout (or updates already wait for
// it), in the spill, from which Run writes it later. It returns an error only when
// neither worked, or ctx ended first, or after Close. Entries with an empty key or
// route are skipped: the detectors never learn one.
func (c *ClickHouse) UpdateBaselines(ctx context.Context, u detectors.Baselines) error {
	if emptyUpdate(&u) {
		return nil
	}
	if c.isClosed() {
		return ErrClosed
	}
	b := c.bl
	b.mu.Lock()
	defer b.mu.Unlock()
	now := c.now()
	v := b.clock.next(now)
	if len(b.spill.segs) == 0 && !now.Before(b.retryAt) {
		wctx, cancel := context.WithTimeoutCause(ctx, c.cfg.BaselineTimeout, errBaselineTimeout)
		err := c.writeBaselines(wctx, []versioned{{&u, v}})
		cancel()
		if err == nil {
			c.baselinesUpLocked()
			b.m.updates.WithLabelValues(resultWritten).Inc()
			return nil
		}
		if ctx.Err() != nil {
			b.m.updates.WithLabelValues(resultFailed).Inc()
			return fmt.Errorf("store: writing baselines: %w", err)
		}
		c.baselinesDownLocked(now, err)
	}
	data, n := encodeUpdate(&u)
	if err := b.spill.write(&block{id: v, n: n, data: data}); err != nil {
		b.m.updates.WithLabelValues(resultFailed).Inc()
		return fmt.Errorf("store: baselines neither written to clickhouse nor spilled: %w", err)
	}
	b.m.updates.WithLabelValues(resultSpilled).Inc()
	b.m.spilled.Set(float64(len(b.spill.segs)))
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return nil
}

func (c *ClickHouse) baselinesDownLocked(now time.Time, err error) {
	b := c.bl
	if b.retryAt.IsZero() {
		c.log.Warn("clickhouse baseline writes fail; spilling updates to disk until they succeed", "err", err)
	}
	b.retryAt = now.Add(b.bo.NextBackOff())
}

func (c *ClickHouse) baselinesUpLocked() {
	b := c.bl
	if !b.retryAt.IsZero() {
		c.log.Info("clickhouse baseline writes succeed again", "spilled_updates", len(b.spill.segs))
	}
	b.retryAt = time.Time{}
	b.bo.Reset()
}

// runBaselineReplay writes spilled updates to ClickHouse, oldest first, until ctx ends:
// when one is spilled and whenever the backoff after a failure has passed. Hourly
// from an hour after the start, while nothing waits in the spill, it also prunes the
// baselines (PruneBaselines).
func (c *ClickHouse) runBaselineReplay(ctx context.Context) {
	b := c.bl
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// The first pass waits an hour, like the later ones: a restart is no reason to
	// prune, and the start is busy with loading.
	nextPrune := c.now().Add(time.Hour)
	for ctx.Err() == nil {
		now := c.now()
		b.mu.Lock()
		pending := len(b.spill.segs) > 0
		wait := b.retryAt.Sub(now)
		b.mu.Unlock()
		if !pending && wait <= 0 && !now.Before(nextPrune) {
			nextPrune = now.Add(time.Hour)
			pctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
			keys, routes, err := c.PruneBaselines(pctx)
			cancel()
			switch {
			case err != nil && ctx.Err() == nil:
				if !unreachable(err) { // an outage is logged by the writers
					c.log.Warn("baseline retention pass failed", "err", err)
				}
				nextPrune = now.Add(time.Minute)
			case keys+routes > 0:
				c.log.Info("dropping baselines not seen within their retention", "keys", keys, "routes", routes)
			}
			continue
		}
		if !pending {
			wait = min(time.Hour, nextPrune.Sub(now))
		}
		if pending && wait <= 0 {
			_, err := c.replayBaselines(ctx, false)
			if ctx.Err() != nil {
				return
			}
			b.mu.Lock()
			if err != nil {
				c.baselinesDownLocked(c.now(), err)
			} else {
				c.baselinesUpLocked()
			}
			b.mu.Unlock()
			continue
		}
		timer.Reset(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
		case <-b.wake:
		case <-timer.C:
		}
	}
}

// replayBaselines writes spilled updates to ClickHouse, oldest first, merging several
// into one write, and deletes their segments; with all it goes on until the spill is
// empty, else it stops after one write. It returns how many updates it wrote. A corrupt
// segment is set aside (renamed .corrupt) and logged.
func (c *ClickHouse) replayBaselines(ctx context.Context, all bool) (int, error) {
	b := c.bl
	b.replay.Lock()
	defer b.replay.Unlock()
	written := 0
	for {
		b.mu.Lock()
		segs := slices.Clone(b.spill.segs)
		b.mu.Unlock()
		if len(segs) == 0 {
			return written, nil
		}
		var ups []versioned
		entries := 0
		for _, seg := range segs {
			if entries >= maxReplayEntries {
				break
			}
			blk, err := b.spill.read(seg)
			var u detectors.Baselines
			if err == nil {
				u, err = decodeUpdate(blk.data, blk.n)
			}
			if errors.Is(err, errCorrupt) && len(ups) == 0 {
				c.log.Error("spilled baseline update is corrupt; set aside as .corrupt", "err", err)
				b.mu.Lock()
				qerr := b.spill.quarantine()
				b.m.spilled.Set(float64(len(b.spill.segs)))
				b.mu.Unlock()
				if qerr != nil {
					return written, qerr
				}
				b.m.updates.WithLabelValues(resultFailed).Inc()
				break
			}
			if err != nil {
				if len(ups) == 0 {
					return written, err
				}
				break // write what was read; the next round meets the error again
			}
			ups = append(ups, versioned{&u, blk.id})
			entries += len(u.Keys) + len(u.Routes) + 1
		}
		if len(ups) == 0 {
			continue // a corrupt segment was set aside
		}
		wctx, cancel := context.WithTimeoutCause(ctx, c.cfg.WriteTimeout, errWriteTimeout)
		err := c.writeBaselines(wctx, newestOnly(ups))
		cancel()
		if err != nil {
			return written, err
		}
		b.mu.Lock()
		for range ups {
			// Only replayers remove, one at a time, so these are the segments read.
			if err := b.spill.remove(); err != nil {
				b.mu.Unlock()
				return written, err
			}
		}
		b.m.spilled.Set(float64(len(b.spill.segs)))
		b.mu.Unlock()
		written += len(ups)
		c.mu.Lock()
		c.notifyLocked()
		c.mu.Unlock()
		if !all {
			return written, nil
		}
	}
}

// PruneBaselines drops what the detectors have forgotten, dated by the newest time the
// baselines know (an event time, as the detectors' own expiry uses; see
// Local.PruneBaselines for what each detector forgets), and returns how many routes it
// found to drop, and how many entries keyed by a client. The drop is an ALTER TABLE
// ... DELETE, a mutation the server applies in the background (18.16 has no
// synchronous one), so they disappear from reads a little later; an entry written
// again meanwhile is kept, since mutations only rewrite the parts that existed when
// they were issued. No new mutation is issued while one on the baseline tables is
// still running. Run calls it hourly.
func (c *ClickHouse) PruneBaselines(ctx context.Context) (keys, routes int, err error) {
	s := c.bl.settings
	var running uint64
	err = c.conn.QueryRow(ctx, `SELECT count() FROM system.mutations WHERE database = currentDatabase()
AND table IN ('key_stats', 'key_countries', 'route_baselines', 'client_baselines', 'object_baselines', 'privilege_baselines')
AND is_done = 0`).Scan(&running)
	if err != nil {
		return 0, 0, fmt.Errorf("store: pruning baselines: %w", err)
	}
	if running > 0 {
		return 0, 0, nil
	}
	const (
		keyLast     = lastSeenMs
		countryLast = "toUInt64(key_last_seen) * 1000 + key_last_seen_ms" // the key's, not the country's
		movedLast   = "greatest(" + asOfMs + ", " + peakAtMs + ")"
	)
	var n [5]uint64
	err = c.conn.QueryRow(ctx, `SELECT
(SELECT max(`+keyLast+`) FROM key_stats),
(SELECT max(`+movedLast+`) FROM route_baselines),
(SELECT max(`+movedLast+`) FROM client_baselines),
(SELECT max(`+peakAtMs+`) FROM object_baselines),
(SELECT max(`+lastSeenMs+`) FROM privilege_baselines)`).Scan(&n[0], &n[1], &n[2], &n[3], &n[4])
	if err != nil {
		return 0, 0, fmt.Errorf("store: pruning baselines: %w", err)
	}
	newest := int64(slices.Max(n[:]))
	if newest == 0 {
		return 0, 0, nil
	}
	keyCut := max(newest-s.History.Milliseconds(), 0)
	for _, p := range []struct {
		table, last string
		cut         int64
		n           *int
	}{
		{"key_stats", keyLast, keyCut, &keys},
		{"key_countries", countryLast, keyCut, nil},
		{"route_baselines", movedLast, max(newest-s.routeTTL(), 0), &routes},
		{"client_baselines", movedLast, max(newest-s.clientTTL(), 0), &keys},
		{"object_baselines", peakAtMs, max(newest-s.objectTTL(), 0), &keys},
		{"privilege_baselines", lastSeenMs, max(newest-s.PrivilegeHistory.Milliseconds(), 0), &keys},
	} {
		var n uint64
		if err := c.conn.QueryRow(ctx, "SELECT count() FROM "+p.table+" FINAL WHERE "+p.last+" < ?", p.cut).Scan(&n); err != nil {
			return keys, routes, fmt.Errorf("store: pruning baselines: %w", err)
		}
		if p.n != nil {
			*p.n += int(n)
		}
		if n == 0 {
			continue
		}
		if err := c.conn.Exec(ctx, "ALTER TABLE "+p.table+" DELETE WHERE "+p.last+" < ?", p.cut); err != nil {
			return keys, routes, fmt.Errorf("store: pruning baselines from %s: %w", p.table, err)
		}
	}
	return keys, routes, nil
}

// newestOnly drops from ups, oldest first, every entry that a later update in ups
// writes again: only the newest version of an entry would survive anyway.
func newestOnly(ups []versioned) []versioned {
	if len(ups) < 2 {
		return ups
	}
	seen := map[string]bool{}
	fresh := func(kind byte, name ...string) bool {
		k := string(kind) + strings.Join(name, "\x00")
		if seen[k] {
			return false
		}
		seen[k] = true
		return true
	}
	out := make([]versioned, len(ups))
	for i := len(ups) - 1; i >= 0; i-- {
		u := *ups[i].u
		kept := detectors.Baselines{TrafficSince: u.TrafficSince}
		for _, k := range u.Keys {
			if fresh(keyRecord, k.Key) {
				kept.Keys = append(kept.Keys, k)
			}
		}
		for _, r := range u.Routes {
			if fresh(routeRecord, r.Route) {
				kept.Routes = append(kept.Routes, r)
			}
		}
		for _, c := range u.Clients {
			if fresh(clientRecord, c.Key) {
				kept.Clients = append(kept.Clients, c)
			}
		}
		for _, o := range u.Objects {
			if fresh(objectRecord, o.Client, o.Route) {
				kept.Objects = append(kept.Objects, o)
			}
		}
		for _, p := range u.Privileged {
			if fresh(privilegeRecord, p.Key) {
				kept.Privileged = append(kept.Privileged, p)
			}
		}
		out[i] = versioned{&kept, ups[i].v}
	}
	return out
}

// chTime splits a time into what a DateTime column and its _ms companion hold: whole
// seconds from 1970 to 2106, and milliseconds. The zero time is stored as 0 and read
// back as the zero time.
func chTime(t time.Time) (int64, uint16) {
	if t.IsZero() {
		return 0, 0
	}
	ms := clampMilli(t.UnixMilli())
	return ms / 1000, uint16(ms % 1000)
}

// fromCHMilli is chTime's inverse, for a time read as Unix milliseconds.
func fromCHMilli(ms uint64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return msTime(int64(ms))
}

// baselineRows are the rows of some updates, as columns per table.
type baselineRows struct {
	stats, countries, routes, clients, objects, privileged, meta tableRows
}

type tableRows struct {
	table, columns string
	cols           []any // each a pointer to a typed slice
	n              int
}

func newBaselineRows() *baselineRows {
	return &baselineRows{
		stats: tableRows{table: "key_stats", columns: "key, first_seen, first_seen_ms, last_seen, last_seen_ms, events, version",
			cols: []any{&[]string{}, &[]int64{}, &[]uint16{}, &[]int64{}, &[]uint16{}, &[]uint64{}, &[]uint64{}}},
		countries: tableRows{table: "key_countries", columns: "key, country, first_seen, first_seen_ms, last_seen, last_seen_ms, events, key_last_seen, key_last_seen_ms, version",
			cols: []any{&[]string{}, &[]string{}, &[]int64{}, &[]uint16{}, &[]int64{}, &[]uint16{}, &[]uint64{}, &[]int64{}, &[]uint16{}, &[]uint64{}}},
		routes: tableRows{table: "route_baselines", columns: "route, rate_per_minute, as_of, as_of_ms, peak, peak_at, peak_at_ms, version",
			cols: []any{&[]string{}, &[]float64{}, &[]int64{}, &[]uint16{}, &[]float64{}, &[]int64{}, &[]uint16{}, &[]uint64{}}},
		clients: tableRows{table: "client_baselines", columns: "key, first_seen, first_seen_ms, rate_per_minute, as_of, as_of_ms, peak, peak_at, peak_at_ms, version",
			cols: []any{&[]string{}, &[]int64{}, &[]uint16{}, &[]float64{}, &[]int64{}, &[]uint16{}, &[]float64{}, &[]int64{}, &[]uint16{}, &[]uint64{}}},
		objects: tableRows{table: "object_baselines", columns: "client, route, peak, peak_at, peak_at_ms, version",
			cols: []any{&[]string{}, &[]string{}, &[]float64{}, &[]int64{}, &[]uint16{}, &[]uint64{}}},
		privileged: tableRows{table: "privilege_baselines", columns: "key, first_seen, first_seen_ms, last_seen, last_seen_ms, events, version",
			cols: []any{&[]string{}, &[]int64{}, &[]uint16{}, &[]int64{}, &[]uint16{}, &[]uint64{}, &[]uint64{}}},
		meta: tableRows{table: "baseline_meta", columns: "name, value, value_ms",
			cols: []any{&[]string{}, &[]int64{}, &[]uint16{}}},
	}
}

// add appends one row; values match cols in order and type.
func (t *tableRows) add(values ...any) {
	for i, v := range values {
		switch col := t.cols[i].(type) {
		case *[]string:
			*col = append(*col, v.(string))
		case *[]int64:
			*col = append(*col, v.(int64))
		case *[]uint16:
			*col = append(*col, v.(uint16))
		case *[]uint32:
			*col = append(*col, v.(uint32))
		case *[]uint64:
			*col = append(*col, v.(uint64))
		case *[]float64:
			*col = append(*col, v.(float64))
		}
	}
	t.n++
}

func (r *baselineRows) addUpdate(u *detectors.Baselines, v uint64) {
	if !u.TrafficSince.IsZero() {
		s, ms := chTime(u.TrafficSince)
		r.meta.add("traffic_since", s, ms)
	}
	for i := range u.Keys {
		k := &u.Keys[i]
		if k.Key == "" {
			continue
		}
		fs, fms := chTime(k.FirstSeen)
		ls, lms := chTime(keyLastSeen(k))
		// Countries first: a key_stats row with a new version hides the countries of
		// older versions, so it must not land before its own countries.
		for _, cb := range k.Countries {
			cfs, cfms := chTime(cb.FirstSeen)
			cls, clms := chTime(cb.LastSeen)
			r.countries.add(k.Key, cb.Country, cfs, cfms, cls, clms, cb.Events, ls, lms, v)
		}
		r.stats.add(k.Key, fs, fms, ls, lms, k.Events, v)
	}
	for _, rb := range u.Routes {
		if rb.Route == "" {
			continue
		}
		s, ms := chTime(rb.AsOf)
		ps, pms := chTime(rb.PeakAt)
		r.routes.add(rb.Route, rb.RatePerMinute, s, ms, rb.Peak, ps, pms, v)
	}
	for _, c := range u.Clients {
		if c.Key == "" {
			continue
		}
		fs, fms := chTime(c.FirstSeen)
		s, ms := chTime(c.AsOf)
		ps, pms := chTime(c.PeakAt)
		r.clients.add(c.Key, fs, fms, c.RatePerMinute, s, ms, c.Peak, ps, pms, v)
	}
	for _, o := range u.Objects {
		if o.Client == "" {
			continue
		}
		ps, pms := chTime(o.PeakAt)
		r.objects.add(o.Client, o.Route, o.Peak, ps, pms, v)
	}
	for _, p := range u.Privileged {
		if p.Key == "" {
			continue
		}
		fs, fms := chTime(p.FirstSeen)
		ls, lms := chTime(p.LastSeen)
		r.privileged.add(p.Key, fs, fms, ls, lms, p.Events, v)
	}
}

// writeBaselines inserts the rows of ups: key countries, then key stats, routes,
// clients, objects, privileged keys and the traffic start, one insert per table. Not atomic across tables: a write that
// fails part-way is repeated whole (from the spill), and rewriting rows with their
// version changes nothing.
func (c *ClickHouse) writeBaselines(ctx context.Context, ups []versioned) error {
	rows := newBaselineRows()
	for _, vu := range ups {
		rows.addUpdate(vu.u, vu.v)
	}
	for _, t := range []*tableRows{&rows.countries, &rows.stats, &rows.routes, &rows.clients, &rows.objects, &rows.privileged, &rows.meta} {
		if t.n == 0 {
			continue
		}
		if err := c.insertRows(ctx, t); err != nil {
			c.bl.m.writeErrors.Inc()
			if cause := context.Cause(ctx); errors.Is(cause, errBaselineTimeout) || errors.Is(cause, errWriteTimeout) {
				err = fmt.Errorf("%w: %w", cause, err)
			}
			return fmt.Errorf("store: writing baselines to %s: %w", t.table, err)
		}
	}
	return nil
}

func (c *ClickHouse) insertRows(ctx context.Context, t *tableRows) error {
	batch, err := c.conn.PrepareBatch(ctx, "INSERT INTO "+t.table+" ("+t.columns+")")
	if err != nil {
		return err
	}
	defer batch.Close()
	for i, col := range t.cols {
		switch v := col.(type) { // Append takes the slice itself
		case *[]string:
			col = *v
		case *[]int64:
			col = *v
		case *[]uint16:
			col = *v
		case *[]uint32:
			col = *v
		case *[]uint64:
			col = *v
		case *[]float64:
			col = *v
		}
		if err := batch.Column(i).Append(col); err != nil {
			return fmt.Errorf("column %d: %w", i, err)
		}
	}
	return batch.Send()
}

// LoadBaselines returns the most recent stored baselines, up to lim, after writing the
// updates that wait in the spill (an earlier run's included), so it reflects every
// UpdateBaselines that returned before it. While ClickHouse cannot be reached it retries, with backoff,
// until ctx ends: starting with no baselines (or an earlier run's) would make every
// key look new and later overwrite what ClickHouse holds. An error the server
// returns (a missing table: migrations not run) ends it at once.
//
// Reads are exact whatever the state of merges: FINAL folds the rows of each key to
// its newest version as it reads. On 18.16, reading 1,000,000 keys, FINAL takes about
// a tenth of the time of GROUP BY key with argMax(..., version), because the sorted
// parts stream through a merge in key order while GROUP BY builds a hash table of every
// key with an argMax state per column (measured with clickhouse-client on the test
// server: 0.16 s against 1.35 s for key_stats, 0.32 s against 1.78 s for 2,000,000
// key_countries rows), and it keeps memory flat. ORDER BY on the sorting key costs a
// sort on 18.16 (current servers read in order instead) and keeps the result's order
// independent of how the server splits the read. A limit is an ORDER BY on the last
// seen time with LIMIT in a subquery, so only the rows kept cross the wire.
func (c *ClickHouse) LoadBaselines(ctx context.Context, lim detectors.BaselineLimits) (detectors.Baselines, error) {
	b, _, err := c.LoadBaselinesSince(ctx, lim, 0)
	return b, err
}

// LoadBaselinesSince is LoadBaselines restricted to the rows whose version is above
// since, the newest version the load that returned it read, minus a margin (see
// BaselineSettings.changesMargin); 0 loads every baseline. It returns the newest
// version it read, or since when it read none newer: the since of the next call. The
// filter is on each key's newest row, so a key whose countries were written before
// since comes back with them whenever its key_stats row is newer (readers keep the
// countries whose version is at least the key's), and a forgotten country, which keeps
// its older version, stays forgotten. The reads still scan the version column of every
// row; only the changed rows are merged (FINAL), sent and decoded.
func (c *ClickHouse) LoadBaselinesSince(ctx context.Context, lim detectors.BaselineLimits, since uint64) (detectors.Baselines, uint64, error) {
	start := time.Now()
	bo := backoff.ExponentialBackOff{
		InitialInterval:     100 * time.Millisecond,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         c.retryMax,
	}
	bo.Reset()
	warned := false
	cut := uint64(0)
	if m := uint64(c.bl.settings.changesMargin().Nanoseconds()); since > m {
		cut = since - m
	}
	for {
		b, newest, err := c.loadBaselines(ctx, lim, cut)
		if err == nil {
			if warned {
				c.log.Info("baselines loaded from clickhouse after waiting for it")
			}
			if cut == 0 {
				c.bl.m.loadDuration.Set(time.Since(start).Seconds())
			}
			next := max(since, newest)
			c.bl.mu.Lock()
			if len(c.bl.spill.segs) > 0 {
				// Updates of this process still wait in the spill, with the versions
				// they were given when they were made: the next load must reach back
				// to them, whatever newer rows other writers added meanwhile.
				next = min(next, c.bl.spill.segs[0].id)
			}
			c.bl.mu.Unlock()
			return b, next, nil
		}
		if ctx.Err() != nil || !unreachable(err) {
			return detectors.Baselines{}, 0, fmt.Errorf("store: loading baselines: %w", err)
		}
		if !warned {
			c.log.Warn("cannot load baselines from clickhouse; retrying until it answers", "err", err)
			warned = true
		}
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return detectors.Baselines{}, 0, fmt.Errorf("store: loading baselines: %w (last attempt: %w)", context.Cause(ctx), err)
		case <-t.C:
		}
	}
}

// unreachable reports whether err says ClickHouse could not be reached or did not
// answer in time, which waiting may cure, rather than that it refused the request or
// the client could not make one, which waiting does not.
func unreachable(err error) bool {
	var ex *clickhouse.Exception
	var netErr net.Error
	switch {
	case errors.As(err, &ex):
		return false
	case errors.As(err, &netErr), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, clickhouse.ErrAcquireConnTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, errWriteTimeout), errors.Is(err, errBaselineTimeout):
		return true
	}
	return false
}

// loadBaselines makes one attempt: spilled updates, then the reads of the rows of a
// version above cut (0: all). It returns the newest version it read.
func (c *ClickHouse) loadBaselines(ctx context.Context, lim detectors.BaselineLimits, cut uint64) (detectors.Baselines, uint64, error) {
	if c.isClosed() {
		return detectors.Baselines{}, 0, ErrClosed
	}
	if _, err := c.replayBaselines(ctx, true); err != nil {
		return detectors.Baselines{}, 0, err
	}
	var out detectors.Baselines
	var newest uint64
	var since uint64
	var n uint64
	err := c.conn.QueryRow(ctx, "SELECT min(toUInt64(value) * 1000 + value_ms), count() FROM baseline_meta WHERE name = 'traffic_since'").Scan(&since, &n)
	if err != nil {
		return out, 0, fmt.Errorf("reading traffic_since: %w", err)
	}
	if n > 0 {
		out.TrafficSince = fromCHMilli(since)
	}
	if out.Keys, newest, err = c.readKeys(ctx, lim.Keys, cut); err != nil {
		return out, 0, err
	}
	for _, read := range []struct {
		f func(context.Context, *detectors.Baselines, rowSelect) (uint64, error)
		n int
	}{{c.readRoutes, lim.Routes}, {c.readClients, lim.Clients}, {c.readObjects, lim.Objects}, {c.readPrivileged, lim.Privileged}} {
		v, err := read.f(ctx, &out, rowSelect{n: read.n, after: cut})
		if err != nil {
			return out, 0, err
		}
		newest = max(newest, v)
	}
	c.bl.mu.Lock()
	c.bl.clock.observe(newest)
	c.bl.mu.Unlock()
	return out, newest, nil
}

// readKeys reads the newest baseline of the n keys last seen most recently whose
// newest version is above cut (0: any), sorted by key, and the largest version.
// key_stats and key_countries both come in key order and are joined as they stream.
// The countries of all keys share one array, sized (like the keys) from the row
// counts of the tables' parts, an upper bound: a million keys cost a few large
// allocations rather than millions of small ones.
func (c *ClickHouse) readKeys(ctx context.Context, n int, cut uint64) ([]detectors.KeyBaseline, uint64, error) {
	if n <= 0 {
		return nil, 0, nil
	}
	// The keys kept: key_stats' last_seen is the key's newest country, or its first
	// seen (keyLastSeen), as a RecentSet orders them. A key has a row above cut if and
	// only if its newest row is, so the filter is the same before FINAL and after.
	where, changed := "", ""
	if cut > 0 {
		changed = fmt.Sprintf(" WHERE version > %d", cut)
	}
	switch {
	case n < math.MaxInt:
		where = fmt.Sprintf(" WHERE key IN (SELECT key FROM key_stats FINAL%s ORDER BY last_seen DESC, last_seen_ms DESC, key LIMIT %d)", changed, n)
	case cut > 0:
		where = " WHERE key IN (SELECT key FROM key_stats" + changed + ")"
	}
	if cut > 0 {
		// A few changed keys: no sizing round trip, and no arrays sized for all.
		return c.readKeysWhere(ctx, where, 0, 0)
	}
	var nStats, nCountries uint64
	err := c.conn.QueryRow(ctx, `SELECT sumIf(rows, table = 'key_stats'), sumIf(rows, table = 'key_countries')
FROM system.parts WHERE database = currentDatabase() AND table IN ('key_stats', 'key_countries') AND active`).Scan(&nStats, &nCountries)
	if err != nil {
		return nil, 0, fmt.Errorf("sizing the baselines: %w", err)
	}
	return c.readKeysWhere(ctx, where, min(nStats, uint64(n)), nCountries)
}

// readKeysWhere reads the newest baselines of the keys that where (" WHERE ...", or
// empty for all) selects, sorted by key, and the largest version; nStats and
// nCountries size the results.
func (c *ClickHouse) readKeysWhere(ctx context.Context, where string, nStats, nCountries uint64, args ...any) ([]detectors.KeyBaseline, uint64, error) {
	rows, err := c.conn.Query(ctx, `SELECT key, toUInt64(first_seen) * 1000 + first_seen_ms, events, version
FROM key_stats FINAL`+where+` ORDER BY key`, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("reading key_stats: %w", err)
	}
	var (
		keys     = make([]detectors.KeyBaseline, 0, nStats)
		versions = make([]uint64, 0, nStats)
		newest   uint64
		key      string
		first    uint64
		events   uint64
		v        uint64
	)
	for rows.Next() {
		if err := rows.Scan(&key, &first, &events, &v); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("reading key_stats: %w", err)
		}
		keys = append(keys, detectors.KeyBaseline{Key: key, FirstSeen: fromCHMilli(first), Events: events})
		versions = append(versions, v)
		newest = max(newest, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("reading key_stats: %w", err)
	}

	rows, err = c.conn.Query(ctx, `SELECT key, country, toUInt64(first_seen) * 1000 + first_seen_ms,
toUInt64(last_seen) * 1000 + last_seen_ms, events, version
FROM key_countries FINAL`+where+` ORDER BY key, country`, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("reading key_countries: %w", err)
	}
	defer rows.Close()
	var (
		all      = make([]detectors.CountryBaseline, 0, nCountries)
		interned = map[string]string{}
		i        = 0  // the key the rows are at
		start    = -1 // where key i's countries start in all; -1: none yet
		country  string
		last     uint64
	)
	done := func() { // key i has all its countries
		if start >= 0 {
			keys[i].Countries = all[start:len(all):len(all)]
			start = -1
		}
	}
	for rows.Next() {
		if err := rows.Scan(&key, &country, &first, &last, &events, &v); err != nil {
			return nil, 0, fmt.Errorf("reading key_countries: %w", err)
		}
		newest = max(newest, v)
		for i < len(keys) && keys[i].Key < key {
			done()
			i++
		}
		// A country of a key without stats (written just before a failed stats
		// insert, which is being repeated) or of an older version (forgotten since)
		// is not part of the key's baseline.
		if i == len(keys) || keys[i].Key != key || v < versions[i] {
			continue
		}
		cc, ok := interned[country]
		if !ok {
			cc = country
			interned[cc] = cc
		}
		if start < 0 {
			start = len(all)
		}
		all = append(all, detectors.CountryBaseline{Country: cc, FirstSeen: fromCHMilli(first), LastSeen: fromCHMilli(last), Events: events})
	}
	if i < len(keys) {
		done()
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("reading key_countries: %w", err)
	}
	return keys, newest, nil
}

// readRows runs query and scans each row into the destinations dest returns, the last
// of which is the row's version, then calls keep; it returns the largest version.
func (c *ClickHouse) readRows(ctx context.Context, what, query string, dest func() []any, keep func(), args ...any) (uint64, error) {
	rows, err := c.conn.Query(ctx, query, args...)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", what, err)
	}
	defer rows.Close()
	var newest uint64
	for rows.Next() {
		d := dest()
		if err := rows.Scan(d...); err != nil {
			return 0, fmt.Errorf("reading %s: %w", what, err)
		}
		newest = max(newest, *d[len(d)-1].(*uint64))
		keep()
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("reading %s: %w", what, err)
	}
	return newest, nil
}

// The times of a row, read as Unix ms.
const (
	asOfMs      = "toUInt64(as_of) * 1000 + as_of_ms"
	peakAtMs    = "toUInt64(peak_at) * 1000 + peak_at_ms"
	firstSeenMs = "toUInt64(first_seen) * 1000 + first_seen_ms"
	lastSeenMs  = "toUInt64(last_seen) * 1000 + last_seen_ms"
)

// A rowSelect says which rows of a baseline table to read: the n of largest recency
// (ties: the smaller key) among those of a version above after (0: all), or, when in
// is set, those whose key is one of in.
type rowSelect struct {
	n     int
	after uint64
	in    []string
}

// query returns the query of cols of table's newest rows (FINAL) that s selects,
// sorted by key, and its arguments; inCol is the column in matches.
func (s rowSelect) query(cols, table, recency, key, inCol string) (string, []any) {
	q := "SELECT " + cols + " FROM " + table + " FINAL"
	if s.in != nil {
		return q + " WHERE " + inCol + " IN ? ORDER BY " + key, []any{inSet(s.in)}
	}
	if s.after > 0 {
		// Whether it is applied before FINAL or after, the newest row of an entry
		// passes if and only if any of its rows does.
		q += fmt.Sprintf(" WHERE version > %d", s.after)
	}
	if s.n < math.MaxInt {
		q = fmt.Sprintf("SELECT * FROM (%s ORDER BY %s DESC, %s LIMIT %d)", q, recency, key, s.n)
	}
	return q + " ORDER BY " + key, nil
}

// none reports whether s selects nothing.
func (s rowSelect) none() bool { return s.in == nil && s.n <= 0 }

// inSet binds strs as the tuple ('a', 'b') that IN takes on every server version (a
// bound slice would be the array ['a', 'b']).
func inSet(strs []string) clickhouse.GroupSet {
	v := make([]any, len(strs))
	for i, s := range strs {
		v[i] = s
	}
	return clickhouse.GroupSet{Value: v}
}

func (c *ClickHouse) readRoutes(ctx context.Context, out *detectors.Baselines, sel rowSelect) (uint64, error) {
	if sel.none() {
		return 0, nil
	}
	var r detectors.RouteBaseline
	var asOf, peakAt, v uint64
	q, args := sel.query("route, rate_per_minute, "+asOfMs+" AS as_of_t, peak, "+peakAtMs+" AS peak_at_t, version", "route_baselines",
		"greatest(as_of_t, peak_at_t)", "route", "route")
	return c.readRows(ctx, "route_baselines", q,
		func() []any { return []any{&r.Route, &r.RatePerMinute, &asOf, &r.Peak, &peakAt, &v} },
		func() {
			r.AsOf, r.PeakAt = fromCHMilli(asOf), fromCHMilli(peakAt)
			out.Routes = append(out.Routes, r)
		}, args...)
}

func (c *ClickHouse) readClients(ctx context.Context, out *detectors.Baselines, sel rowSelect) (uint64, error) {
	if sel.none() {
		return 0, nil
	}
	var cb detectors.ClientBaseline
	var first, asOf, peakAt, v uint64
	q, args := sel.query("key, "+firstSeenMs+", rate_per_minute, "+asOfMs+" AS as_of_t, peak, "+peakAtMs+" AS peak_at_t, version", "client_baselines",
		"greatest(as_of_t, peak_at_t)", "key", "key")
	return c.readRows(ctx, "client_baselines", q,
		func() []any { return []any{&cb.Key, &first, &cb.RatePerMinute, &asOf, &cb.Peak, &peakAt, &v} },
		func() {
			cb.FirstSeen, cb.AsOf, cb.PeakAt = fromCHMilli(first), fromCHMilli(asOf), fromCHMilli(peakAt)
			out.Clients = append(out.Clients, cb)
		}, args...)
}

func (c *ClickHouse) readObjects(ctx context.Context, out *detectors.Baselines, sel rowSelect) (uint64, error) {
	if sel.none() {
		return 0, nil
	}
	var o detectors.ObjectBaseline
	var peakAt, v uint64
	q, args := sel.query("client, route, peak, "+peakAtMs+" AS peak_at_t, version", "object_baselines", "peak_at_t", "client, route", "client")
	return c.readRows(ctx, "object_baselines", q,
		func() []any { return []any{&o.Client, &o.Route, &o.Peak, &peakAt, &v} },
		func() {
			o.PeakAt = fromCHMilli(peakAt)
			out.Objects = append(out.Objects, o)
		}, args...)
}

func (c *ClickHouse) readPrivileged(ctx context.Context, out *detectors.Baselines, sel rowSelect) (uint64, error) {
	if sel.none() {
		return 0, nil
	}
	var p detectors.PrivilegeBaseline
	var first, last, v uint64
	q, args := sel.query("key, "+firstSeenMs+", "+lastSeenMs+" AS last_seen_t, events, version", "privilege_baselines", "last_seen_t", "key", "key")
	return c.readRows(ctx, "privilege_baselines", q,
		func() []any { return []any{&p.Key, &first, &last, &p.Events, &v} },
		func() {
			p.FirstSeen, p.LastSeen = fromCHMilli(first), fromCHMilli(last)
			out.Privileged = append(out.Privileged, p)
		}, args...)
}

// lookupChunk bounds the keys of one lookup query.
const lookupChunk = 10_000

// LookupBaselines returns what ClickHouse holds of keys and routes, sorted, within
// baseline_timeout: a batch's new keys are few, and the engine waits for them. While
// updates wait in the spill (ClickHouse down or catching up), a key's newest baseline
// may be among them, and the lookup returns the one ClickHouse has.
func (c *ClickHouse) LookupBaselines(ctx context.Context, keys, routes []string) (detectors.Baselines, error) {
	var out detectors.Baselines
	if c.isClosed() {
		return out, ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.BaselineTimeout)
	defer cancel()
	for lo := 0; lo < len(keys); lo += lookupChunk {
		chunk := keys[lo:min(lo+lookupChunk, len(keys))]
		n := uint64(len(chunk))
		ks, _, err := c.readKeysWhere(ctx, " WHERE key IN ?", n, n, inSet(chunk))
		if err != nil {
			return detectors.Baselines{}, fmt.Errorf("store: looking up baselines: %w", err)
		}
		out.Keys = append(out.Keys, ks...)
		sel := rowSelect{in: chunk}
		for _, read := range []func(context.Context, *detectors.Baselines, rowSelect) (uint64, error){c.readClients, c.readObjects, c.readPrivileged} {
			if _, err := read(ctx, &out, sel); err != nil {
				return detectors.Baselines{}, fmt.Errorf("store: looking up baselines: %w", err)
			}
		}
	}
	for lo := 0; lo < len(routes); lo += lookupChunk {
		if _, err := c.readRoutes(ctx, &out, rowSelect{in: routes[lo:min(lo+lookupChunk, len(routes))]}); err != nil {
			return detectors.Baselines{}, fmt.Errorf("store: looking up baselines: %w", err)
		}
	}
	out.Sort()
	return out, nil
}

// BaselinesAsOf returns what the baselines were at t, for replay and forensics,
// rebuilt from the stored baselines and the event archive as well as they allow (see
// reconstructAsOf for what is exact and what is estimated). It reads every stored key
// once and scans the archive from t minus history (route rates: t minus five learning
// periods) to its end, grouped by key and country, and the requests per minute of the
// routes and client keys whose peaks came after t over three peak memories before it:
// a forensic query, not one for the live path.
func (c *ClickHouse) BaselinesAsOf(ctx context.Context, t time.Time) (detectors.Baselines, error) {
	cur, _, err := c.loadBaselines(ctx, detectors.AllBaselines, 0)
	if err != nil {
		return detectors.Baselines{}, fmt.Errorf("store: baselines as of %s: %w", t.UTC().Format(time.RFC3339), err)
	}
	facts, err := c.archiveFacts(ctx, t, &cur)
	if err != nil {
		return detectors.Baselines{}, fmt.Errorf("store: baselines as of %s: %w", t.UTC().Format(time.RFC3339), err)
	}
	return reconstructAsOf(cur, facts, t), nil
}

func (c *ClickHouse) archiveFacts(ctx context.Context, t time.Time, cur *detectors.Baselines) (archiveFacts, error) {
	s := c.bl.settings
	tm := t.UnixMilli()
	var lo uint32
	var parts uint64
	err := c.conn.QueryRow(ctx, "SELECT toUInt32(min(min_time)), count() FROM system.parts WHERE database = currentDatabase() AND table = 'events' AND active").Scan(&lo, &parts)
	if err != nil {
		return archiveFacts{}, fmt.Errorf("finding the oldest archived event: %w", err)
	}
	oldest := int64(1<<63 - 1)
	if parts > 0 {
		oldest = int64(lo) * 1000
	}
	f := archiveFacts{lookFrom: lookFrom(tm, s.History.Milliseconds(), oldest)}
	if parts == 0 {
		return f, nil
	}

	rows, err := c.conn.Query(ctx, `SELECT client_key, country, maxIf(ts, ts < ?), countIf(ts >= ?)
FROM (
    SELECT client_key, country, toUInt64(time) * 1000 + ms AS ts
    FROM events
    WHERE time >= toDateTime(?) AND client_key != '' AND country != ''
)
WHERE ts >= ?
GROUP BY client_key, country
ORDER BY client_key, country`, tm, tm, max(floorDiv(f.lookFrom, 1000), 0), max(f.lookFrom, 0))
	if err != nil {
		return f, fmt.Errorf("reading the archive: %w", err)
	}
	for rows.Next() {
		var p pairFact
		var last uint64
		if err := rows.Scan(&p.key, &p.country, &last, &p.after); err != nil {
			rows.Close()
			return f, fmt.Errorf("reading the archive: %w", err)
		}
		p.lastBefore = noEvent
		if last > 0 {
			p.lastBefore = int64(last)
		}
		f.pairs = append(f.pairs, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return f, fmt.Errorf("reading the archive: %w", err)
	}

	err = c.minuteRates(ctx, "route_minute", "concat(method, ' ', route)", "route != ''", "method, route", tm, s.tau(),
		s.asOfSpan(), func(route string, rate float64) {
			f.routes = append(f.routes, detectors.RouteBaseline{Route: route, RatePerMinute: rate, AsOf: msTime(tm)})
		})
	if err != nil {
		return f, err
	}
	// client_minute's client is the client key, else the client IP: a row of an IP is
	// rebuilt too, and matches no stored client key.
	err = c.minuteRates(ctx, "client_minute", "client", "client != ''", "client", tm, s.clientTau(),
		s.clientAsOfSpan(), func(key string, rate float64) {
			f.clients = append(f.clients, detectors.ClientBaseline{Key: key, RatePerMinute: rate})
		})
	if err != nil {
		return f, err
	}
	routes, clients := peaksToRebuild(cur, tm)
	if f.routePeaks, err = c.minutePeaks(ctx, "route_minute", "concat(method, ' ', route)", "method, route", routes, tm,
		s.Window, s.Hot, s.PeakMemory); err != nil {
		return f, err
	}
	f.clientPeaks, err = c.minutePeaks(ctx, "client_minute", "client", "client", clients, tm, s.ClientWindow, s.ClientHot, s.ClientPeakMemory)
	return f, err
}

// minutePeaks rebuilds the peaks as of tm (Unix ms) of keys, entries of table (one of
// the request counts per minute) whose key is the expression key, grouped by group,
// from their whole minutes ending by tm within peakSpan before it (peakFolder).
func (c *ClickHouse) minutePeaks(ctx context.Context, table, key, group string, keys []string, tm int64,
	window time.Duration, hot uint32, peakMemory time.Duration) (map[string]peakFact, error) {
	from := floorDiv(tm-peakSpan(peakMemory), 60000) * 60
	to := floorDiv(tm, 1000) - 60
	if len(keys) == 0 || to < 0 {
		return nil, nil
	}
	peaks := make(map[string]peakFact, len(keys))
	var last string
	for lo := 0; lo < len(keys); lo += lookupChunk {
		rows, err := c.conn.Query(ctx, `SELECT `+key+` AS k, toUInt32(minute) AS m, sum(requests)
FROM `+table+`
WHERE minute >= toDateTime(?) AND minute <= toDateTime(?) AND `+key+` IN ?
GROUP BY `+group+`, minute
ORDER BY k, m`, max(from, 0), to, inSet(keys[lo:min(lo+lookupChunk, len(keys))]))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", table, err)
		}
		var k string
		var m uint32
		var n uint64
		var f *peakFolder
		for rows.Next() {
			if err := rows.Scan(&k, &m, &n); err != nil {
				rows.Close()
				return nil, fmt.Errorf("reading %s: %w", table, err)
			}
			if f == nil || k != last {
				if f != nil {
					peaks[last] = f.peakAsOf(tm)
				}
				f, last = newPeakFolder(window, hot, peakMemory), k
			}
			f.add(int64(m)*1000, n)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("reading %s: %w", table, err)
		}
		if f != nil {
			peaks[last] = f.peakAsOf(tm)
		}
	}
	return peaks, nil
}

// minuteRates rebuilds the rates a minute as of tm (Unix ms) of the entries of table,
// one of the request counts per minute, from its whole minutes that end by tm, from
// span before it: the detector's exponential average with time constant tau (ms), each
// minute weighted as of its end (routeWeight). key is the entry's expression, grouped
// by group, of the rows where holds; add takes them sorted by key.
func (c *ClickHouse) minuteRates(ctx context.Context, table, key, where, group string, tm int64, tau float64, span int64,
	add func(key string, rate float64)) error {
	from := floorDiv(tm-span, 60000) * 60
	to := floorDiv(tm, 1000) - 60
	if to < 0 {
		return nil
	}
	rows, err := c.conn.Query(ctx, `SELECT `+key+` AS k, sum(requests * exp((toUInt32(minute) + 60 - ?) / ?))
FROM `+table+`
WHERE minute >= toDateTime(?) AND minute <= toDateTime(?) AND `+where+`
GROUP BY `+group+`
ORDER BY k`, float64(tm)/1000, tau/1000, max(from, 0), to)
	if err != nil {
		return fmt.Errorf("reading %s: %w", table, err)
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var w float64
		if err := rows.Scan(&k, &w); err != nil {
			return fmt.Errorf("reading %s: %w", table, err)
		}
		add(k, w*60000/tau)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("reading %s: %w", table, err)
	}
	return nil
}
