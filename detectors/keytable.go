package detectors

import (
	"math/rand/v2"
	"strings"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

// A keyTable holds one detector's per-key state S in a slab, so that an event for a
// known key costs one hash, a probe of a compact index and the key's own entry, with no
// allocation; a new key costs amortised slab and index growth and, for keys longer than
// inlineKey bytes, one allocation.
//
// The index is open addressing with linear probing over 8-byte cells (a 32-bit tag,
// 32 bits of slot), kept at most half full, and deletes shift back instead of leaving
// tombstones: keys come and go all the time. Keys up to inlineKey bytes live in the
// entry itself, so comparing one touches the cache line the event updates anyway.
//
// A key's tag is its hash multiplied by a random odd number of the table's own and cut
// to its top 32 bits, and its probe starts at the tag's top bits (multiply-shift
// hashing). The hash alone would not do: keys are chosen by clients (paths and routes
// by anyone who sends a request), the hash is public, and keys crafted to start at one
// cell would make every probe walk past all of them. No client knows the multiplier,
// so none can aim keys at a cell; it changes nothing but where keys sit in the index.
//
// Expiry and eviction use a wheel of time periods instead of an LRU list: relinking a
// list on every event would touch two more cache lines per event. A key is filed under
// the period of its last event time whenever that moves into a new period, so filing
// costs an append about once per key per period, and removing every key whose last
// event is before some time pops whole periods. Entries whose key was refiled, or whose
// slot was reused (the generation differs), are skipped when popped.
type keyTable[S any] struct {
	index []uint64 // 0: empty; else tag<<32 | slot+1
	mask  uint64
	mul   uint64 // odd, random: see tagOf
	shift uint   // 32 - log2(len(index)): home is tag>>shift
	ents  []entry[S]
	long  map[int32]string // keys longer than inlineKey, by slot
	free  []int32
	live  int
	max   int

	pshift uint        // a wheel period is 1<<pshift ms: a shift, not a division, per event
	wheel  [][]slotRef // ring of periods; wheel[p%len] files keys last seen in period p
	base   int64       // oldest period still filed
	based  bool        // base is set (by the first filing)
	cursor int         // entries of the oldest period already popped by evictions

	// onRemove releases what the detector keeps for a key outside the slab. It runs
	// before the slot is cleared.
	onRemove func(slot int32, evicted bool)

	evictions uint64
	expired   uint64
}

// inlineKey is the longest key kept inside its entry: client keys and consumer ids
// (UUIDs are 36), token fingerprints (32 hex digits), IPs and most routes. Longer keys
// live in a side map.
const inlineKey = 40

type entry[S any] struct {
	kl   uint8 // length of an inline key; longKey for one in the side map
	live bool
	hot  bool // on its detector's hot list (windowed)
	gen  uint32
	last int64 // largest event time of the key, ms
	kb   [inlineKey]byte
	s    S
}

const longKey = 0xff

// keyOf returns slot's key as a string of its own: slots are reused, so nothing may
// keep a string that points into the slab.
func (t *keyTable[S]) keyOf(slot int32) string {
	e := &t.ents[slot]
	if e.kl == longKey {
		return t.long[slot]
	}
	return string(e.kb[:e.kl])
}

// hashOf is keyHash of slot's key, without making a string of it.
func (t *keyTable[S]) hashOf(slot int32) uint64 {
	e := &t.ents[slot]
	if e.kl == longKey {
		return keyHash(t.long[slot])
	}
	return xxhash.Sum64(e.kb[:e.kl])
}

func (t *keyTable[S]) is(slot int32, key string) bool {
	e := &t.ents[slot]
	if e.kl == longKey {
		return t.long[slot] == key
	}
	return int(e.kl) == len(key) && string(e.kb[:e.kl]) == key
}

func (t *keyTable[S]) setKey(slot int32, key string) {
	e := &t.ents[slot]
	if len(key) <= inlineKey {
		e.kl = uint8(copy(e.kb[:], key))
		return
	}
	e.kl = longKey
	if t.long == nil {
		t.long = map[int32]string{}
	}
	t.long[slot] = strings.Clone(key) // the event's string shares a parser chunk
}

type slotRef struct {
	slot int32
	gen  uint32
}

// newKeyTable returns a table of at most max keys whose wheel periods are about period
// ms (the power of two at or above it).
func newKeyTable[S any](max int, period int64) *keyTable[S] {
	t := &keyTable[S]{
		index: make([]uint64, 16),
		mask:  15,
		mul:   rand.Uint64() | 1,
		shift: 28,
		max:   max,
		wheel: make([][]slotRef, 8),
	}
	for int64(1)<<t.pshift < period && t.pshift < 62 {
		t.pshift++
	}
	return t
}

func (t *keyTable[S]) periodOf(ms int64) int64 { return ms >> t.pshift }

func (t *keyTable[S]) wheelAt(p int64) *[]slotRef { return &t.wheel[p&int64(len(t.wheel)-1)] }

func keyHash(key string) uint64 { return hash64(key) }

// tagOf returns the index tag of a key of hash h.
func (t *keyTable[S]) tagOf(h uint64) uint64 { return (h * t.mul) >> 32 }

// home returns the index cell where the probe for tag starts.
func (t *keyTable[S]) home(tag uint64) uint64 { return tag >> t.shift }

// find returns the slot of key, or -1.
func (t *keyTable[S]) find(key string) int32 { return t.findHash(key, keyHash(key)) }

// findHash is find with keyHash(key) already computed.
func (t *keyTable[S]) findHash(key string, h uint64) int32 {
	tag := t.tagOf(h)
	for i := t.home(tag); ; i = (i + 1) & t.mask {
		x := t.index[i]
		if x == 0 {
			return -1
		}
		if x>>32 == tag {
			if s := int32(uint32(x)) - 1; t.is(s, key) {
				return s
			}
		}
	}
}

// warm prefetches every cache line of slot's entry: an event reads its key and most of
// its state, and entries are not aligned to cache lines.
func (t *keyTable[S]) warm(slot int32) uint64 {
	e := &t.ents[slot]
	return prefetchLines(unsafe.Pointer(e), unsafe.Sizeof(*e))
}

// touchIndex prefetches the index cell where the probe for hash h starts.
func (t *keyTable[S]) touchIndex(h uint64) uint64 {
	return prefetchLines(unsafe.Pointer(&t.index[t.home(t.tagOf(h))]), 8)
}

// peek returns the slot that probably holds the key of hash h, or -1, without
// comparing keys. Detectors call it for a run of events before handling them, so that
// the cache misses of many lookups overlap instead of following one another.
func (t *keyTable[S]) peek(h uint64) int32 {
	tag := t.tagOf(h)
	for i := t.home(tag); ; i = (i + 1) & t.mask {
		x := t.index[i]
		if x == 0 || x>>32 == tag {
			return int32(uint32(x)) - 1
		}
	}
}

// findBytes is find for a key assembled in a scratch buffer.
func (t *keyTable[S]) findBytes(key []byte) int32 {
	return t.find(unsafe.String(unsafe.SliceData(key), len(key))) // read only, not kept
}

// add inserts key, last seen at ts, evicting the coldest key first when the table is
// full. The returned slot's state is zero.
func (t *keyTable[S]) add(key string, ts int64) int32 {
	for t.live >= t.max && t.evictColdest() {
	}
	var slot int32
	if n := len(t.free); n > 0 {
		slot = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		var zero entry[S]
		t.ents = append(growHuge(t.ents, 1), zero)
		slot = int32(len(t.ents) - 1)
	}
	t.setKey(slot, key)
	e := &t.ents[slot]
	e.gen++
	e.live = true
	e.last = ts
	t.live++
	if uint64(t.live)*2 > uint64(len(t.index)) {
		t.grow()
	}
	t.insert(t.tagOf(keyHash(key)), slot)
	t.file(slot)
	return slot
}

func (t *keyTable[S]) insert(tag uint64, slot int32) {
	i := t.home(tag)
	for t.index[i] != 0 {
		i = (i + 1) & t.mask
	}
	t.index[i] = tag<<32 | uint64(slot+1)
}

func (t *keyTable[S]) grow() {
	old := t.index
	t.index = make([]uint64, 2*len(old))
	adviseHuge(t.index)
	t.mask = uint64(len(t.index) - 1)
	t.shift--
	for _, x := range old {
		if x != 0 {
			t.insert(x>>32, int32(uint32(x))-1)
		}
	}
}

// unindex deletes slot's cell, shifting later cells of the probe run back so that no
// tombstone is left.
func (t *keyTable[S]) unindex(slot int32) {
	tag := t.tagOf(t.hashOf(slot))
	want := tag<<32 | uint64(slot+1)
	i := t.home(tag)
	for t.index[i] != want {
		if t.index[i] == 0 {
			return
		}
		i = (i + 1) & t.mask
	}
	for j := (i + 1) & t.mask; t.index[j] != 0; j = (j + 1) & t.mask {
		home := t.home(t.index[j] >> 32)
		// The cell at j may move to i unless its home lies cyclically in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.index[i] = t.index[j]
			i = j
		}
	}
	t.index[i] = 0
}

