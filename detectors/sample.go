package detectors

import (
	"cmp"
	"slices"

	"github.com/axiomhq/hyperloglog"
	"github.com/cespare/xxhash/v2"
)

// hash64 is the engine's string hash: fixed, so that samples chosen by hash are the same
// in every run and on every replica, and well mixed, as HyperLogLog needs.
func hash64(s string) uint64 { return xxhash.Sum64String(s) }

// maxSampleBytes bounds a kept sample; longer values are cut.
const maxSampleBytes = 256

// A collector keeps a key's evidence per bucket of its ring: for each field (path,
// request id, client, ...) the k distinct values of smallest hash among the bucket's
// events, optionally a distinct count and a few counters. Choosing by hash depends only
// on which events a bucket holds, not on their order, and a window's evidence is the
// union of its buckets'. Detectors attach a collector to a key only while the key has
// events that need evidence, and recycle it: its buffers are reused, so a warm collector
// allocates nothing.
type collector struct {
	lay     ringLayout
	fields  int
	k       int
	nCounts int
	bucket  []int64    // per slot: the bucket it holds
	held    []bool     // per slot: bucket is set
	s       []sample   // (slot*fields + field)*k + i
	dist    []distinct // per slot
	counts  []uint16   // slot*nCounts + j
}

type sample struct {
	ok  bool
	h   uint64
	buf []byte
}

func newCollector(lay ringLayout, fields, k, nCounts int) *collector {
	return &collector{
		lay:     lay,
		fields:  fields,
		k:       k,
		nCounts: nCounts,
		bucket:  make([]int64, lay.size),
		held:    make([]bool, lay.size),
		s:       make([]sample, int(lay.size)*fields*k),
		dist:    make([]distinct, lay.size),
		counts:  make([]uint16, int(lay.size)*nCounts),
	}
}

// claim returns the slot of bucket b, clearing what the slot held for an older bucket.
func (c *collector) claim(b int64) int {
	slot := int(c.lay.slot(b))
	if c.held[slot] && c.bucket[slot] == b {
		return slot
	}
	c.bucket[slot], c.held[slot] = b, true
	for i := slot * c.fields * c.k; i < (slot+1)*c.fields*c.k; i++ {
		c.s[i].ok = false
	}
	c.dist[slot].reset()
	clear(c.counts[slot*c.nCounts : (slot+1)*c.nCounts])
	return slot
}

// sample offers v as field of an event in the bucket of slot.
func (c *collector) sample(slot, field int, v string) {
	if v == "" {
		return
	}
	h := hash64(v)
	set := c.s[(slot*c.fields+field)*c.k:][:c.k]
	empty, worst := -1, -1
	for i := range set {
		switch {
		case !set[i].ok:
			if empty < 0 {
				empty = i
			}
		case set[i].h == h:
			return
		case worst < 0 || set[i].h > set[worst].h:
			worst = i
		}
	}
	i := empty
	if i < 0 {
		if set[worst].h < h {
			return
		}
		i = worst
	}
	set[i].ok, set[i].h = true, h
	set[i].buf = append(set[i].buf[:0], v[:min(len(v), maxSampleBytes)]...)
}

func (c *collector) addDistinct(slot int, h uint64) { c.dist[slot].add(h) }

func (c *collector) inc(slot, j int) { inc16(&c.counts[slot*c.nCounts+j]) }

// holds reports whether the collector has bucket b.
func (c *collector) holds(b int64) (int, bool) {
	slot := int(c.lay.slot(b))
	return slot, c.held[slot] && c.bucket[slot] == b
}

// collect returns up to max distinct values of field from buckets from..to, those of
// smallest hash, sorted.
func (c *collector) collect(field int, from, to int64, max int) []string {
	type hv struct {
		h uint64
		v []byte
	}
	var all []hv
	for b := max64(from, to-c.lay.size+1); b <= to; b++ {
		slot, ok := c.holds(b)
		if !ok {
			continue
		}
		for _, s := range c.s[(slot*c.fields+field)*c.k:][:c.k] {
			if s.ok {
				all = append(all, hv{s.h, s.buf})
			}
		}
	}
	slices.SortFunc(all, func(x, y hv) int { return cmp.Compare(x.h, y.h) })
	var out []string
	for i, x := range all {
		if len(out) == max {
			break
		}
		if i > 0 && x.h == all[i-1].h {
			continue
		}
		out = append(out, string(x.v))
	}
	slices.Sort(out)
	return out
}

// distinctIn counts the distinct hashes of buckets from..to: exactly while the union
// is small, else by merging into a HyperLogLog sketch.
func (c *collector) distinctIn(from, to int64) int {
	var u distinct
	for b := max64(from, to-c.lay.size+1); b <= to; b++ {
		if slot, ok := c.holds(b); ok {
			u.merge(&c.dist[slot])
		}
	}
	return u.count()
}

// countIn sums counter j over buckets from..to.
func (c *collector) countIn(j int, from, to int64) int {
	n := 0
	for b := max64(from, to-c.lay.size+1); b <= to; b++ {
		if slot, ok := c.holds(b); ok {
			n += int(c.counts[slot*c.nCounts+j])
		}
	}
	return n
}

// reset forgets every bucket, keeping the buffers.
func (c *collector) reset() {
	clear(c.held)
	for i := range c.dist {
		c.dist[i].reset()
	}
}

// collectors is a free list of collectors of one shape.
type collectors struct {
	lay                ringLayout
	fields, k, nCounts int
	free               []*collector
}

func (p *collectors) get() *collector {
	if n := len(p.free); n > 0 {
		c := p.free[n-1]
		p.free = p.free[:n-1]
		return c
	}
	return newCollector(p.lay, p.fields, p.k, p.nCounts)
}

func (p *collectors) put(c *collector) {
	c.reset()
	p.free = append(p.free, c)
}

// exactLimit is how many distinct members a set counts exactly before it switches to a
// HyperLogLog sketch.
const exactLimit = 32

// distinct counts distinct 64-bit hashes: exactly up to exactLimit, then with a
// HyperLogLog sketch (which also merges across partitions).
type distinct struct {
	small []uint64
	hll   *hyperloglog.Sketch
}

func (d *distinct) add(h uint64) {
	if d.hll != nil {
		d.hll.InsertHash(h)
		return
	}
	if slices.Contains(d.small, h) {
		return
	}
	if len(d.small) < exactLimit {
		d.small = append(d.small, h)
		return
	}
	d.hll = hyperloglog.New14()
	for _, x := range d.small {
		d.hll.InsertHash(x)
	}
	d.hll.InsertHash(h)
}

func (d *distinct) count() int {
	if d.hll != nil {
		return int(d.hll.Estimate())
	}
	return len(d.small)
}

// merge adds o's members to d.
func (d *distinct) merge(o *distinct) {
	if o.hll != nil {
		if d.hll == nil {
			d.hll = hyperloglog.New14()
			for _, x := range d.small {
				d.hll.InsertHash(x)
			}
		}
		_ = d.hll.Merge(o.hll) // both are New14: precisions match
		return
	}
	for _, x := range o.small {
		d.add(x)
	}
}

func (d *distinct) reset() {
	d.small = d.small[:0]
	d.hll = nil
}
