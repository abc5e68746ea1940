package detectors

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"slices"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/gatewatch/gatewatch/ingest"
)

// A BaselineLookup is a BaselineStore that reads the baselines of the keys it is given.
// The detectors hold at most max_keys each, and evict the coldest past it; with a
// lookup, a key evicted and seen again is judged against its stored baseline, not as a
// stranger (see Engine.FetchBaselines).
type BaselineLookup interface {
	// LookupBaselines returns, sorted, the stored baselines of keys (client keys, and
	// the client IPs object_enumeration keys requests without a client key by): their
	// KeyBaseline, ClientBaseline and PrivilegeBaseline, and every ObjectBaseline of
	// theirs; and of routes ("METHOD /route"). A key or route the store does not hold
	// is left out.
	LookupBaselines(ctx context.Context, keys, routes []string) (Baselines, error)
}

// fetcher is the engine's side of on-demand loading: which keys and routes it looked
// up since a detector last let go of them, and the baselines of the keys it evicted
// with changes not yet written.
type fetcher struct {
	look BaselineLookup // nil: the store has none

	// The learners, nil when off: a key they all hold needs no lookup.
	nc *newCountry
	vs *volumeSpike
	pa *privilegeAnomaly
	oe *objectEnum
	qs *quietSpike

	// fetched holds the hashes of keys and routes looked up, or found held, since a
	// detector last removed them (0: empty): the check of most events, one probe.
	// It grows with the keys added, a quarter full at most, up to room for four times
	// the keys the largest learner holds (at most maxFetched); a key pushed out is
	// checked against the detectors' tables again, and looked up only when one does not
	// hold it.
	fetched []uint64
	mask    uint64
	filled  int // adds since the last growth
	most    int // the most entries it grows to

	// The baselines of keys evicted with changes the store does not have yet: the
	// next SyncBaselines writes them, and a key that comes back before restores from
	// here. Each holds up to its detector's max_keys.
	keys       map[string]KeyBaseline
	clients    map[string]ClientBaseline
	privileged map[string]PrivilegeBaseline
	objects    map[[2]string]ObjectBaseline
	routes     map[string]RouteBaseline
	lim        BaselineLimits
	lost       uint64 // evicted changes dropped at the limits: never written
	lostLogged uint64
	failing    bool // the last lookup failed

	wantKeys, wantRoutes []string // scratch
	wantAt               []int64  // the first event time of each of wantKeys
	route                []byte
}

// maxFetched bounds the fetched cache: 16 MiB.
const maxFetched = 1 << 21

// newFetcher sets up on-demand loading for e's learners, from store when it has a
// lookup.
func newFetcher(e *Engine, store BaselineStore) *fetcher {
	f := &fetcher{
		keys: map[string]KeyBaseline{}, clients: map[string]ClientBaseline{}, privileged: map[string]PrivilegeBaseline{},
		objects: map[[2]string]ObjectBaseline{}, routes: map[string]RouteBaseline{}, lim: LimitsOf(e.cfg),
	}
	f.look, _ = store.(BaselineLookup)
	for _, d := range e.dets {
		switch d := d.(type) {
		case *newCountry:
			f.nc = d
			watchKeys(f, d.tab, func(k *ncKey) bool { return k.dirty }, f.keys, f.lim.Keys, d.baseline)
		case *volumeSpike:
			f.vs = d
			watchKeys(f, d.tab, func(k *cvKey) bool { return k.dirty }, f.clients, f.lim.Clients, d.baseline)
		case *privilegeAnomaly:
			f.pa = d
			watchKeys(f, d.tab, func(k *paKey) bool { return k.dirty }, f.privileged, f.lim.Privileged, d.baseline)
		case *quietSpike:
			f.qs = d
			watchKeys(f, d.tab, func(k *qsKey) bool { return k.dirty }, f.routes, f.lim.Routes, d.baseline)
		case *objectEnum:
			// Its table is keyed by client and route; the lookups by client.
			f.oe = d
			onRemove(d.tab, func(slot int32, evicted bool) {
				k := &d.tab.ents[slot].s
				if k.names == nil {
					return
				}
				f.forget(keyHash(k.names.client))
				if evicted && k.dirty {
					o := d.baseline(slot)
					keepEvicted(f, f.objects, f.lim.Objects, [2]string{o.Client, o.Route}, o)
				}
			})
		}
	}
	l := f.lim
	most := max(l.Keys, l.Routes, l.Clients, l.Objects, l.Privileged, 1)
	f.most = max(min(1<<bits.Len(uint(4*most-1)), maxFetched), 1024)
	f.grow(1024)
	return f
}