// touch records an event of slot at ts.
func (t *keyTable[S]) touch(slot int32, ts int64) {
	e := &t.ents[slot]
	if ts <= e.last {
		return
	}
	old := t.periodOf(e.last)
	e.last = ts
	if t.periodOf(ts) != old {
		t.file(slot)
	}
}

func (t *keyTable[S]) ref(slot int32) slotRef { return slotRef{slot, t.ents[slot].gen} }

// valid reports whether r still names the key it was taken for.
func (t *keyTable[S]) valid(r slotRef) bool {
	e := &t.ents[r.slot]
	return e.live && e.gen == r.gen
}

func (t *keyTable[S]) file(slot int32) {
	p := t.periodOf(t.ents[slot].last)
	if !t.based {
		t.base, t.based = p, true
	}
	if p < t.base {
		p = t.base // a late key: expires with the oldest period
	}
	for p-t.base >= int64(len(t.wheel)) {
		t.growWheel()
	}
	w := t.wheelAt(p)
	*w = append(*w, t.ref(slot))
}

func (t *keyTable[S]) growWheel() {
	old := t.wheel
	t.wheel = make([][]slotRef, 2*len(old))
	for p := t.base; p < t.base+int64(len(old)); p++ {
		*t.wheelAt(p) = old[p&int64(len(old)-1)]
	}
}

