package detectors

import "math"

// traffic is when the engine first saw traffic. A detector that learns judges nothing
// until it has seen its learning_period of traffic; the start is a baseline, so a
// restart does not learn again.
type traffic struct {
	since int64 // ms; math.MaxInt64 before the first event
	dirty bool  // moved since last written
}

func newTraffic() *traffic { return &traffic{since: math.MaxInt64} }

func (tr *traffic) seen(t int64) {
	if t < tr.since {
		tr.since, tr.dirty = t, true
	}
}

// learnt reports whether at least learn ms of traffic came before t.
func (tr *traffic) learnt(t, learn int64) bool {
	return tr.since != math.MaxInt64 && t-tr.since >= learn
}

// volume is what a key's (or route's) traffic has been: an exponentially weighted
// average of its requests a minute, and a decaying peak of its window counts. The
// average is what a Poisson test of a window's count expects; the peak is what keeps a
// job that runs every few hours, or an office-hours rhythm, from paging: DESIGN's rule
// that a count judged against a baseline must be both improbable and well above what
// the key has done before.
//
// Buckets are folded into the average once no open window holds them, each weighted as
// of its end, so a spike does not raise the average it is measured against.
type volume struct {
	rate   float64 // raw weighted average, requests a minute, as of rateAt
	rateAt int64   // ms
	rateTo int64   // last bucket folded into rate
	peak   peak
}

// takeVolumes is the part of takeDirty common to the detectors whose baselines are
// volumes. A volume's closed buckets are folded lazily (at the key's next event, or
// while it is hot), but the events of a closed bucket are acknowledged once no open
// window needs them, and whoever reads on from that commit (a restart, a cluster task's
// next owner) does not see them again: a baseline written without them loses them. So
// each key is written with its buckets before open folded, and a key with counts in
// open buckets is kept in the returned list, to be written again once folding them,
// closed by then, changes its average. dirty are the keys changed since the last call,
// unfolded what the last call returned; state gives a key's volume, ring and dirty
// flag, cnt and tau how its buckets fold.
func takeVolumes(dirty, unfolded []slotRef, open int64, cnt *counters, tau float64, valid func(slotRef) bool,
	state func(slotRef) (*volume, *ring, *bool), write func(slotRef)) []slotRef {
	isDirty := func(r slotRef) bool {
		_, _, d := state(r)
		was := *d
		*d = false
		return was
	}
	fold := func(r slotRef) (changed, pending bool) {
		v, rg, _ := state(r)
		return v.foldRate(cnt, cnt.keyData(r.slot), rg, open, tau), rg.used && rg.top >= open
	}
	var next []slotRef
	for _, r := range unfolded {
		if !valid(r) || isDirty(r) {
			continue // gone, or written below
		}
		changed, pending := fold(r)
		if changed {
			write(r)
		}
		if pending {
			next = append(next, r)
		}
	}
	for _, r := range dirty {
		if !valid(r) {
			continue
		}
		isDirty(r)
		_, pending := fold(r)
		write(r)
		if pending {
			next = append(next, r)
		}
	}
	return next
}

func newVolume(t int64) volume {
	return volume{rateAt: t, rateTo: math.MinInt64 / 2, peak: newPeak(t)}
}

// restoredVolume takes up a stored baseline again: the average rate as of asOf and the
// peak as of peakAt, with buckets of width ms. The buckets ending by asOf are in the
// average already, and the windows ending by peakAt in the peak: whoever reads their
// events again (a restart, or a cluster task's next owner, reading on from a commit
// that an open window held back while the baselines were written as of later) must
// not count them twice. The windows folded after peakAt did not raise the peak, and
// folded again they still do not.
func restoredVolume(rate float64, asOf int64, peak float64, peakAt, width int64) volume {
	v := newVolume(asOf)
	v.rate = rate
	v.rateTo = floorDiv(asOf, width) - 1
	if peak > 0 {
		v.peak.v, v.peak.at = peak, peakAt
		v.peak.to = floorDiv(peakAt, width) - 1
	}
	return v
}

