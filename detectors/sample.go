package detectors

import (
	"cmp"
	"math"
	"math/bits"
	"slices"
	"strings"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

// hash64 is the engine's string hash: fixed, so that samples chosen by hash are the same
// in every run and on every replica, and well mixed, as the distinct-count sketches need.
func hash64(s string) uint64 { return xxhash.Sum64String(s) }

// maxSampleBytes bounds a kept sample; longer values are cut.
const maxSampleBytes = 255

// A sampler keeps a key's evidence per bucket of its ring: for each field (path,
// request id, client, ...) the k values of smallest hash among the bucket's counted
// events, the distinct members (object ids, credentials, routes) of its buckets, and a
// few counters. Choosing by hash depends only on which events a bucket holds, not on
// their order, and a window's evidence is the union of its buckets'. Detectors attach a
// sampler to a key while it has counted events in its ring and recycle it: a warm
// sampler allocates nothing. The sampled strings live in the detector's arena, one
// buffer per ring slot, so a sample costs no allocation of its own.
type sampler struct {
	bucket []int64 // per slot: the bucket it holds, when held has its bit
	held   uint64  // slots holding a bucket
	refs   []sampleRef
	counts []uint16 // slot*nCounts + j
	ids    idSet
}

// A sampleRef is one sampled value: the top half of its hash (ties are broken by the
// value) and where it is in its slot's arena, plus one; 0: none.
type sampleRef struct {
	h   uint32
	off uint32
}

// samplers hands out the samplers of one detector, all of one shape, and owns the
// arena their values live in.
type samplers struct {
	lay     ringLayout
	fields  int
	k       int // values kept per field and bucket
	nCounts int
	arena   arena
	free    []*sampler
	kmv     []*kmvSlots // free sketches of idSets past their inline members
	scratch []uint64
}

func newSamplers(lay ringLayout, maxKeys, fields, k, nCounts int) samplers {
	return samplers{lay: lay, fields: fields, k: k, nCounts: nCounts, arena: newArena(lay, maxKeys)}
}

func (p *samplers) get() *sampler {
	if n := len(p.free); n > 0 {
		s := p.free[n-1]
		p.free = p.free[:n-1]
		return s
	}
	return &sampler{
		bucket: make([]int64, p.lay.size),
		refs:   make([]sampleRef, int(p.lay.size)*p.fields*p.k),
		counts: make([]uint16, int(p.lay.size)*p.nCounts),
	}
}

// put recycles s.
func (p *samplers) put(s *sampler) {
	s.held = 0
	p.dropIDs(&s.ids)
	p.free = append(p.free, s)
}

// claim returns the ring slot of bucket b (slot, from a bucketer) in s, clearing what
// the slot held for an older bucket.
func (p *samplers) claim(s *sampler, b, bs int64) int {
	slot := int(bs)
	if s.held&(1<<uint(slot)) != 0 && s.bucket[slot] == b {
		return slot
	}
	s.bucket[slot] = b
	s.held |= 1 << uint(slot)
	clear(s.refs[slot*p.fields*p.k : (slot+1)*p.fields*p.k])
	clear(s.counts[slot*p.nCounts : (slot+1)*p.nCounts])
	p.clearIDs(&s.ids, 1<<uint(slot))
	return slot
}

// offer samples v as field of an event in bucket b, slot slot (from claim).
func (p *samplers) offer(s *sampler, b int64, slot, field int, v string) {
	p.arena.pick(s.refs[(slot*p.fields+field)*p.k:][:p.k], b, int64(slot), v)
}

// inc adds one to counter j of slot.
func (p *samplers) inc(s *sampler, slot, j int) { inc16(&s.counts[slot*p.nCounts+j]) }

// window returns the slots of s that hold buckets from..to.
func (p *samplers) window(s *sampler, from, to int64) uint64 {
	var m uint64
	for b := max(from, to-p.lay.size+1); b <= to; b++ {
		slot := p.lay.slot(b)
		if s.held&(1<<uint(slot)) != 0 && s.bucket[slot] == b {
			m |= 1 << uint(slot)
		}
	}
	return m
}

// collect returns up to max distinct values of field from the slots in mask, those of
// smallest hash, sorted.
func (p *samplers) collect(s *sampler, mask uint64, field, max int) []string {
	var refs []sampleRef
	var slots []int64
	for m := mask; m != 0; m &= m - 1 {
		slot := bits.TrailingZeros64(m)
		if !p.arena.holds(int64(slot), s.bucket[slot]) {
			continue
		}
		for _, r := range s.refs[(slot*p.fields+field)*p.k:][:p.k] {
			if r.off > 0 {
				refs = append(refs, r)
				slots = append(slots, int64(slot))
			}
		}
	}
	return p.arena.values(refs, slots, max)
}

// countIn sums counter j over the slots in mask.
func (p *samplers) countIn(s *sampler, mask uint64, j int) int {
	n := 0
	for m := mask; m != 0; m &= m - 1 {
		n += int(s.counts[bits.TrailingZeros64(m)*p.nCounts+j])
	}
	return n
}

// An arena holds the sampled strings of a detector, one buffer per ring slot, reset
// when the slot passes to a newer bucket. By then every key's bucket in that slot has
// left its window (an event placed in bucket b+size means the watermark has closed
// every window holding bucket b), so no sample still points into it.
//
// The strings held grow with the distinct values offered to the keys of a bucket, and
// a client picks them: one whose paths come in ever smaller hash makes each request a
// new sample. Past max bytes over all slots a value is not kept (a key's evidence
// keeps the samples it has) and dropped counts it.
type arena struct {
	lay     ringLayout
	bucket  []int64
	held    []bool
	buf     [][]byte
	size    int64 // bytes in buf, over all slots
	max     int64 // arenaBound of the detector's max_keys
	dropped uint64
}

// samplesPerKey bounds one detector's sampled strings: that many bytes for each key of
// its max_keys, and at least minSamples. Sized by keys, the bound is shared out with
// max_keys among a cluster replica's tasks, and the memory bound (README, Sizing)
// counts it like the state per key. With the default max_keys it is 256 MiB; the
// benchmark mix at 10,000 events/s holds 25 to 70 MiB in each detector's arena.
const (
	samplesPerKey = 256
	minSamples    = 1 << 20
)

func arenaBound(maxKeys int) int64 { return max(int64(maxKeys)*samplesPerKey, minSamples) }

func newArena(lay ringLayout, maxKeys int) arena {
	return arena{lay: lay, bucket: make([]int64, lay.size), held: make([]bool, lay.size), buf: make([][]byte, lay.size), max: arenaBound(maxKeys)}
}

// pick keeps in set the values of smallest hash among those offered for bucket b,
// in ring slot slot: v, unless set holds it or len(set) values of smaller hash.
func (a *arena) pick(set []sampleRef, b, slot int64, v string) {
	if v != "" {
		a.pickHash(set, b, slot, v, hash64(v))
	}
}

// pickHash is pick with v's hash64 at hand.
func (a *arena) pickHash(set []sampleRef, b, slot int64, v string, h64 uint64) {
	if a.held[slot] && a.bucket[slot] > b {
		return // the slot has passed to a newer bucket (see arena)
	}
	v = v[:min(len(v), maxSampleBytes)]
	h := uint32(h64 >> 32)
	empty, worst := -1, -1
	for i := range set {
		switch {
		case set[i].off == 0:
			if empty < 0 {
				empty = i
			}
		case set[i].h == h && a.get(slot, set[i]) == v:
			return
		case worst < 0 || a.less(slot, set[worst], set[i]):
			worst = i
		}
	}
	i := empty
	if i < 0 {
		if set[worst].h < h || (set[worst].h == h && a.get(slot, set[worst]) < v) {
			return
		}
		i = worst
	}
	if off := a.put(b, slot, v); off > 0 {
		set[i] = sampleRef{h: h, off: off}
	}
}

// less orders the values of two refs of one slot by hash, then value.
func (a *arena) less(slot int64, x, y sampleRef) bool {
	return x.h < y.h || (x.h == y.h && a.get(slot, x) < a.get(slot, y))
}

// values returns up to max distinct values of refs (each held in the slot of the same
// index in slots), those of smallest hash, sorted.
func (a *arena) values(refs []sampleRef, slots []int64, max int) []string {
	type hv struct {
		h uint32
		v string
	}
	all := make([]hv, len(refs))
	for i, r := range refs {
		all[i] = hv{r.h, a.get(slots[i], r)}
	}
	slices.SortFunc(all, func(x, y hv) int { return cmp.Or(cmp.Compare(x.h, y.h), strings.Compare(x.v, y.v)) })
	all = slices.Compact(all)
	var out []string
	for _, x := range all[:min(len(all), max)] {
		out = append(out, strings.Clone(x.v))
	}
	slices.Sort(out)
	return out
}

// put stores v for bucket b in slot and returns where, plus one; 0 when the slot
// already holds a newer bucket.
func (a *arena) put(b, slot int64, v string) uint32 {
	switch {
	case !a.held[slot] || a.bucket[slot] < b:
		a.bucket[slot], a.held[slot] = b, true
		a.size -= int64(len(a.buf[slot]))
		a.buf[slot] = a.buf[slot][:0]
	case a.bucket[slot] > b:
		return 0
	}
	if a.size+1+int64(len(v)) > a.max {
		a.dropped++
		return 0
	}
	a.size += 1 + int64(len(v))
	off := uint32(len(a.buf[slot])) + 1
	a.buf[slot] = append(append(a.buf[slot], byte(len(v))), v...)
	return off
}

func (a *arena) holds(slot, b int64) bool { return a.held[slot] && a.bucket[slot] == b }

// get returns r's value; it points into the arena.
func (a *arena) get(slot int64, r sampleRef) string {
	b := a.buf[slot][r.off-1:]
	return unsafe.String(&b[1], int(b[0]))
}

// reset forgets every bucket, keeping the buffers.
func (a *arena) reset() {
	clear(a.held)
	for i := range a.buf {
		a.buf[i] = a.buf[i][:0]
	}
	a.size = 0
}

// exactLimit is how many distinct members are counted exactly: below it, a window's
// distinct count is exact; from it on, an estimate.
const exactLimit = 32

// idInline is how many distinct members an idSet holds inline before it takes a
// sketch per bucket.
const idInline = 4

// An idSet counts the distinct members (64-bit hashes) of a key's windows: object ids,
// credentials, routes, clients. Up to idInline members live inline, each with the
// ring slots it was seen in; past that each slot keeps a k-minimum-values sketch of
// its bucket's members: the exactLimit smallest hashes. The union of the sketches of
// a window's slots holds the exactLimit smallest hashes of the window's members, so a
// window's count is exact below exactLimit and the KMV estimate from it on, whichever
// form the set is in: the count depends on the window's members, never on the order
// they came in. Sketches of several partitions merge the same way.
type idSet struct {
	h   [idInline]uint64
	m   [idInline]uint64 // slot mask per member; 0: free
	big *kmvSlots
}

type kmvSlots struct {
	v   [][]uint64 // per slot, up to exactLimit smallest hashes, unsorted
	top []uint64   // per slot with exactLimit hashes: the largest of them
}

// addID adds member h of slot's bucket to s's set.
func (p *samplers) addID(s *sampler, slot int, h uint64) { p.addTo(&s.ids, slot, h) }

func (p *samplers) addTo(ids *idSet, slot int, h uint64) {
	bit := uint64(1) << uint(slot)
	if ids.big != nil {
		ids.big.add(slot, h)
		return
	}
	free := -1
	for i := range ids.m {
		if ids.m[i] == 0 {
			if free < 0 {
				free = i
			}
			continue
		}
		if ids.h[i] == h {
			ids.m[i] |= bit
			return
		}
	}
	if free >= 0 {
		ids.h[free], ids.m[free] = h, bit
		return
	}
	// A fifth member: move the inline ones into per-slot sketches.
	ids.big = p.getKMV()
	for i := range ids.m {
		for m := ids.m[i]; m != 0; m &= m - 1 {
			ids.big.add(bits.TrailingZeros64(m), ids.h[i])
		}
		ids.m[i] = 0
	}
	ids.big.add(slot, h)
}

// add keeps h in slot's sketch if it is among the exactLimit smallest hashes the slot
// has seen. A full sketch rejects most hashes with one comparison.
func (k *kmvSlots) add(slot int, h uint64) {
	v := &k.v[slot]
	if len(*v) == exactLimit && h >= k.top[slot] {
		return
	}
	worst := -1
	for i, x := range *v {
		if x == h {
			return
		}
		if worst < 0 || x > (*v)[worst] {
			worst = i
		}
	}
	if len(*v) < exactLimit {
		*v = append(*v, h)
	} else {
		(*v)[worst] = h
	}
	if len(*v) == exactLimit {
		k.top[slot] = slices.Max(*v)
	}
}

func (p *samplers) getKMV() *kmvSlots {
	if n := len(p.kmv); n > 0 {
		k := p.kmv[n-1]
		p.kmv = p.kmv[:n-1]
		return k
	}
	k := &kmvSlots{v: make([][]uint64, p.lay.size), top: make([]uint64, p.lay.size)}
	for i := range k.v {
		k.v[i] = make([]uint64, 0, exactLimit)
	}
	return k
}

// clearIDs forgets the members of the slots in mask.
func (p *samplers) clearIDs(ids *idSet, mask uint64) {
	if ids.big == nil {
		for i := range ids.m {
			ids.m[i] &^= mask
		}
		return
	}
	empty := true
	for slot := range ids.big.v {
		if mask&(1<<uint(slot)) != 0 {
			ids.big.v[slot] = ids.big.v[slot][:0]
		}
		empty = empty && len(ids.big.v[slot]) == 0
	}
	if empty {
		p.dropIDs(ids)
	}
}

// dropIDs empties ids, recycling its sketches.
func (p *samplers) dropIDs(ids *idSet) {
	if ids.big != nil {
		for i := range ids.big.v {
			ids.big.v[i] = ids.big.v[i][:0]
		}
		p.kmv = append(p.kmv, ids.big)
	}
	*ids = idSet{}
}

// distinct returns the distinct members of s's slots in mask: exact below
// exactLimit, else the k-minimum-values estimate.
func (p *samplers) distinct(s *sampler, mask uint64) int { return p.distinctOf(&s.ids, mask) }

func (p *samplers) distinctOf(ids *idSet, mask uint64) int {
	if ids.big == nil {
		n := 0
		for _, m := range ids.m {
			if m&mask != 0 {
				n++
			}
		}
		return n
	}
	all := p.scratch[:0]
	for m := mask; m != 0; m &= m - 1 {
		all = append(all, ids.big.v[bits.TrailingZeros64(m)]...)
	}
	slices.Sort(all)
	all = slices.Compact(all)
	p.scratch = all
	if len(all) < exactLimit {
		return len(all)
	}
	// (k-1) / U(k), U(k) the k-th smallest hash as a fraction of the hash space.
	// At least exactLimit members are known to be there.
	u := float64(all[exactLimit-1]) / math.Exp2(64)
	return max(exactLimit, int(math.Round(float64(exactLimit-1)/u)))
}

// lcBits is how many bits an lcSet keeps per ring slot.
const lcBits = 256

// An lcSet counts the distinct members (64-bit hashes) of a dense key's windows by
// linear counting: each member sets bit h mod 256 of its bucket's bitmap, and a
// window's count is -256·ln(z/256) for z bits unset in the union of its buckets'. Up to
// two members live inline, each with the ring slots it was seen in; a third takes a
// bitmap per slot. Both forms give the same count for the same members, whatever their
// order; it is an estimate (within about 5% at 50 members) that saturates near 1,400
// (lcSaturated). It costs 32 bytes a bucket where an idSet's sketch costs 256: the set
// for detectors with a key per client and route.
type lcSet struct {
	h    [2]uint64
	m    [2]uint64             // slot mask per member; 0: free
	bits [][lcBits / 64]uint64 // per slot, once past the inline members
}

// lcSaturated is the count of a window whose bits are all set: at least this many.
var lcSaturated = int(math.Round(lcBits * math.Log(lcBits)))

// lcPool hands out the bitmaps of lcSets.
type lcPool struct {
	size int64
	free [][][lcBits / 64]uint64
}

func lcSet1(w *[lcBits / 64]uint64, h uint64) { w[(h%lcBits)/64] |= 1 << (h % 64) }

func (p *lcPool) add(s *lcSet, slot int, h uint64) {
	if s.bits != nil {
		lcSet1(&s.bits[slot], h)
		return
	}
	bit := uint64(1) << uint(slot)
	free := -1
	for i := range s.m {
		switch {
		case s.m[i] == 0:
			if free < 0 {
				free = i
			}
		case s.h[i] == h:
			s.m[i] |= bit
			return
		}
	}
	if free >= 0 {
		s.h[free], s.m[free] = h, bit
		return
	}
	if n := len(p.free); n > 0 {
		s.bits = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		s.bits = make([][lcBits / 64]uint64, p.size)
	}
	for i := range s.m {
		for m := s.m[i]; m != 0; m &= m - 1 {
			lcSet1(&s.bits[bits.TrailingZeros64(m)], s.h[i])
		}
		s.m[i] = 0
	}
	lcSet1(&s.bits[slot], h)
}

// clear forgets the members of the slots in mask, recycling the bitmaps once empty.
func (p *lcPool) clear(s *lcSet, mask uint64) {
	if s.bits == nil {
		for i := range s.m {
			s.m[i] &^= mask
		}
		return
	}
	empty := true
	for slot := range s.bits {
		if mask&(1<<uint(slot)) != 0 {
			s.bits[slot] = [lcBits / 64]uint64{}
		}
		empty = empty && s.bits[slot] == [lcBits / 64]uint64{}
	}
	if empty {
		p.drop(s)
	}
}

// drop empties s.
func (p *lcPool) drop(s *lcSet) {
	if s.bits != nil {
		clear(s.bits)
		p.free = append(p.free, s.bits)
	}
	*s = lcSet{}
}

// count returns the estimated distinct members of the slots in mask.
func (p *lcPool) count(s *lcSet, mask uint64) int {
	var u [lcBits / 64]uint64
	if s.bits == nil {
		for i := range s.m {
			if s.m[i]&mask != 0 {
				lcSet1(&u, s.h[i])
			}
		}
	} else {
		for m := mask; m != 0; m &= m - 1 {
			for j, w := range s.bits[bits.TrailingZeros64(m)] {
				u[j] |= w
			}
		}
	}
	set := 0
	for _, w := range u {
		set += bits.OnesCount64(w)
	}
	if set == lcBits {
		return lcSaturated
	}
	return int(math.Round(-lcBits * math.Log(float64(lcBits-set)/lcBits)))
}
