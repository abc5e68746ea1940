package detectors

import (
	"cmp"
	"strings"
)

// A RecentSet keeps the most recent baselines offered to it, up to a BaselineLimits,
// for a store that reads its baselines one at a time: it holds no more than the
// limits whatever the store holds (see BaselineStore.LoadBaselines).
type RecentSet struct {
	keys       topN[KeyBaseline]
	routes     topN[RouteBaseline]
	clients    topN[ClientBaseline]
	objects    topN[ObjectBaseline]
	privileged topN[PrivilegeBaseline]
}

// NewRecentSet returns an empty set that keeps up to lim.
func NewRecentSet(lim BaselineLimits) *RecentSet {
	return &RecentSet{
		keys: topN[KeyBaseline]{n: lim.Keys, older: func(x, y *KeyBaseline) bool {
			return olderThan(x.lastSeen(), y.lastSeen(), x.Key, y.Key)
		}},
		routes: topN[RouteBaseline]{n: lim.Routes, older: func(x, y *RouteBaseline) bool {
			return olderThan(x.recency(), y.recency(), x.Route, y.Route)
		}},
		clients: topN[ClientBaseline]{n: lim.Clients, older: func(x, y *ClientBaseline) bool {
			return olderThan(x.recency(), y.recency(), x.Key, y.Key)
		}},
		objects: topN[ObjectBaseline]{n: lim.Objects, older: func(x, y *ObjectBaseline) bool {
			if a, b := x.PeakAt.UnixMilli(), y.PeakAt.UnixMilli(); a != b {
				return a < b
			}
			return cmp.Or(strings.Compare(x.Client, y.Client), strings.Compare(x.Route, y.Route)) > 0
		}},
		privileged: topN[PrivilegeBaseline]{n: lim.Privileged, older: func(x, y *PrivilegeBaseline) bool {
			return olderThan(x.LastSeen.UnixMilli(), y.LastSeen.UnixMilli(), x.Key, y.Key)
		}},
	}
}

// olderThan orders baselines for a RecentSet: by their latest time, and of two at the
// same time the larger key goes first, so the set is the same whatever the order of
// reading.
func olderThan(a, b int64, ka, kb string) bool {
	if a != b {
		return a < b
	}
	return ka > kb
}

func (r *RouteBaseline) recency() int64 { return max(r.AsOf.UnixMilli(), r.PeakAt.UnixMilli()) }

func (c *ClientBaseline) recency() int64 { return max(c.AsOf.UnixMilli(), c.PeakAt.UnixMilli()) }

// AddKey offers k; the set keeps it while it is among the most recent.
func (r *RecentSet) AddKey(k KeyBaseline) { r.keys.add(k) }

// AddRoute offers a route's baseline.
func (r *RecentSet) AddRoute(b RouteBaseline) { r.routes.add(b) }

// AddClient offers a client's baseline.
func (r *RecentSet) AddClient(c ClientBaseline) { r.clients.add(c) }

// AddObject offers a client and route's baseline.
func (r *RecentSet) AddObject(o ObjectBaseline) { r.objects.add(o) }

// AddPrivileged offers a privileged key's baseline.
func (r *RecentSet) AddPrivileged(p PrivilegeBaseline) { r.privileged.add(p) }

// Baselines returns what the set kept, each list sorted by its key, and empties the
// set.
func (r *RecentSet) Baselines() Baselines {
	b := Baselines{Keys: r.keys.take(), Routes: r.routes.take(), Clients: r.clients.take(),
		Objects: r.objects.take(), Privileged: r.privileged.take()}
	b.Sort()
	return b
}

// topN keeps the n newest items offered, as a min-heap by older: the oldest kept is at
// the root, and replaced when a newer one comes.
type topN[T any] struct {
	n     int
	older func(x, y *T) bool
	items []T
}

func (h *topN[T]) add(v T) {
	if h.n <= 0 {
		return
	}
	if len(h.items) < h.n {
		h.items = append(h.items, v)
		h.up(len(h.items) - 1)
		return
	}
	if !h.older(&h.items[0], &v) {
		return
	}
	h.items[0] = v
	h.down(0)
}

func (h *topN[T]) take() []T {
	items := h.items
	h.items = nil
	return items
}

func (h *topN[T]) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.older(&h.items[i], &h.items[p]) {
			return
		}
		h.items[i], h.items[p] = h.items[p], h.items[i]
		i = p
	}
}

func (h *topN[T]) down(i int) {
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.older(&h.items[r], &h.items[l]) {
			m = r
		}
		if !h.older(&h.items[m], &h.items[i]) {
			return
		}
		h.items[i], h.items[m] = h.items[m], h.items[i]
		i = m
	}
}
