package detectors

import (
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// tokenReuse fires when, within window, one token fingerprint is seen from more than
// max_devices distinct devices.
//
// Per token it keeps an exact set of device hashes (inline for the first device), each
// with a bit mask of the ring buckets it was seen in, so the distinct devices of any
// window are a few AND operations. Past exactLimit devices, further ones are counted in
// a HyperLogLog sketch.
//
// A device's other evidence (its events, a client IP, countries) covers its current
// burst of activity: the events since it last went quiet for longer than the ring
// spans. That rule depends on event times only, so the evidence does not depend on
// arrival order either.
type tokenReuse struct {
	lay  ringLayout
	buck bucketer
	tab  *keyTable[trKey]
	gap  int64 // buckets of quiet that end a device's burst: the ring size
	skip []string

	params    []trParams
	keyParams map[string]uint16
	allowAll  map[uint64]bool            // device hashes allowed for every token
	allowKey  map[string]map[uint64]bool // per token

	hot    []hotKey
	inc    *incidents
	sink   uint64 // what prefetch loaded, so that the loads are not optimised away
	wm     int64
	next   int64
	window string
}

type trParams struct {
	enabled    bool
	maxDevices int
	severity   Severity
}

type trKey struct {
	top  int64 // newest bucket; bit i of a device mask is bucket top-i
	prm  uint16
	nDev uint8 // devices held in dev0 and more
	used bool
	hot  bool
	dev0 trDev   // the first device, inline: most tokens have one
	more *trMore // the others, for the few tokens that have them
}

type trMore struct {
	devs []trDev  // up to exactLimit-1
	over distinct // devices past exactLimit
}

type trDev struct {
	h      uint64
	mask   uint64
	newest int64  // bucket of the device's latest event
	events uint32 // in the current burst
	cc     [2]uint16
	ipH    uint64     // hash of the IP's text, so that an event's IP is compared by hash
	ip     netip.Addr // of smallest hash in the burst
	dev    string
}

func newTokenReuse(c TokenReuseConfig, lateness time.Duration, inc *incidents) *tokenReuse {
	lay := newRingLayout(c.Window, lateness, 20)
	d := &tokenReuse{
		lay:       lay,
		buck:      newBucketer(lay.width, lay.size),
		gap:       lay.size,
		keyParams: map[string]uint16{},
		allowAll:  map[uint64]bool{},
		allowKey:  map[string]map[uint64]bool{},
		inc:       inc,
		wm:        math.MinInt64 / 2,
		next:      math.MinInt64,
		window:    lay.window().String(),
	}
	// A token stays until no device of it can still be in a burst: window plus gap.
	d.tab = newKeyTable[trKey](c.MaxKeys, (2*lay.size*lay.width)/4)
	base := trParams{enabled: true, maxDevices: c.MaxDevices, severity: c.Severity}
	d.params = append(d.params, base)
	for _, o := range c.Overrides {
		if o.RoutePrefix != "" {
			d.skip = append(d.skip, o.RoutePrefix)
			continue
		}
		if _, dup := d.keyParams[o.Key]; dup {
			continue
		}
		p := base
		o.apply(&p.enabled, &p.severity)
		setIf(&p.maxDevices, o.MaxDevices)
		d.keyParams[o.Key] = uint16(len(d.params))
		d.params = append(d.params, p)
	}
	for _, a := range c.Allowlist {
		set := d.allowAll
		if a.Key != "" {
			if d.allowKey[a.Key] == nil {
				d.allowKey[a.Key] = map[uint64]bool{}
			}
			set = d.allowKey[a.Key]
		}
		for _, dev := range a.Devices {
			set[hash64(dev)] = true
		}
	}
	return d
}

func (d *tokenReuse) name() string { return TokenReuse }
func (d *tokenReuse) due() *int64  { return &d.next }

func (d *tokenReuse) stats() (int, uint64, uint64) {
	return d.tab.live, d.tab.evictions, d.tab.expired
}

func (d *tokenReuse) closed() int64 { return d.lay.closedThrough(d.wm) }
func (d *tokenReuse) keep() int64   { return d.lay.oldestOpen(d.wm) }

func (d *tokenReuse) horizon(wm int64) int64 {
	return d.lay.oldestOpenMs(wm)
}

func (d *tokenReuse) prefetchIndex(events []ingest.Event, _, hs []uint64) {
	var sink uint64
	for i := range events {
		hs[i] = keyHash(events[i].TokenFP)
		sink += d.tab.touchIndex(hs[i])
	}
	d.sink = sink
}

func (d *tokenReuse) prefetchState(events []ingest.Event, hs []uint64) {
	var sink uint64
	for i := range events {
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += d.tab.warm(slot)
		}
	}
	d.sink = sink
}