// filedIn reports whether r is a live key whose current filing is period p.
func (t *keyTable[S]) filedIn(r slotRef, p int64) bool {
	if !t.valid(r) {
		return false
	}
	q := t.periodOf(t.ents[r.slot].last)
	return q == p || (q < p && p == t.base)
}

// expire removes every key whose last event is before the start of the period that
// holds before: all of them are older than before minus one period.
func (t *keyTable[S]) expire(before int64) {
	if !t.based {
		return
	}
	target := t.periodOf(before)
	steps := min(target-t.base, int64(len(t.wheel)))
	for k := int64(0); k < steps; k++ {
		p := t.base + k
		w := t.wheelAt(p)
		refs := *w
		start := 0
		if k == 0 {
			start = t.cursor
		}
		for _, r := range refs[start:] {
			if t.filedIn(r, p) {
				t.remove(r.slot, false)
				t.expired++
			}
		}
		*w = refs[:0]
	}
	if target > t.base {
		t.base = target
		t.cursor = 0
	}
}

// evictColdest removes the key filed in the oldest period; false when there is none.
func (t *keyTable[S]) evictColdest() bool {
	for k := 0; k < len(t.wheel); k++ {
		p := t.base
		w := t.wheelAt(p)
		refs := *w
		for t.cursor < len(refs) {
			r := refs[t.cursor]
			t.cursor++
			if t.filedIn(r, p) {
				t.remove(r.slot, true)
				t.evictions++
				t.trimBase(w)
				return true
			}
		}
		// The oldest period is exhausted: move on, even though time has not.
		*w = refs[:0]
		t.base++
		t.cursor = 0
	}
	return false
}

// trimBase drops the refs of the oldest period, w, that evictions have popped, once
// they are half of it: when new keys keep coming within one period (a flood of made-up
// keys, all in the newest period), evictions pop its front while adds append to it, and
// it would otherwise grow by a ref per key ever added.
func (t *keyTable[S]) trimBase(w *[]slotRef) {
	refs := *w
	if t.cursor < 1024 || 2*t.cursor < len(refs) {
		return
	}
	n := copy(refs, refs[t.cursor:])
	clear(refs[n:])
	*w = refs[:n]
	t.cursor = 0
}

// remove deletes slot's key and frees the slot.
func (t *keyTable[S]) remove(slot int32, evicted bool) {
	if t.onRemove != nil {
		t.onRemove(slot, evicted)
	}
	t.unindex(slot)
	e := &t.ents[slot]
	if e.kl == longKey {
		delete(t.long, slot)
	}
	gen := e.gen
	var zero entry[S]
	*e = zero
	e.gen = gen
	t.free = append(t.free, slot)
	t.live--
}

// reset removes every key.
// each calls f with the slot of every live key.
func (t *keyTable[S]) each(f func(slot int32)) {
	for slot := range t.ents {
		if t.ents[slot].live {
			f(int32(slot))
		}
	}
}

func (t *keyTable[S]) reset() {
	for slot := range t.ents {
		if t.ents[slot].live {
			t.remove(int32(slot), false)
		}
	}
	for i := range t.wheel {
		t.wheel[i] = t.wheel[i][:0]
	}
	t.based = false
	t.cursor = 0
}

// floorDiv divides rounding towards minus infinity, so that times before 1970 fall into
// the right bucket.
func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}
