package detectors

import (
	"math"
	"math/bits"
	"time"
	"unsafe"
)

// maxRing is the most buckets a key's ring holds: a window's buckets are picked out of
// a ring slot mask of one uint64.
const maxRing = 64

// A ringLayout says how a detector cuts event time into buckets. A window is the n
// buckets ending at a bucket; the ring holds those, back buckets before them (a
// detector that compares a window with the windows before it keeps one more window),
// and the buckets events may still arrive for while the watermark trails by
// allowed_lateness.
type ringLayout struct {
	width int64 // ms per bucket
	n     int64 // buckets per window
	back  int64 // buckets kept before the oldest open window
	size  int64 // buckets in a key's ring
	unit  int64 // ms per tick of the event-time offsets kept within a bucket
}

// newRingLayout picks the largest bucket count up to preferred that divides the window
// into whole milliseconds and leaves room for allowed_lateness (and, when history is
// set, one more window) within maxRing buckets, else one bucket per window, which
// Config.Validate guarantees fits.
func newRingLayout(window, lateness time.Duration, preferred int, history bool) ringLayout {
	w, l := window.Milliseconds(), lateness.Milliseconds()
	layout := func(n int64) ringLayout {
		width := w / n
		lay := ringLayout{width: width, n: n, unit: (width + 0xfffe) / 0xffff}
		if history {
			lay.back = n
		}
		lay.size = n + lay.back + (l+width-1)/width + 2
		return lay
	}
	for n := int64(preferred); n > 1; n-- {
		if lay := layout(n); w%n == 0 && lay.size <= maxRing {
			return lay
		}
	}
	return layout(1)
}

// window returns the window length the layout actually covers.
func (r ringLayout) window() time.Duration { return time.Duration(r.n*r.width) * time.Millisecond }

// closedThrough returns the last bucket that can no longer change at watermark wm: every
// event before wm has arrived or is late.
func (r ringLayout) closedThrough(wm int64) int64 { return floorDiv(wm, r.width) - 1 }

// oldestOpen returns the oldest bucket a window still open at watermark wm can hold.
func (r ringLayout) oldestOpen(wm int64) int64 { return r.closedThrough(wm) + 2 - r.n }

// oldestOpenMs is oldestOpen as an event time: the start of that bucket, in ms.
func (r ringLayout) oldestOpenMs(wm int64) int64 { return r.oldestOpen(wm) * r.width }

// oldestKept returns the oldest bucket a key must still hold at watermark wm: the
// oldest open window's, less the back buckets. State before it may be dropped.
func (r ringLayout) oldestKept(wm int64) int64 { return r.oldestOpen(wm) - r.back }

// slot returns the ring slot of bucket b.
func (r ringLayout) slot(b int64) int64 {
	s := b % r.size
	if s < 0 {
		s += r.size
	}
	return s
}

// slotMask returns the ring slots of buckets from..to as a bit mask.
func (r ringLayout) slotMask(from, to int64) uint64 {
	n := to - from + 1
	switch {
	case n <= 0:
		return 0
	case n >= r.size:
		return ones(r.size)
	}
	s := r.slot(from)
	m := ones(n) << uint(s)
	if s+n > r.size {
		m |= ones(s + n - r.size)
	}
	return m & ones(r.size)
}

// ones returns a mask of the n low bits.
func ones(n int64) uint64 {
	if n >= 64 {
		return math.MaxUint64
	}
	return 1<<uint(n) - 1
}

// ring is the part of a key's state that places its buckets: buckets lo..top are live,
// and bucket b lives in slot b mod size. A slot's counts are valid only while its bit
// is in occ: trimming clears the bit without touching the counts, which are zeroed
// when the slot is placed again, on the cache line the event writes anyway. Reading a
// dropped bucket to zero it cost a cache miss per event of every key seen less often
// than once a bucket.
type ring struct {
	lo, top int64
	occ     uint64 // slots holding a live bucket's counts
	nz      uint64 // slots of occ whose count 0 is not zero: trimming reads no other
	used    bool   // lo and top are set
}

// live reports whether bucket b is among the ring's live buckets.
func (r *ring) live(b int64) bool { return r.used && b >= r.lo && b <= r.top }

// holds reports whether bucket b is live and slot, its slot, holds its counts.
func (r *ring) holds(b, slot int64) bool { return r.live(b) && r.occ&(1<<uint(slot)) != 0 }

// A bucketer maps event times to buckets and ring slots, remembering the last bucket:
// events mostly arrive in time order, so most calls skip both divisions.
type bucketer struct {
	width, size int64
	lo, hi      int64 // the remembered bucket covers [lo, hi)
	b, s        int64
}

func newBucketer(width, size int64) bucketer { return bucketer{width: width, size: size} }

