package detectors

import (
	"math"
	"net/netip"
	"strings"

	"github.com/gatewatch/gatewatch/ingest"
)

// windowed is what every windowed detector shares: its ring layout, its key table, the
// hot keys whose windows are judged as the watermark closes them, and its incidents. A
// detector embeds it, observes events into its keys' state, marks a key hot when that
// state could make a window fire, and judges one window of one key at a time
// (windowJudge); windowed does the rest: when a window is due, which keys to judge,
// trimming them, expiring idle keys, ending quiet incidents, flushing at the end of
// input.
type windowed[S any] struct {
	det     string
	lay     ringLayout
	buck    bucketer
	tab     *keyTable[S]
	hot     []hotKey
	inc     *incidents
	wm      int64 // watermark of the latest advance
	next    int64 // due: the watermark at which advance has work to do
	window  string
	j       windowJudge
	samples *arena  // where the detector's evidence samples live, if it keeps any
	addr    AddrBuf // the address key of the event in hand (see AddrKey)

	// The last bucket wm closed and the oldest open one: every event reads them, and
	// they change only with wm (see setWM).
	closedB, openB int64
}

// windowJudge is what a windowed detector adds to windowed.
type windowJudge interface {
	// bounds returns the oldest and newest bucket the key at slot holds data for; ok
	// is false when it holds none.
	bounds(slot int32) (lo, top int64, ok bool)
	// judge evaluates the window of the key at slot that ends at bucket end.
	judge(slot int32, end int64)
	// cool drops the key's data before bucket keep and reports whether the key may
	// still fire: false takes it off the hot list until it is marked hot again.
	cool(slot int32, keep int64) bool
	// mayFire reports, without changing anything, whether the key's state could make
	// a window fire under the detector's settings: what cool returns once trimmed.
	mayFire(slot int32) bool
	// expiry returns the event time before which keys last seen are dropped at
	// watermark wm.
	expiry(wm int64) int64
}

// An advanceHook is a windowJudge with work of its own after each advance.
type advanceHook interface{ advanced(wm int64) }

// A flushHook is a windowJudge whose keys are baselines: at the end of input it
// settles them instead of windowed forgetting them.
type flushHook interface{ flushed() }

// init sets w up for detector det. Keys are filed in the table's expiry wheel by
// quarters of period ms.
func (w *windowed[S]) init(det string, lay ringLayout, maxKeys int, period int64, inc *incidents, j windowJudge) {
	w.det, w.lay, w.inc, w.j = det, lay, inc, j
	w.buck = newBucketer(lay.width, lay.size)
	w.tab = newKeyTable[S](maxKeys, period/4)
	w.setWM(math.MinInt64 / 2)
	w.next = math.MinInt64
	w.window = lay.window().String()
}

func (w *windowed[S]) name() string { return w.det }
func (w *windowed[S]) due() *int64  { return &w.next }

func (w *windowed[S]) stats() (int, uint64, uint64) {
	return w.tab.live, w.tab.evictions, w.tab.expired
}

// droppedSamples is how many sampled values the detector's arena had no room for, and
// the arena's bound in bytes.
func (w *windowed[S]) droppedSamples() (uint64, int64) {
	if w.samples == nil {
		return 0, 0
	}
	return w.samples.dropped, w.samples.max
}

// horizon: events before the oldest open window may be acknowledged. The back buckets
// of a detector that compares windows with earlier ones are not held for: after a
// restart, the windows that ended less than a window before the committed offset are
// missing from the peaks that comparison uses.
func (w *windowed[S]) horizon(wm int64) int64 { return w.lay.oldestOpenMs(wm) }

// setWM sets the watermark and the buckets that follow from it.
func (w *windowed[S]) setWM(wm int64) {
	w.wm = wm
	w.closedB = w.lay.closedThrough(wm)
	w.openB = w.lay.oldestOpen(wm)
}

// closed is the last bucket the latest advance closed.
func (w *windowed[S]) closed() int64 { return w.closedB }

// open is the oldest bucket a window still open at the latest advance can hold.
func (w *windowed[S]) open() int64 { return w.openB }

// keep is the oldest bucket a key must hold at the latest advance.
func (w *windowed[S]) keep() int64 { return w.openB - w.lay.back }

// markHot puts the key at slot on the hot list unless it is there. The windows that
// closed before this event could not fire: the ring held too little for them.
func (w *windowed[S]) markHot(slot int32) {
	e := &w.tab.ents[slot]
	if !e.hot {
		e.hot = true
		w.hot = append(w.hot, hotKey{w.tab.ref(slot), w.closed()})
	}
}

// judgeTo judges the windows of hot key h ending at buckets after h.evalTo up to upTo:
// those that hold its data and, for a detector that compares windows with earlier
// ones, those a window later, which fold them into its peak.
func (w *windowed[S]) judgeTo(h *hotKey, upTo int64) {
	lo, top, ok := w.j.bounds(h.ref.slot)
	from, to := max(h.evalTo+1, lo), min(upTo, top+w.lay.n-1+w.lay.back)
	h.evalTo = max(h.evalTo, upTo)
	for e := from; ok && e <= to; e++ {
		w.j.judge(h.ref.slot, e)
	}
}

