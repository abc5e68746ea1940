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
	addr AddrBuf        // for the address keys of events' clients
	look BaselineLookup // nil: the store has none

	// The learners, nil when off: a key they all hold needs no lookup.
	nc *newCountry
	vs *volumeSpike
	pa *privilegeAnomaly
	oe *objectEnum
	qs *quietSpike

	// fetched holds the hashes of keys and routes looked up, or found held, since a
	// detector last removed them: the check of most events, one probe. A key it lost
	// is checked against the detectors' tables again.
	fetched hashSet
	// evicted holds the hashes of keys and routes a detector evicted at max_keys and
	// that were not looked up since: those, the store has and the engine dropped.
	evicted hashSet
	// all says the store may hold keys the engine never loaded (the load filled a
	// limit): every key a detector does not hold is looked up, not only evicted ones.
	// Otherwise a flood of keys new to the store costs no lookups.
	all bool

	// The baselines of keys evicted with changes the store does not have yet: the
	// next SyncBaselines writes them, and a key that comes back before restores from
	// here. Each holds up to its detector's max_keys.
	keys       map[string]KeyBaseline
	clients    map[string]ClientBaseline
	privileged map[string]PrivilegeBaseline
	objects    map[string][]ObjectBaseline // by client
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
		objects: map[string][]ObjectBaseline{}, routes: map[string]RouteBaseline{}, lim: LimitsOf(e.cfg),
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
				f.removed(keyHash(k.names.client), evicted)
				if evicted && k.dirty {
					f.keepObject(d.baseline(slot))
				}
			})
		}
	}
	l := f.lim
	most := max(l.Keys, l.Routes, l.Clients, l.Objects, l.Privileged, 1)
	f.fetched, f.evicted = newHashSet(4*most), newHashSet(4*most)
	return f
}

// watchKeys has f forget a key of t when t removes it, and keep in m the baseline of
// one evicted with changes (dirty) not yet written.
func watchKeys[S, B any](f *fetcher, t *keyTable[S], dirty func(*S) bool, m map[string]B, limit int, baseline func(slot int32) B) {
	onRemove(t, func(slot int32, evicted bool) {
		f.removed(t.hashOf(slot), evicted)
		if evicted && dirty(&t.ents[slot].s) {
			keepEvicted(f, m, limit, t.keyOf(slot), baseline(slot))
		}
	})
}