// watchKeys has f forget a key of t when t removes it, and keep in m the baseline of
// one evicted with changes (dirty) not yet written.
func watchKeys[S, B any](f *fetcher, t *keyTable[S], dirty func(*S) bool, m map[string]B, limit int, baseline func(slot int32) B) {
	onRemove(t, func(slot int32, evicted bool) {
		f.forget(t.hashOf(slot))
		if evicted && dirty(&t.ents[slot].s) {
			keepEvicted(f, m, limit, t.keyOf(slot), baseline(slot))
		}
	})
}

// onRemove runs f when t removes a key, before what the detector already runs then.
func onRemove[S any](t *keyTable[S], f func(slot int32, evicted bool)) {
	prev := t.onRemove
	t.onRemove = func(slot int32, evicted bool) {
		f(slot, evicted)
		if prev != nil {
			prev(slot, evicted)
		}
	}
}

// keepEvicted keeps b, the baseline of key evicted with changes, for the next write,
// unless m already holds limit of them.
func keepEvicted[K comparable, B any](f *fetcher, m map[K]B, limit int, key K, b B) {
	if _, ok := m[key]; !ok && len(m) >= limit {
		f.lost++
		return
	}
	m[key] = b
}

// The fetched cache is set-associative: a set of fetchWays entries (one cache line)
// per hash, so that keys seldom push out each other while there is room. An entry is
// the hash with its lowest bit set, since 0 is empty.
const fetchWays = 8

// set returns the entries h may be in, and its entry.
func (f *fetcher) set(h uint64) ([]uint64, uint64) {
	i := ((h >> 1) & f.mask) * fetchWays
	return f.fetched[i : i+fetchWays : i+fetchWays], h | 1
}

func (f *fetcher) has(h uint64) bool {
	set, v := f.set(h)
	for _, x := range set {
		if x == v {
			return true
		}
	}
	return false
}

// add notes h, in an empty entry of its set, else in place of the one its own bits
// pick.
func (f *fetcher) add(h uint64) {
	if f.filled++; 4*f.filled > len(f.fetched) && len(f.fetched) < f.most {
		f.grow(2 * len(f.fetched))
	}
	f.put(h)
}

func (f *fetcher) put(h uint64) {
	set, v := f.set(h)
	for i, x := range set {
		if x == 0 || x == v {
			set[i] = v
			return
		}
	}
	set[(h>>59)%fetchWays] = v
}

func (f *fetcher) forget(h uint64) {
	set, v := f.set(h)
	for i, x := range set {
		if x == v {
			set[i] = 0
		}
	}
}

// grow makes room for n entries (a power of two, at least fetchWays), keeping those
// held.
func (f *fetcher) grow(n int) {
	old := f.fetched
	f.fetched, f.mask, f.filled = make([]uint64, n), uint64(n/fetchWays-1), 0
	for _, v := range old {
		if v != 0 {
			f.put(v)
		}
	}
}