// of returns the bucket of t and its slot.
func (c *bucketer) of(t int64) (b, slot int64) {
	if t >= c.lo && t < c.hi {
		return c.b, c.s
	}
	c.b = floorDiv(t, c.width)
	c.lo, c.hi = c.b*c.width, c.b*c.width+c.width
	c.s = c.b % c.size
	if c.s < 0 {
		c.s += c.size
	}
	return c.b, c.s
}

// counters is a ring of per-bucket counts, k of them per bucket, over a slab shared by
// every key of a detector. Counts saturate at 65535 per bucket; sums over the live
// buckets are kept alongside. With spans, each bucket also keeps the event-time
// offsets (in ticks of lay.unit ms) of the earliest and latest event of count 0, the
// one an alert counts, so that first_seen and last_seen are event times, not bucket
// edges. With sampled, each bucket also keeps one sampled value of its events of count
// 0 (a sampleRef into the detector's arena): the evidence of a detector that counts
// every request of every active key, where a pooled sampler would cost a pointer to
// follow per event. Extra words per bucket are the detector's own, valid while count 0
// is not zero. A bucket's counts, span, sample and extra words share a cache line.
type counters struct {
	lay     ringLayout
	k       int64
	spans   bool
	sampled bool
	extra   int64
	stride  int64 // uint16s per bucket
	data    []uint16
}

func newCounters(lay ringLayout, k int64, spans, sampled bool, extra int64) counters {
	c := counters{lay: lay, k: k, spans: spans, sampled: sampled, extra: extra, stride: k + extra}
	if spans {
		c.stride += 2
	}
	if sampled {
		c.stride += 4
	}
	return c
}

// extraAt returns the detector's own words of the bucket at offset o.
func (c *counters) extraAt(d []uint16, o int64) []uint16 { return d[o+c.stride-c.extra : o+c.stride] }

// prefetch loads the counts of key slot's bucket of time t, found with bk, and returns
// what it loaded (0 on amd64); see prefetchLines.
func (c *counters) prefetch(slot int32, t int64, bk *bucketer) uint64 {
	_, bs := bk.of(t)
	o := (int64(slot)*c.lay.size + bs) * c.stride
	if o+c.stride > int64(len(c.data)) {
		return 0
	}
	return prefetchLines(unsafe.Pointer(&c.data[o]), uintptr(c.stride)*2)
}

// refAt returns the sample of the bucket at offset o.
func (c *counters) refAt(d []uint16, o int64) sampleRef {
	x := d[o+c.stride-c.extra-4 : o+c.stride-c.extra]
	return sampleRef{h: uint32(x[0]) | uint32(x[1])<<16, off: uint32(x[2]) | uint32(x[3])<<16}
}

func (c *counters) setRef(d []uint16, o int64, r sampleRef) {
	x := d[o+c.stride-c.extra-4 : o+c.stride-c.extra]
	x[0], x[1], x[2], x[3] = uint16(r.h), uint16(r.h>>16), uint16(r.off), uint16(r.off>>16)
}

// sample offers v, of hash h, as the sample of an event of count 0 in bucket b (slot
// bs, at offset o); fresh says it is the bucket's first.
func (c *counters) sample(d []uint16, o int64, fresh bool, b, bs int64, v string, h uint64, a *arena) {
	cur := sampleRef{}
	if !fresh {
		cur = c.refAt(d, o)
	}
	if v != "" {
		set := [1]sampleRef{cur}
		a.pickHash(set[:], b, bs, v, h)
		cur = set[0]
	}
	c.setRef(d, o, cur)
}

// samples returns up to max sampled values of buckets from..to.
func (c *counters) samples(d []uint16, r *ring, from, to int64, a *arena, max int) []string {
	var picked []sampleRef
	var slots []int64
	for b := max64(from, r.lo); b <= min(to, r.top) && r.used; b++ {
		s := c.lay.slot(b)
		o := s * c.stride
		if r.holds(b, s) && d[o] > 0 && a.holds(s, b) {
			if ref := c.refAt(d, o); ref.off > 0 {
				picked = append(picked, ref)
				slots = append(slots, s)
			}
		}
	}
	return a.values(picked, slots, max)
}

// keyData returns slot's counts, growing the slab as the key table grows.
func (c *counters) keyData(slot int32) []uint16 {
	stride := c.lay.size * c.stride
	need := (int64(slot) + 1) * stride
	if int64(len(c.data)) < need {
		n := len(c.data)
		c.data = growHuge(c.data, int(need)-n)[:need]
		clear(c.data[n:])
	}
	return c.data[int64(slot)*stride : need]
}