// advance judges what watermark wm closed, cools the hot keys, expires idle keys and
// ends quiet incidents.
func (w *windowed[S]) advance(wm int64) {
	w.setWM(wm)
	closed, keep := w.closed(), w.keep()
	live := w.hot[:0]
	for _, h := range w.hot {
		if !w.tab.valid(h.ref) {
			continue
		}
		w.judgeTo(&h, closed)
		if !w.j.cool(h.ref.slot, keep) {
			w.tab.ents[h.ref.slot].hot = false
			continue
		}
		live = append(live, h)
	}
	clear(w.hot[len(live):])
	w.hot = live
	if a, ok := w.j.(advanceHook); ok {
		a.advanced(wm)
	}
	w.tab.expire(w.j.expiry(wm))
	w.inc.endQuiet(wm)
	w.next = (closed + 2) * w.lay.width
}

// flush judges every window still open as if the watermark had passed it, ends every
// incident and starts the windows afresh.
func (w *windowed[S]) flush() {
	for _, h := range w.hot {
		if w.tab.valid(h.ref) {
			if _, top, ok := w.j.bounds(h.ref.slot); ok {
				w.judgeTo(&h, top+w.lay.n-1)
			}
			w.tab.ents[h.ref.slot].hot = false
		}
	}
	clear(w.hot)
	w.hot = w.hot[:0]
	if f, ok := w.j.(flushHook); ok {
		f.flushed()
	} else {
		w.tab.reset()
	}
	if w.samples != nil {
		w.samples.reset()
	}
	w.inc.endAll()
	w.setWM(math.MinInt64 / 2)
	w.next = math.MinInt64
}

// rehot rebuilds the hot list after a reload changed the settings: a key is hot when
// mayFire says so. A key already hot keeps its judged windows; one that turns hot has
// the windows that close from now on judged, as if its last event had made it hot.
func (w *windowed[S]) rehot() {
	live := w.hot[:0]
	for _, h := range w.hot {
		if !w.tab.valid(h.ref) {
			continue
		}
		if !w.j.mayFire(h.ref.slot) {
			w.tab.ents[h.ref.slot].hot = false
			continue
		}
		live = append(live, h)
	}
	clear(w.hot[len(live):])
	w.hot = live
	w.tab.each(func(slot int32) {
		if w.j.mayFire(slot) {
			w.markHot(slot)
		}
	})
}

// windowEvidence returns the evidence naming the window that ends at bucket end.
func (w *windowed[S]) windowEvidence(end int64) Evidence {
	return Evidence{
		Window:      w.window,
		WindowStart: formatTime(msTime((end - w.lay.n + 1) * w.lay.width)),
		WindowEnd:   formatTime(msTime((end + 1) * w.lay.width)),
	}
}

// An overriding config type is an Override with a detector's own thresholds.
type overriding interface{ base() *Override }

func (o *Override) base() *Override { return o }

// clientRules are a client-keyed detector's overrides and allowlist, resolved once:
// params[0] are the detector's settings, params[1] those of an allowlisted key (the
// detector disabled), then one per key override; a route_prefix override ignores the
// requests on those routes.
type clientRules[P any] struct {
	params    []P
	keyParams map[string]uint16
	skipRoute []string
	allowNet  []netip.Prefix
}

// newClientRules resolves overrides over base; apply sets an override's enabled,
// severity and thresholds on a copy of base. The first override of a key wins.
func newClientRules[P any, O any, PO interface {
	*O
	overriding
}](base, disabled P, overrides []O, allow []ClientAllow, apply func(*P, *O)) clientRules[P] {
	r := clientRules[P]{params: []P{base, disabled}, keyParams: map[string]uint16{}}
	// An IPv6 address stands for its /64, the key its client has (see AddrKey).
	var buf AddrBuf
	keyOf := func(k string) string { return strings.Clone(AddrKey(k, &buf)) }
	for i := range overrides {
		o := PO(&overrides[i]).base()
		if o.RoutePrefix != "" {
			r.skipRoute = append(r.skipRoute, o.RoutePrefix)
			continue
		}
		k := keyOf(o.Key)
		if _, dup := r.keyParams[k]; dup {
			continue
		}
		p := base
		apply(&p, &overrides[i])
		r.keyParams[k] = uint16(len(r.params))
		r.params = append(r.params, p)
	}
	for _, a := range allow {
		if a.Key != "" {
			k := keyOf(a.Key)
			if _, dup := r.keyParams[k]; !dup {
				r.keyParams[k] = 1
			}
			continue
		}
		if p, err := netip.ParsePrefix(a.CIDR); err == nil {
			r.allowNet = append(r.allowNet, p.Masked())
		}
	}
	return r
}

// of returns the params index of key.
func (r *clientRules[P]) of(key string) uint16 {
	if len(r.keyParams) == 0 {
		return 0
	}
	return r.keyParams[key]
}

// skip reports whether the request is excluded by a route override or the allowlist.
func (r *clientRules[P]) skip(ev *ingest.Event) bool {
	for _, p := range r.skipRoute {
		if strings.HasPrefix(ev.Route, p) {
			return true
		}
	}
	return inNets(r.allowNet, ev.ClientIP)
}

// succeeded reports whether a request went through: a 2xx or 3xx, or status 0, which a
// log writes when it carries no response status (an AWS WAF ALLOW without
// responseCodeSent: the request went on to the origin).
func succeeded(status int) bool { return status == 0 || (status >= 200 && status < 400) }