// FetchBaselines loads the stored baselines of the keys and routes in events that the
// engine has not looked up since its detectors last held them: keys new to it, and
// keys a detector evicted at max_keys and now sees again. A key evicted with changes
// not yet written comes back with them. Call it before observing the events (Run
// does); it is the one place, besides the loads and writes, where the engine does I/O,
// so that Observe and ObserveBatch do none. Keys the detectors hold keep their state;
// a stored baseline the detector would expire at once is skipped. A store that has no
// lookup (see BaselineLookup) leaves the evicted keys' unwritten changes as the only
// source.
//
// When the lookup fails the events are observed without what it would have loaded,
// and the keys are looked up again the next time they come; the error says so.
func (e *Engine) FetchBaselines(ctx context.Context, events []ingest.Event) error {
	f := e.fetch
	keys, routes := f.wanted(events)
	if len(keys) == 0 && len(routes) == 0 {
		return nil
	}
	var b Baselines
	if f.look != nil {
		var err error
		if b, err = f.look.LookupBaselines(ctx, keys, routes); err != nil {
			for _, k := range keys {
				f.forget(keyHash(k))
			}
			for _, r := range routes {
				f.forget(keyHash(r))
			}
			if !f.failing {
				f.failing = true
				e.log.Warn("cannot look up the baselines of keys seen again; they are judged without them until the store answers", "err", err)
			}
			return fmt.Errorf("detectors: look up baselines: %w", err)
		}
		if f.failing {
			f.failing = false
			e.log.Info("baseline lookups work again")
		}
	}
	restored := f.restore(keys, routes, &b)
	e.adopt(&b, restored, keys, f.wantAt)
	return nil
}

// wanted returns the keys and routes of events that a detector that would track them
// does not hold and that were not looked up since, once each, and notes them as
// looked up.
func (f *fetcher) wanted(events []ingest.Event) (keys, routes []string) {
	keys, routes = f.wantKeys[:0], f.wantRoutes[:0]
	f.wantAt = f.wantAt[:0]
	for i := range events {
		ev := &events[i]
		client, byIP, objects := "", false, false
		if f.oe != nil {
			client, byIP, objects = asksObject(ev)
		}
		if ev.ClientKey != "" || objects {
			if client == "" {
				client = ev.ClientKey
			}
			if h := keyHash(client); !f.has(h) {
				f.add(h)
				if f.missing(ev, client, h, byIP, objects) {
					keys = append(keys, strings.Clone(client)) // the event's string shares a parser chunk
					f.wantAt = append(f.wantAt, ev.Time.UnixMilli())
				}
			}
		}
		if f.qs != nil && ev.Route != "" {
			f.route = append(append(append(f.route[:0], ev.Method...), ' '), ev.Route...)
			if h := xxhash.Sum64(f.route); !f.has(h) {
				f.add(h)
				if f.qs.tab.findBytes(f.route) < 0 {
					routes = append(routes, string(f.route))
				}
			}
		}
	}
	f.wantKeys, f.wantRoutes = keys, routes
	return keys, routes
}

// missing reports whether a learner does not hold ev's client (client, of hash h: its
// client key, else its IP for object_enumeration): a lookup gets every kind of
// baseline of it, whatever the event, so that a key looked up is one whose every
// stored baseline is in the detectors. Only object_enumeration's pair is the event's.
func (f *fetcher) missing(ev *ingest.Event, client string, h uint64, byIP, objects bool) bool {
	if ev.ClientKey != "" {
		if f.nc != nil && f.nc.tab.findHash(client, h) < 0 || f.vs != nil && f.vs.tab.findHash(client, h) < 0 ||
			f.pa != nil && f.pa.tab.findHash(client, h) < 0 {
			return true
		}
	}
	return objects && f.oe.tab.find(f.oe.pairKey(h, byIP, ev.Method, ev.Route)) < 0
}