// trim drops buckets before b from r, subtracting their counts from sums (sums[j] is
// count j's sum; a detector keeps the sums it reads), and returns the slot mask of the
// buckets it dropped that held counts. It reads the counts of a dropped bucket only
// for sums, and count 0 only where it is not zero: a detector whose count 0 is rare
// (403s, 401s, 404s) trims without a cache miss.
func (c *counters) trim(d []uint16, r *ring, sums []uint32, b int64) uint64 {
	if !r.used || b <= r.lo {
		return 0
	}
	dropped := r.occ & c.lay.slotMask(max64(r.lo, r.top-c.lay.size+1), min(b-1, r.top))
	if len(sums) > 0 {
		for m := dropped & r.nz; m != 0; m &= m - 1 {
			sums[0] -= uint32(d[int64(bits.TrailingZeros64(m))*c.stride])
		}
		for m := dropped; m != 0 && len(sums) > 1; m &= m - 1 {
			o := int64(bits.TrailingZeros64(m)) * c.stride
			for j := 1; j < len(sums); j++ {
				sums[j] -= uint32(d[o+int64(j)])
			}
		}
	}
	r.occ &^= dropped
	r.nz &^= dropped
	r.lo = b
	if r.lo > r.top {
		r.used = false
	}
	return dropped
}

// place makes bucket b, in ring slot slot, writable, dropping what the ring can no
// longer hold, and returns the offset of its counts in d and the slot mask of the
// buckets dropped. b must not be below keep, the oldest bucket a future window still
// needs; older buckets are dropped on the way.
func (c *counters) place(d []uint16, r *ring, sums []uint32, b, slot, keep int64) (int64, uint64) {
	dropped := c.trim(d, r, sums, max64(keep, b-c.lay.size+1))
	switch {
	case !r.used:
		r.lo, r.top, r.used = b, b, true
	case b > r.top:
		r.top = b
	case b < r.lo:
		r.lo = b
	}
	o := slot * c.stride
	if bit := uint64(1) << uint(slot); r.occ&bit == 0 {
		clear(d[o : o+c.stride]) // what an older bucket left there
		r.occ |= bit
	}
	return o, dropped
}

// add counts one event in count j of the bucket at offset o; it reports whether the
// count was zero before, and adds to sums[j], if the detector keeps it, unless the
// count saturated.
func (c *counters) add(d []uint16, sums []uint32, o, j int64) (fresh bool) {
	fresh = d[o+j] == 0
	if inc16(&d[o+j]) && j < int64(len(sums)) {
		sums[j]++
	}
	return fresh
}

// count is add for count 0 of bucket b in slot bs, noting the event time t in the
// bucket's span.
func (c *counters) count(d []uint16, r *ring, sums []uint32, o, b, bs, t int64) {
	r.nz |= 1 << uint(bs)
	fresh := c.add(d, sums, o, 0)
	if !c.spans {
		return
	}
	start := b * c.lay.width
	lo := uint16((t - start) / c.lay.unit)
	hi := uint16((t - start + c.lay.unit - 1) / c.lay.unit)
	s := d[o+c.k : o+c.k+2]
	switch {
	case fresh:
		s[0], s[1] = lo, hi
	case lo < s[0]:
		s[0] = lo
	case hi > s[1]:
		s[1] = hi
	}
}

// at returns count j of bucket b, zero outside the live buckets.
func (c *counters) at(d []uint16, r *ring, b, j int64) uint32 {
	s := c.lay.slot(b)
	if !r.holds(b, s) {
		return 0
	}
	return uint32(d[s*c.stride+j])
}

// sum returns count j summed over buckets from..to.
func (c *counters) sum(d []uint16, r *ring, from, to, j int64) uint32 {
	var s uint32
	for b := max(from, r.lo); b <= min(to, r.top) && r.used; b++ {
		if sl := c.lay.slot(b); r.occ&(1<<uint(sl)) != 0 {
			s += uint32(d[sl*c.stride+j])
		}
	}
	return s
}

// span returns the event times of the earliest and latest event of count 0 in buckets
// from..to; ok is false when there is none. Without spans it returns bucket edges.
func (c *counters) span(d []uint16, r *ring, from, to int64) (first, last int64, ok bool) {
	fb, lb := int64(0), int64(0)
	for b := max(from, r.lo); b <= min(to, r.top) && r.used; b++ {
		if s := c.lay.slot(b); r.occ&(1<<uint(s)) == 0 || d[s*c.stride] == 0 {
			continue
		}
		if !ok {
			fb, ok = b, true
		}
		lb = b
	}
	if !ok {
		return 0, 0, false
	}
	w := c.lay.width
	if !c.spans {
		return fb * w, (lb + 1) * w, true
	}
	first = fb*w + int64(d[c.lay.slot(fb)*c.stride+c.k])*c.lay.unit
	last = lb*w + int64(d[c.lay.slot(lb)*c.stride+c.k+1])*c.lay.unit
	return first, last, true
}

// A hotKey is a key that may fire: its windows are evaluated as the watermark closes
// them. evalTo is the last bucket whose window was evaluated; it lives here, not in the
// key's state, because only hot keys need it.
type hotKey struct {
	ref    slotRef
	evalTo int64
}

// inc16 adds one to *p unless it is saturated, and reports whether it did.
func inc16(p *uint16) bool {
	if *p == 0xffff {
		return false
	}
	*p++
	return true
}
