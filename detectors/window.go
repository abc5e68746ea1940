package detectors

import "time"

// maxRing is the most buckets a key's ring holds; token_reuse keeps a device's presence
// in those buckets as one uint64 bit mask.
const maxRing = 64

// A ringLayout says how a detector cuts event time into buckets. A window is the n
// buckets ending at a bucket; the ring holds those plus the buckets events may still
// arrive for while the watermark trails by allowed_lateness.
type ringLayout struct {
	width int64 // ms per bucket
	n     int64 // buckets per window
	size  int64 // buckets in a key's ring
}

// newRingLayout picks the largest bucket count up to preferred that divides the window
// into whole milliseconds and leaves room for allowed_lateness within maxRing buckets,
// else one bucket per window, which Config.Validate guarantees fits.
func newRingLayout(window, lateness time.Duration, preferred int) ringLayout {
	w, l := window.Milliseconds(), lateness.Milliseconds()
	layout := func(n int64) ringLayout {
		width := w / n
		return ringLayout{width: width, n: n, size: n + (l+width-1)/width + 2}
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

// oldestOpen returns the oldest bucket a window still open at watermark wm can hold:
// state before it can no longer matter and may be dropped.
func (r ringLayout) oldestOpen(wm int64) int64 { return r.closedThrough(wm) + 2 - r.n }

// oldestOpenMs is oldestOpen as an event time: the start of that bucket, in ms.
func (r ringLayout) oldestOpenMs(wm int64) int64 { return r.oldestOpen(wm) * r.width }

// ring is the part of a key's state that places its buckets: buckets lo..top are live
// (data for others is zero), and bucket b lives in slot b mod size.
type ring struct {
	lo, top int64
	used    bool // lo and top are set
}

// slot returns the ring slot of bucket b.
func (r ringLayout) slot(b int64) int64 {
	s := b % r.size
	if s < 0 {
		s += r.size
	}
	return s
}

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
// every key of a detector (key s owns data[s*size*k:(s+1)*size*k]). Counts saturate at
// 65535 per bucket; sums over the live buckets are kept alongside.
type counters struct {
	lay  ringLayout
	k    int64
	data []uint16
}

// keyData returns slot's counts, growing the slab as the key table grows.
func (c *counters) keyData(slot int32) []uint16 {
	stride := c.lay.size * c.k
	need := (int64(slot) + 1) * stride
	if int64(len(c.data)) < need {
		c.data = append(c.data, make([]uint16, need-int64(len(c.data)))...)
	}
	return c.data[int64(slot)*stride : need]
}

// trim drops buckets before b from r, subtracting them from sums.
func (c *counters) trim(d []uint16, r *ring, sums []uint32, b int64) {
	if !r.used || b <= r.lo {
		return
	}
	from := max64(r.lo, r.top-c.lay.size+1)
	to := min(b-1, r.top)
	if from <= to {
		s := c.lay.slot(from)
		for x := from; x <= to; x++ {
			o := s * c.k
			for j := int64(0); j < c.k; j++ {
				sums[j] -= uint32(d[o+j])
				d[o+j] = 0
			}
			if s++; s == c.lay.size {
				s = 0
			}
		}
	}
	r.lo = b
	if r.lo > r.top {
		r.used = false
	}
}

// place makes bucket b, in ring slot slot, writable, dropping what the ring can no
// longer hold, and returns the offset of its counts in d. b must not be below keep,
// the oldest bucket a future window still needs; older buckets are dropped on the way.
func (c *counters) place(d []uint16, r *ring, sums []uint32, b, slot, keep int64) int64 {
	c.trim(d, r, sums, max64(keep, b-c.lay.size+1))
	switch {
	case !r.used:
		r.lo, r.top, r.used = b, b, true
	case b > r.top:
		r.top = b
	case b < r.lo:
		r.lo = b
	}
	return slot * c.k
}

// at returns count j of bucket b, zero outside the live buckets.
func (c *counters) at(d []uint16, r *ring, b, j int64) uint32 {
	if !r.used || b < r.lo || b > r.top {
		return 0
	}
	return uint32(d[c.lay.slot(b)*c.k+j])
}

func inc16(p *uint16) bool {
	if *p == 0xffff {
		return false
	}
	*p++
	return true
}

// A hotKey is a key that may fire: its windows are evaluated as the watermark closes
// them. evalTo is the last bucket whose window was evaluated; it lives here, not in the
// key's state, because only hot keys need it.
type hotKey struct {
	ref    slotRef
	evalTo int64
}