// foldRate folds the live buckets of r before bucket upTo into the average, in bucket
// order, and reports whether that changed it.
func (v *volume) foldRate(cnt *counters, d []uint16, r *ring, upTo int64, tau float64) bool {
	changed := false
	for x := max(r.lo, v.rateTo+1); r.used && x < upTo && x <= r.top; x++ {
		c := cnt.at(d, r, x, 0)
		if c == 0 {
			continue
		}
		end := (x + 1) * cnt.lay.width
		v.rate = v.rate*math.Exp(-float64(end-v.rateAt)/tau) + float64(c)*60000/tau
		v.rateAt = end
		changed = true
	}
	v.rateTo = max(v.rateTo, upTo-1)
	return changed
}

// addLate adds a late event at t straight into the average, weighted as of rateAt.
func (v *volume) addLate(t int64, tau float64) {
	v.rate += math.Exp(float64(t-v.rateAt)/tau) * 60000 / tau
}

// rateAsOf returns the average in requests a minute as of x, corrected for how long
// traffic has been seen (since, ms).
func (v *volume) rateAsOf(x, since int64, tau float64) float64 {
	r := v.rate * math.Exp(-float64(x-v.rateAt)/tau)
	if since == math.MaxInt64 || x <= since {
		return r
	}
	return r / -math.Expm1(-float64(x-since)/tau)
}

// foldPeaks folds into the peak the request counts of the windows ending at buckets
// after the peak's last up to upTo, and reports whether that changed it.
func (v *volume) foldPeaks(cnt *counters, d []uint16, r *ring, upTo int64, hot uint32, ptau float64) bool {
	n := cnt.lay.n
	return v.peak.foldWindows(r, upTo, hot, cnt.lay.width, ptau, func(e int64) uint32 {
		return cnt.sum(d, r, e-n+1, e, 0)
	})
}

// peak is the largest count a key had in a window, decaying with a time constant
// (peak_memory). A window's count is folded in once it no longer overlaps the windows
// being judged: when the window ending one window later is judged. Only windows of at
// least a detector's hot count are folded: smaller ones could never keep a window from
// firing, and which of them a detector sees depends on arrival order.
type peak struct {
	v  float64 // as of at
	at int64   // ms
	to int64   // end bucket of the last window folded in
}

func newPeak(t int64) peak { return peak{at: t, to: math.MinInt64 / 2} }

// asOf returns the peak decayed to x.
func (p *peak) asOf(x int64, ptau float64) float64 {
	if p.v == 0 {
		return 0
	}
	return p.v * math.Exp(-float64(x-p.at)/ptau)
}

// foldWindows folds in the windows ending at buckets after p.to up to upTo whose count
// (by count) is at least hot, each as of its end, and reports whether that changed p.
func (p *peak) foldWindows(r *ring, upTo int64, hot uint32, width int64, ptau float64, count func(end int64) uint32) bool {
	changed := false
	for e := max(p.to+1, r.lo); r.used && e <= upTo; e++ {
		c := count(e)
		if c < hot {
			continue
		}
		at := (e + 1) * width
		if float64(c) >= p.asOf(at, ptau) {
			p.v, p.at = float64(c), at
			changed = true
		}
	}
	p.to = max(p.to, upTo)
	return changed
}

// HotCount is the smallest window count that matters to a detector firing at minCount
// with a minimum ratio of minRatio to the peak: ceil(minCount / minRatio), at least 1.
// The store folds peaks it rebuilds from the archive by the same rule.
func HotCount(minCount uint32, minRatio float64) uint32 {
	if minRatio <= 1 {
		return max(minCount, 1)
	}
	return max(uint32(math.Ceil(float64(minCount)/minRatio)), 1)
}
