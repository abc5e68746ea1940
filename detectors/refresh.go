package detectors

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"
)

// RefreshBaselines loads the BaselineStore again and merges it into what the detectors
// hold; before the first load it is LoadBaselines. Run calls it each time the watermark
// has advanced by baseline_refresh since the last load; call it yourself when you know
// keys just moved here (a consumer-group rebalance). Like Observe, it must not run
// concurrently with the engine's other methods.
//
// A store that can tell what changed (BaselineChanges) loads only the baselines written
// since the last load, or a few more: the merge below only ever adds to what the
// detectors hold, so a key the load lacks is no news, and merging the changes is
// merging the whole store but for the stored keys that are neither changed nor held
// (evicted at max_keys, or never taken for want of room), which a full load could
// adopt once there is room again. Those are looked up when they come (see
// Engine.FetchBaselines): a merge that leaves a key out for want of room, partial or
// not, has every key the detectors do not hold looked up from then on.
//
// The load is bounded as LoadBaselines' is: the most recent baselines, up to each
// detector's max_keys. Keys and routes the engine does not track are adopted with their
// stored baselines, the most recent first, into free room only: a refresh never evicts
// a tracked key.
// Stored keys that are outside new_country's history, and routes that
// quiet_endpoint_spike would expire at once, are skipped. For a client key the engine
// tracks, the merge is conservative:
//
//   - its countries are the union of its own and the stored ones; a country both hold
//     gets the earlier first-seen, the later last-seen and the larger event count; a
//     stored country outside history (by the key's latest country) is left out;
//   - its first-seen time is the earlier of the two;
//   - its event count is the larger of the two, not their sum: the store holds whole
//     baselines (UpdateBaselines upserts whole state, not deltas) written by several
//     instances, each of which may already include the others' counts and this
//     instance's own earlier writes, so a sum would count the same events twice or
//     more. The larger is a lower bound that never double counts.
//
// A key whose merge changed it is written back by the next SyncBaselines. A route the
// engine tracks keeps its own rate: rates are not mergeable the way country sets are.
// The start of traffic becomes the earlier of the two.
//
// The merge is idempotent: merging one snapshot twice changes nothing the second time.
// When the store holds nothing but what this engine loaded and wrote, it changes
// nothing at all (every stored value is an earlier state of the engine's own, and keys
// and routes the engine expired are skipped), so a replay with refreshes raises the same
// alerts, byte for byte, as one without. The exception is keys the engine evicted at
// max_keys, or could not load for it: once there is room again a refresh may adopt
// them, as a restart would.
func (e *Engine) RefreshBaselines(ctx context.Context) error {
	if !e.loaded {
		return e.LoadBaselines(ctx)
	}
	b, partial, err := e.loadStore(ctx, true)
	if err != nil {
		return fmt.Errorf("detectors: refresh baselines: %w", err)
	}
	wm := int64(math.MinInt64)
	if e.wms.started {
		wm = e.wms.wm
	}
	e.sawTraffic(&b)
	e.fetch.loaded(&b)
	var adopted, merged int
	for _, l := range e.learners {
		a, m, left := l.merge(&b, wm)
		adopted, merged = adopted+a, merged+m
		if left {
			// The store holds a key the engine did not take: it is looked up when seen.
			e.fetch.all = true
		}
	}
	e.loadWM, e.loadArmed = e.wms.wm, e.wms.started
	lvl := slog.LevelDebug
	if adopted+merged > 0 {
		lvl = slog.LevelInfo
	}
	e.log.Log(ctx, lvl, "baselines refreshed", "partial", partial, "keys", len(b.Keys), "routes", len(b.Routes), "clients", len(b.Clients),
		"objects", len(b.Objects), "privileged", len(b.Privileged), "adopted", adopted, "merged", merged)
	e.updateGauges()
	return nil
}

// refreshDue reports whether the watermark has advanced by baseline_refresh since the
// last load. It reads event time only, and allocates nothing.
func (e *Engine) refreshDue() bool {
	if e.refresh <= 0 || !e.wms.started {
		return false
	}
	if !e.loadArmed {
		// The last load came before the first event: count from the first watermark.
		e.loadWM, e.loadArmed = e.wms.wm, true
		return false
	}
	return e.wms.wm-e.loadWM >= e.refresh
}

// refreshMinWall is the least wall-clock time between two periodic refreshes of an
// engine with a clock (live). Refreshes follow event time, one every baseline_refresh
// of it, and each is a round trip to the store that holds detection up (tens to
// hundreds of milliseconds with ClickHouse). Live, event time keeps pace with the
// clock and baseline_refresh is far longer than this; reading a backlog, event time
// runs ahead, and two hours read in a minute would pay 24 refreshes.
const refreshMinWall = 10 * time.Second

// refreshIfDue is Run's periodic refresh. A store that fails to load is logged and
// tried again after another baseline_refresh: detection goes on with the baselines in
// hand, which is what it had before the attempt.
func (e *Engine) refreshIfDue(ctx context.Context) {
	if !e.refreshDue() {
		return
	}
	if e.now != nil {
		now := e.now()
		if !e.lastRefresh.IsZero() && now.Sub(e.lastRefresh) < refreshMinWall {
			return // due again at the next batch after refreshMinWall
		}
		e.lastRefresh = now
	}
	if err := e.RefreshBaselines(ctx); err != nil {
		e.loadWM = e.wms.wm
		e.log.Warn("baseline refresh failed; retrying after baseline_refresh", "err", err)
	}
}