// restore moves into b the unwritten baselines of the evicted keys and routes among
// keys and routes, in place of what the store had, and returns them to be written
// again.
func (f *fetcher) restore(keys, routes []string, b *Baselines) Baselines {
	var r Baselines
	if len(f.keys)+len(f.clients)+len(f.privileged)+len(f.objects)+len(f.routes) == 0 {
		return r
	}
	for _, k := range keys {
		if v, ok := f.keys[k]; ok {
			r.Keys = append(r.Keys, v)
			delete(f.keys, k)
		}
		if v, ok := f.clients[k]; ok {
			r.Clients = append(r.Clients, v)
			delete(f.clients, k)
		}
		if v, ok := f.privileged[k]; ok {
			r.Privileged = append(r.Privileged, v)
			delete(f.privileged, k)
		}
	}
	if len(f.objects) > 0 && len(keys) > 0 {
		want := map[string]bool{}
		for _, k := range keys {
			want[k] = true
		}
		for id, o := range f.objects {
			if want[id[0]] {
				r.Objects = append(r.Objects, o)
				delete(f.objects, id)
			}
		}
	}
	for _, rt := range routes {
		if v, ok := f.routes[rt]; ok {
			r.Routes = append(r.Routes, v)
			delete(f.routes, rt)
		}
	}
	r.Sort()
	b.Keys = overlay(b.Keys, r.Keys, func(x *KeyBaseline) string { return x.Key })
	b.Clients = overlay(b.Clients, r.Clients, func(x *ClientBaseline) string { return x.Key })
	b.Privileged = overlay(b.Privileged, r.Privileged, func(x *PrivilegeBaseline) string { return x.Key })
	b.Objects = overlay(b.Objects, r.Objects, func(x *ObjectBaseline) string { return x.Client + "\x00" + x.Route })
	b.Routes = overlay(b.Routes, r.Routes, func(x *RouteBaseline) string { return x.Route })
	return r
}

// overlay returns list with the entries of newer in place of those of the same key,
// sorted by key.
func overlay[T any](list, newer []T, key func(*T) string) []T {
	if len(newer) == 0 {
		return list
	}
	out := slices.DeleteFunc(list, func(x T) bool {
		_, found := slices.BinarySearchFunc(newer, key(&x), func(n T, k string) int { return strings.Compare(key(&n), k) })
		return found
	})
	out = append(out, newer...)
	slices.SortFunc(out, func(x, y T) int { return strings.Compare(key(&x), key(&y)) })
	return out
}

// adopt adds the keys and routes of b that the detectors do not hold, unless they
// would expire at once, evicting the coldest past max_keys: they are about to be seen.
// Those of restored are marked changed, to be written again. The client keys among
// keys are marked seen at at, the time of their first event in the batch, as that
// event will: otherwise an adopted key, last seen long ago, would be the coldest, and
// the first new key of the batch would evict it again before its event.
func (e *Engine) adopt(b *Baselines, restored Baselines, keys []string, at []int64) {
	wm := int64(math.MinInt64)
	if e.wms.started {
		wm = e.wms.wm
	}
	for _, d := range e.dets {
		switch d := d.(type) {
		case *newCountry:
			d.adoptFetched(b.Keys, wm)
			touchAll(d.tab, keys, at)
			for i := range restored.Keys {
				if slot := d.tab.find(restored.Keys[i].Key); slot >= 0 {
					d.markDirty(slot)
				}
			}
		case *volumeSpike:
			d.adoptAll(b.Clients, wm, false)
			touchAll(d.tab, keys, at)
			for i := range restored.Clients {
				if slot := d.tab.find(restored.Clients[i].Key); slot >= 0 {
					d.markDirty(slot)
				}
			}
		case *privilegeAnomaly:
			d.adoptAll(b.Privileged, wm, false)
			for i := range restored.Privileged {
				if slot := d.tab.find(restored.Privileged[i].Key); slot >= 0 {
					d.markDirty(slot)
				}
			}
		case *objectEnum:
			d.adoptAll(b.Objects, wm, false)
			for i := range restored.Objects {
				o := &restored.Objects[i]
				method, route, _ := strings.Cut(o.Route, " ")
				if slot := d.tab.find(d.pairKey(keyHash(o.Client), isIP(o.Client), method, route)); slot >= 0 {
					d.markDirty(slot)
				}
			}
		case *quietSpike:
			d.adoptFetched(b.Routes, wm)
			for i := range restored.Routes {
				if slot := d.tab.find(restored.Routes[i].Route); slot >= 0 {
					d.markDirty(slot)
				}
			}
		}
	}
	e.updateGauges()
}