// removed notes that a detector removed the key of hash h: evicted at max_keys, or
// expired.
func (f *fetcher) removed(h uint64, evicted bool) {
	f.fetched.forget(h)
	if evicted {
		f.evicted.add(h)
	}
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

// keepObject keeps o, the baseline of a client and route evicted with changes, for the
// next write, unless as many clients as object_enumeration's max_keys have some.
func (f *fetcher) keepObject(o ObjectBaseline) {
	os, ok := f.objects[o.Client]
	if !ok && len(f.objects) >= f.lim.Objects {
		f.lost++
		return
	}
	if i := slices.IndexFunc(os, func(x ObjectBaseline) bool { return x.Route == o.Route }); i >= 0 {
		os[i] = o
		return
	}
	f.objects[o.Client] = append(os, o)
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

// A hashSet is a lossy set of 64-bit hashes: set-associative, fetchWays entries (one
// cache line) a set, an entry the hash with its lowest bit set (0 is empty). It grows
// with the hashes added, a quarter full at most, up to room for most (a power of two,
// at most maxFetched); past that a new hash takes the place of an old one of its set.
type hashSet struct {
	entries []uint64
	mask    uint64
	filled  int // adds since the last growth
	most    int
}

// fetchWays is the entries of a hashSet's set.
const fetchWays = 8

func newHashSet(most int) hashSet {
	s := hashSet{most: max(min(1<<bits.Len(uint(max(most, 1)-1)), maxFetched), 1024)}
	s.grow(1024)
	return s
}

// set returns the entries h may be in, and its entry.
func (s *hashSet) set(h uint64) ([]uint64, uint64) {
	i := ((h >> 1) & s.mask) * fetchWays
	return s.entries[i : i+fetchWays : i+fetchWays], h | 1
}

func (s *hashSet) has(h uint64) bool {
	set, v := s.set(h)
	for _, x := range set {
		if x == v {
			return true
		}
	}
	return false
}

// add notes h, in an empty entry of its set, else in place of the one its own bits
// pick.
func (s *hashSet) add(h uint64) {
	if s.filled++; 4*s.filled > len(s.entries) && len(s.entries) < s.most {
		s.grow(2 * len(s.entries))
	}
	s.put(h)
}

func (s *hashSet) put(h uint64) {
	set, v := s.set(h)
	for i, x := range set {
		if x == 0 || x == v {
			set[i] = v
			return
		}
	}
	set[(h>>59)%fetchWays] = v
}

func (s *hashSet) forget(h uint64) {
	set, v := s.set(h)
	for i, x := range set {
		if x == v {
			set[i] = 0
		}
	}
}

// grow makes room for n entries (a power of two, at least fetchWays), keeping those
// held.
func (s *hashSet) grow(n int) {
	old := s.entries
	s.entries, s.mask, s.filled = make([]uint64, n), uint64(n/fetchWays-1), 0
	for _, v := range old {
		if v != 0 {
			s.put(v)
		}
	}
}

// FetchBaselines loads the stored baselines of the keys and routes in events that a
// detector evicted at max_keys and now sees again, and, when the store holds more than
// the engine loaded (a load filled a detector's max_keys), of every key and route in
// events that a detector does not hold: keys that are new to the store too cost no
// lookup, so a flood of made-up keys does not make one per batch. A key evicted with
// changes not yet written comes back with them. Call it before observing the events (Run
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
	keys, routes := f.wanted(events, e.wms.holds())
	if len(keys) == 0 && len(routes) == 0 {
		return nil
	}
	var b Baselines
	if f.look != nil {
		var err error
		if b, err = f.look.LookupBaselines(ctx, keys, routes); err != nil {
			// Asked again the next time they are seen.
			for _, list := range [2][]string{keys, routes} {
				for _, k := range list {
					h := keyHash(k)
					f.fetched.forget(h)
					f.evicted.add(h)
				}
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

// wanted returns the keys and routes of events, and of the records the partitions
// hold (held), that a detector that would track them does not hold and that were not
// looked up since, once each, and notes them as looked up. Held records are looked up
// with every batch until they are decided: they were looked up with their own batch,
// and the detectors may have evicted their keys since.
func (f *fetcher) wanted(events []ingest.Event, held [][]ingest.Event) (keys, routes []string) {
	f.wantKeys, f.wantRoutes, f.wantAt = f.wantKeys[:0], f.wantRoutes[:0], f.wantAt[:0]
	for _, h := range held {
		f.want(h)
	}
	f.want(events)
	return f.wantKeys, f.wantRoutes
}

// want adds to wantKeys and wantRoutes what wanted returns of events.
func (f *fetcher) want(events []ingest.Event) {
	keys, routes := f.wantKeys, f.wantRoutes
	for i := range events {
		ev := &events[i]
		client, byIP, objects := "", false, false
		if f.oe != nil {
			client, byIP, objects = asksObject(ev, &f.addr)
		}
		if ev.ClientKey != "" || objects {
			if client == "" {
				client = ev.ClientKey
			}
			if h := keyHash(client); !f.fetched.has(h) {
				f.fetched.add(h)
				if f.lookUp(h) && f.missing(ev, client, h, byIP, objects) {
					keys = append(keys, strings.Clone(client)) // the event's string shares a parser chunk
					f.wantAt = append(f.wantAt, ev.Time.UnixMilli())
				}
			}
		}
		if f.qs != nil && ev.Route != "" {
			f.route = append(append(append(f.route[:0], ev.Method...), ' '), ev.Route...)
			if h := xxhash.Sum64(f.route); !f.fetched.has(h) {
				f.fetched.add(h)
				if f.lookUp(h) && f.qs.tab.findBytes(f.route) < 0 {
					routes = append(routes, string(f.route))
				}
			}
		}
	}
	f.wantKeys, f.wantRoutes = keys, routes
}

// loaded notes what a load of the store returned: when it filled a limit, the store
// may hold keys the engine never loaded.
func (f *fetcher) loaded(b *Baselines) {
	l := f.lim
	full := func(n, limit int) bool { return limit > 0 && n >= limit }
	if full(len(b.Keys), l.Keys) || full(len(b.Routes), l.Routes) || full(len(b.Clients), l.Clients) ||
		full(len(b.Objects), l.Objects) || full(len(b.Privileged), l.Privileged) {
		f.all = true
	}
}

// lookUp reports whether the key or route of hash h may be in the store though not
// in the detectors: every one when the store holds more than the engine loaded, else
// those the engine evicted. It forgets the eviction: the lookup is about to bring it
// back.
func (f *fetcher) lookUp(h uint64) bool {
	if f.evicted.has(h) {
		f.evicted.forget(h)
		return true
	}
	return f.all
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
	return objects && f.oe.tab.find(f.oe.pairKey(h, byIP, routeHash(ev.Method, ev.Route))) < 0
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
	for _, k := range keys {
		if os, ok := f.objects[k]; ok {
			r.Objects = append(r.Objects, os...)
			delete(f.objects, k)
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
				if slot := d.tab.find(d.storedPairKey(o.Client, method, route)); slot >= 0 {
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
	if !f.holding() {
		return
	}
	u.Keys = addMissing(u.Keys, f.keys, func(x *KeyBaseline) string { return x.Key })
	u.Clients = addMissing(u.Clients, f.clients, func(x *ClientBaseline) string { return x.Key })
	u.Privileged = addMissing(u.Privileged, f.privileged, func(x *PrivilegeBaseline) string { return x.Key })
	u.Routes = addMissing(u.Routes, f.routes, func(x *RouteBaseline) string { return x.Route })
	if len(f.objects) > 0 {
		objects := map[[2]string]ObjectBaseline{}
		for _, os := range f.objects {
			for _, o := range os {
				objects[[2]string{o.Client, o.Route}] = o
			}
		}
		clear(f.objects)
		u.Objects = addMissing(u.Objects, objects, func(x *ObjectBaseline) [2]string { return [2]string{x.Client, x.Route} })
	}
	u.Sort()
}

// holding reports whether f holds baselines of evicted keys for the next write.
func (f *fetcher) holding() bool {
	return len(f.keys)+len(f.clients)+len(f.privileged)+len(f.objects)+len(f.routes) > 0
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