// merge folds stored keys into the table (see Engine.RefreshBaselines) at watermark wm
// (math.MinInt64: no event yet) and returns how many keys it adopted and how many
// tracked ones it changed.
func (d *newCountry) merge(b *Baselines, wm int64) (adopted, merged int, left bool) {
	keys := b.Keys
	cutoff := d.keepFrom(wm)
	var fresh []keyByLast
	for i := range keys {
		kb := &keys[i]
		if kb.Key == "" {
			continue
		}
		if slot := d.tab.find(kb.Key); slot >= 0 {
			if d.mergeKey(slot, kb) {
				merged++
			}
			continue
		}
		if last := kb.lastSeen(); last >= cutoff {
			fresh = append(fresh, keyByLast{kb, last})
		}
	}
	// The most recent first, while there is room.
	slices.SortFunc(fresh, func(x, y keyByLast) int {
		return cmp.Or(cmp.Compare(y.last, x.last), strings.Compare(x.kb.Key, y.kb.Key))
	})
	for _, o := range fresh {
		if d.tab.live >= d.tab.max {
			break
		}
		d.adopt(o.kb, o.last)
		adopted++
	}
	return adopted, merged, adopted < len(fresh)
}

// keepFrom is the last-seen time before which a stored key is expired at watermark wm
// (math.MinInt64: no event yet, none is), or would be at once.
func (d *newCountry) keepFrom(wm int64) int64 {
	if wm == math.MinInt64 {
		return math.MinInt64
	}
	return wm - d.history
}

// keepFrom is the time (RouteBaseline.recency) before which a stored route is expired
// at watermark wm (math.MinInt64: no event yet, none is): what advance(wm) expires,
// plus a bucket, since a route's rate is as of the end of the bucket it last folded,
// up to a bucket after its last event, by which the table expires it.
func (d *quietSpike) keepFrom(wm int64) int64 {
	if wm == math.MinInt64 {
		return math.MinInt64
	}
	return d.expiry(wm) + d.lay.width
}

// mergeKey merges the stored baseline kb into the tracked key at slot and reports
// whether that changed it. Zero stored times are unknown and merge nothing.
func (d *newCountry) mergeKey(slot int32, kb *KeyBaseline) bool {
	k := &d.tab.ents[slot].s
	changed := false
	if !kb.FirstSeen.IsZero() {
		if f := kb.FirstSeen.UnixMilli(); f < k.first {
			k.first, changed = f, true
		}
	}
	if total := k.total(); kb.Events > total {
		// The other instance's events are older than any pending candidate's slot.
		k.settled += kb.Events - total
		changed = true
	}
	for _, c := range kb.Countries {
		code := packCountry(c.Country)
		if code == 0 || c.LastSeen.IsZero() {
			continue
		}
		last := c.LastSeen.UnixMilli()
		first := last
		if !c.FirstSeen.IsZero() {
			first = min(c.FirstSeen.UnixMilli(), last)
		}
		events := uint32(min(c.Events, math.MaxUint32))
		if have := k.country(code); have != nil {
			if first < have.first {
				have.first, changed = first, true
			}
			if last > have.last {
				have.last, changed = last, true
			}
			if events > have.events {
				have.events, changed = events, true
			}
			continue
		}
		// Outside history by the key's latest country: the engine forgot it, or would
		// have, so adding it back would undo that.
		if last < k.latest()-d.history {
			continue
		}
		d.forget(k, last-d.history)
		nc := k.add(code, first)
		nc.last, nc.events = last, events
		changed = true
	}
	if changed {
		d.markDirty(slot)
	}
	return changed
}

// latest returns the latest last-seen time of the key's countries, math.MinInt64/2
// when it has none.
func (k *ncKey) latest() int64 {
	l := int64(math.MinInt64 / 2)
	for i := 0; i < int(k.nCC); i++ {
		l = max(l, k.at(i).last)
	}
	return l
}

// merge folds a stored snapshot into the routes (see Engine.RefreshBaselines) at
// watermark wm (math.MinInt64: no event yet) and returns how many routes it adopted.
// A route the detector tracks keeps its own rate and peak.
func (d *quietSpike) merge(b *Baselines, wm int64) (adopted, merged int, left bool) {
	cutoff := d.keepFrom(wm)
	var fresh []*RouteBaseline
	for i := range b.Routes {
		r := &b.Routes[i]
		if strings.Contains(r.Route, " ") && r.recency() >= cutoff && d.tab.find(r.Route) < 0 {
			fresh = append(fresh, r)
		}
	}
	slices.SortFunc(fresh, func(x, y *RouteBaseline) int {
		return cmp.Or(y.AsOf.Compare(x.AsOf), strings.Compare(x.Route, y.Route))
	})
	for _, r := range fresh {
		if d.tab.live >= d.tab.max {
			break
		}
		d.adopt(r)
		adopted++
	}
	return adopted, 0, adopted < len(fresh)
}