func (d *tokenReuse) observe(ev *ingest.Event, h uint64, t int64, late bool) {
	if late || ev.TokenFP == "" || ev.Device == "" {
		return
	}
	for _, p := range d.skip {
		if strings.HasPrefix(ev.Route, p) {
			return
		}
	}
	dh := hash64(ev.Device)
	if len(d.allowAll) > 0 && d.allowAll[dh] {
		return
	}
	if len(d.allowKey) > 0 && d.allowKey[ev.TokenFP][dh] {
		return
	}
	slot := d.tab.findHash(ev.TokenFP, h)
	if slot < 0 {
		slot = d.tab.add(ev.TokenFP, t)
		k := &d.tab.ents[slot].s
		if i, ok := d.keyParams[ev.TokenFP]; ok {
			k.prm = i
		}
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	if !p.enabled {
		return
	}
	b, _ := d.buck.of(t)
	d.shift(k, b)
	d.trim(k, d.keep())
	dv := d.device(k, dh, ev.Device, b)
	if dv == nil {
		k.more.over.add(dh)
	} else {
		dv.mask |= 1 << uint(k.top-b)
		dv.newest = max(dv.newest, b)
		dv.events++
		dv.seen(ev)
	}
	if !k.hot && d.active(k) > p.maxDevices {
		k.hot = true
		// Windows that closed before this event could not fire: the ring held too
		// little for them.
		d.hot = append(d.hot, hotKey{d.tab.ref(slot), d.closed()})
	}
}

// seen folds an event's IP and country into the device's burst evidence.
func (dv *trDev) seen(ev *ingest.Event) {
	if ev.ClientIP != "" {
		if h := hash64(ev.ClientIP); !dv.ip.IsValid() || h < dv.ipH {
			if a, err := netip.ParseAddr(ev.ClientIP); err == nil {
				dv.ip, dv.ipH = a, h
			}
		}
	}
	c := packCountry(ev.Country)
	switch {
	case c == 0 || c == dv.cc[0] || c == dv.cc[1]:
	case dv.cc[0] == 0 || c < dv.cc[0]:
		dv.cc[1], dv.cc[0] = dv.cc[0], c
	case dv.cc[1] == 0 || c < dv.cc[1]:
		dv.cc[1] = c
	}
}

// device returns the token's entry for device hash h, adding it (or restarting its
// burst) as an event in bucket b requires; nil when the exact set is full.
func (d *tokenReuse) device(k *trKey, h uint64, dev string, b int64) *trDev {
	for i := 0; i < int(k.nDev); i++ {
		dv := k.dev(i)
		if dv.h != h {
			continue
		}
		if b-dv.newest > d.gap {
			*dv = trDev{h: h, dev: dv.dev, newest: b}
		}
		return dv
	}
	if int(k.nDev) >= exactLimit {
		return nil
	}
	nd := trDev{h: h, dev: strings.Clone(dev), newest: b}
	if k.nDev == 0 {
		k.dev0 = nd
	} else {
		if k.more == nil {
			k.more = new(trMore)
		}
		k.more.devs = append(k.more.devs, nd)
	}
	k.nDev++
	return k.dev(int(k.nDev) - 1)
}

func (k *trKey) dev(i int) *trDev {
	if i == 0 {
		return &k.dev0
	}
	return &k.more.devs[i-1]
}

// shift moves the token's newest bucket up to b, shifting every mask.
func (d *tokenReuse) shift(k *trKey, b int64) {
	if !k.used {
		k.top, k.used = b, true
		return
	}
	if b <= k.top {
		return
	}
	s := b - k.top
	for i := 0; i < int(k.nDev); i++ {
		dv := k.dev(i)
		if s >= 64 {
			dv.mask = 0
		} else {
			dv.mask <<= uint(s)
		}
	}
	k.top = b
}

// trim clears the buckets before keep from every mask, and drops the devices whose
// burst is over: any event of theirs that is not late would be more than gap buckets
// after their newest, which restarts the burst anyway.
func (d *tokenReuse) trim(k *trKey, keep int64) {
	if !k.used {
		return
	}
	var m uint64 = math.MaxUint64
	if w := k.top - keep + 1; w <= 0 {
		m = 0
	} else if w < 64 {
		m = 1<<uint(w) - 1
	}
	for i := 0; i < int(k.nDev); {
		dv := k.dev(i)
		dv.mask &= m
		if dv.mask == 0 && keep-dv.newest > d.gap {
			d.drop(k, i)
			continue
		}
		i++
	}
	if k.nDev <= 1 {
		k.more = nil // the burst of many devices is over
	}
}

func (d *tokenReuse) drop(k *trKey, i int) {
	last := int(k.nDev) - 1
	if i != last {
		*k.dev(i) = *k.dev(last)
	}
	if last == 0 {
		k.dev0 = trDev{}
	} else {
		k.more.devs[last-1] = trDev{}
		k.more.devs = k.more.devs[:last-1]
	}
	k.nDev--
}

// active counts the devices seen in any live bucket.
func (d *tokenReuse) active(k *trKey) int {
	n := 0
	for i := 0; i < int(k.nDev); i++ {
		if k.dev(i).mask != 0 {
			n++
		}
	}
	return n
}

// windowMask selects the bits of buckets end-n+1..end, for a token whose newest bucket
// is top.
func (d *tokenReuse) windowMask(top, end int64) uint64 {
	lo := top - end // bit of end
	hi := lo + d.lay.n - 1
	if hi < 0 || lo > 63 {
		return 0
	}
	lo, hi = max(lo, 0), min(hi, 63)
	m := uint64(math.MaxUint64) >> uint(63-(hi-lo))
	return m << uint(lo)
}

func (d *tokenReuse) advance(wm int64) {
	d.wm = wm
	closed := d.lay.closedThrough(wm)
	keep := d.lay.oldestOpen(wm)
	live := d.hot[:0]
	for _, h := range d.hot {
		r := h.ref
		if !d.tab.valid(r) {
			continue
		}
		k := &d.tab.ents[r.slot].s
		d.eval(r.slot, &h.evalTo, closed)
		d.trim(k, keep)
		if d.active(k) <= d.params[k.prm].maxDevices {
			k.hot = false
			continue
		}
		live = append(live, h)
	}
	clear(d.hot[len(live):])
	d.hot = live
	d.tab.expire((keep - d.gap - 1) * d.lay.width)
	d.inc.endQuiet(wm)
	d.next = (closed + 2) * d.lay.width
}

// eval evaluates slot's windows ending at buckets *evalTo+1..upTo.
func (d *tokenReuse) eval(slot int32, evalTo *int64, upTo int64) {
	k := &d.tab.ents[slot].s
	from := *evalTo + 1
	to := min(upTo, k.top+d.lay.n-1)
	*evalTo = max(*evalTo, upTo)
	maxDev := d.params[k.prm].maxDevices
	for e := max(from, k.top-63); e <= to; e++ {
		m := d.windowMask(k.top, e)
		n := 0
		for i := 0; i < int(k.nDev); i++ {
			if k.dev(i).mask&m != 0 {
				n++
			}
		}
		if n > maxDev {
			d.fire(slot, e, m, n)
		}
	}
}

func (d *tokenReuse) fire(slot int32, end int64, m uint64, n int) {
	ent := &d.tab.ents[slot]
	name := d.tab.keyOf(slot)
	k := &ent.s
	p := &d.params[k.prm]
	var all uint64
	for i := 0; i < int(k.nDev); i++ {
		all |= k.dev(i).mask & m
	}
	// The highest set bit is the oldest bucket, the lowest the newest.
	first := k.top - int64(63-bits.LeadingZeros64(all))
	last := k.top - int64(bits.TrailingZeros64(all))
	w := d.lay.width
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * w,
		first:    first * w,
		last:     (last + 1) * w,
		strength: n,
		severity: p.severity,
		labels:   map[string]string{"key_type": "token_fp"},
	}, func() (Evidence, string) {
		ev := Evidence{
			Window:      d.window,
			WindowStart: formatTime(msTime((end - d.lay.n + 1) * w)),
			WindowEnd:   formatTime(msTime((end + 1) * w)),
			DeviceCount: n,
			MaxDevices:  p.maxDevices,
		}
		var ips, ccs []string
		for i := 0; i < int(k.nDev); i++ {
			dv := k.dev(i)
			if dv.mask&m == 0 {
				continue
			}
			ev.Devices = append(ev.Devices, dv.dev)
			ev.DeviceEvents = append(ev.DeviceEvents, DeviceEvents{Device: dv.dev, Events: int(dv.events)})
			if dv.ip.IsValid() {
				ips = append(ips, dv.ip.String())
			}
			for _, c := range dv.cc {
				if c != 0 {
					ccs = append(ccs, unpackCountry(c))
				}
			}
		}
		if k.more != nil {
			ev.DeviceCount += k.more.over.count()
		}
		slices.Sort(ev.Devices)
		slices.SortFunc(ev.DeviceEvents, func(a, b DeviceEvents) int { return strings.Compare(a.Device, b.Device) })
		ev.ClientIPs = sortedUnique(ips)
		ev.Countries = sortedUnique(ccs)
		summary := fmt.Sprintf("Token %s was used from %d devices within %s (at most %d expected).",
			name, ev.DeviceCount, d.window, p.maxDevices)
		if len(ev.Countries) > 1 {
			summary = fmt.Sprintf("Token %s was used from %d devices in %s within %s (at most %d expected).",
				name, ev.DeviceCount, strings.Join(ev.Countries, ", "), d.window, p.maxDevices)
		}
		return ev, summary
	})
}

func (d *tokenReuse) flush() {
	for _, h := range d.hot {
		if d.tab.valid(h.ref) {
			k := &d.tab.ents[h.ref.slot].s
			d.eval(h.ref.slot, &h.evalTo, k.top+d.lay.n-1)
		}
	}
	clear(d.hot)
	d.hot = d.hot[:0]
	d.tab.reset()
	d.inc.endAll()
	d.wm, d.next = math.MinInt64/2, math.MinInt64
}

func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// packCountry packs an ISO 3166-1 alpha-2 code into 16 bits; 0 for anything else.
func packCountry(c string) uint16 {
	if len(c) != 2 || c[0] < 'A' || c[0] > 'Z' || c[1] < 'A' || c[1] > 'Z' {
		return 0
	}
	return uint16(c[0])<<8 | uint16(c[1])
}

func unpackCountry(c uint16) string { return string([]byte{byte(c >> 8), byte(c)}) }