// touchAll marks the keys t holds among keys seen at their time in at.
func touchAll[S any](t *keyTable[S], keys []string, at []int64) {
	for i, k := range keys {
		if slot := t.find(k); slot >= 0 {
			t.touch(slot, at[i])
		}
	}
}

// adoptFetched adds the looked-up keys the table does not hold and would not expire
// at once at wm (math.MinInt64: any), oldest first, evicting the coldest past
// max_keys.
func (d *newCountry) adoptFetched(keys []KeyBaseline, wm int64) {
	cutoff := d.keepFrom(wm)
	var fresh []keyByLast
	for i := range keys {
		kb := &keys[i]
		if last := kb.lastSeen(); kb.Key != "" && last >= cutoff && d.tab.find(kb.Key) < 0 {
			fresh = append(fresh, keyByLast{kb, last})
		}
	}
	slices.SortFunc(fresh, func(x, y keyByLast) int {
		return cmp.Or(cmp.Compare(x.last, y.last), strings.Compare(x.kb.Key, y.kb.Key))
	})
	for _, o := range fresh {
		d.adopt(o.kb, o.last)
	}
}

// adoptFetched adds the looked-up routes the table does not hold and would not expire
// at once at wm (math.MinInt64: any), oldest first, evicting the coldest past
// max_keys.
func (d *quietSpike) adoptFetched(routes []RouteBaseline, wm int64) {
	cutoff := d.keepFrom(wm)
	var fresh []*RouteBaseline
	for i := range routes {
		r := &routes[i]
		if strings.Contains(r.Route, " ") && r.recency() >= cutoff && d.tab.find(r.Route) < 0 {
			fresh = append(fresh, r)
		}
	}
	slices.SortFunc(fresh, func(x, y *RouteBaseline) int {
		return cmp.Or(cmp.Compare(x.recency(), y.recency()), strings.Compare(x.Route, y.Route))
	})
	for _, r := range fresh {
		d.adopt(r)
	}
}

// takeEvicted adds to u the baselines of evicted keys not yet written, except those u
// already has (a newer state of a key that came back), and forgets them.
func (f *fetcher) takeEvicted(u *Baselines, log *slog.Logger) {
	if f.lost > f.lostLogged {
		log.Warn("the changes of evicted keys were lost: more keys evicted between two baseline writes than max_keys",
			"lost", f.lost-f.lostLogged)
		f.lostLogged = f.lost
	}
	if len(f.keys)+len(f.clients)+len(f.privileged)+len(f.objects)+len(f.routes) == 0 {
		return
	}
	u.Keys = addMissing(u.Keys, f.keys, func(x *KeyBaseline) string { return x.Key })
	u.Clients = addMissing(u.Clients, f.clients, func(x *ClientBaseline) string { return x.Key })
	u.Privileged = addMissing(u.Privileged, f.privileged, func(x *PrivilegeBaseline) string { return x.Key })
	u.Routes = addMissing(u.Routes, f.routes, func(x *RouteBaseline) string { return x.Route })
	u.Objects = addMissing(u.Objects, f.objects, func(x *ObjectBaseline) [2]string { return [2]string{x.Client, x.Route} })
	u.Sort()
}

// addMissing appends to list the values of m whose key list lacks, and empties m.
func addMissing[K comparable, T any](list []T, m map[K]T, key func(*T) K) []T {
	if len(m) == 0 {
		return list
	}
	for i := range list {
		delete(m, key(&list[i]))
	}
	for _, v := range m {
		list = append(list, v)
	}
	clear(m)
	return list
}
