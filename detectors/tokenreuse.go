package detectors

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// tokenReuse fires when, within window, one token fingerprint is seen from more than
// max_devices distinct devices.
//
// Per token it keeps the count of its events per bucket and an exact set of device
// hashes (inline for the first device), each with the ring slots it was seen in, so
// the distinct devices of any window are a few AND operations. The devices after the
// first also count their events per slot; the first device's are the token's less
// theirs. Past exactLimit devices, further ones are counted in a sketch per slot
// (idSet).
//
// The token's buckets also keep a client IP (that of smallest hash) and the two
// countries of lowest code of their events, so that the evidence of a window is the
// window's, whatever order its events came in.
type tokenReuse struct {
	windowed[trKey]
	cnt   counters // the token's events per bucket, with a client IP and two countries
	arena arena
	ids   samplers // only for the sketches of devices past exactLimit
	gap   int64    // buckets of quiet that end a device's burst: the ring size
	skip  []string

	params    []trParams
	keyParams map[string]uint16
	allowAll  map[uint64]bool            // device hashes allowed for every token
	allowKey  map[string]map[uint64]bool // per token

	freeCounts [][]uint16 // per-slot event counts of devices that left
	sink       uint64     // what prefetch loaded, so that the loads are not optimised away
}

type trParams struct {
	enabled       bool
	maxDevices    int // for a bearer token
	keyMaxDevices int // for an API key (see tokenIsAPIKey)
	severity      Severity
}

// limit returns the most devices k may have within the window.
func (p *trParams) limit(k *trKey) int {
	if k.apiKey {
		return p.keyMaxDevices
	}
	return p.maxDevices
}

// tokenIsAPIKey reports whether ev's token is an API key rather than a bearer token:
// its fingerprint is the client key (the request carried its API key and no bearer
// token), or the log is API Gateway's, which cannot log a bearer token.
func tokenIsAPIKey(ev *ingest.Event) bool {
	return ev.TokenFP == ev.ClientKey || ev.Source == ingest.FormatAPIGateway
}

type trKey struct {
	r ring
	// ipB and ipH are the bucket and hash of the client IP last offered as its
	// bucket's sample: offering it to that bucket again changes nothing, and skipping
	// it saves reading the sample's value from the arena, a cache miss, for nearly
	// every event of a token (one client IP). Two IPs of one 64-bit hash offered in
	// one bucket of one token, one after the other, would keep the first.
	ipB  int64
	ipH  uint64
	prm  uint16
	nDev uint8 // devices held in dev0 and more
	// apiKey: the token is an API key (tokenIsAPIKey), which has its own threshold and
	// which the summary names as such.
	apiKey bool
	dev0   trDev   // the first device, inline: most tokens have one
	more   *trMore // the others, for the few tokens that have them
}

type trMore struct {
	devs       []trDev  // up to exactLimit-1
	over       idSet    // devices past exactLimit
	overEvents []uint16 // their events per ring slot
}

type trDev struct {
	h      uint64
	mask   uint64   // ring slots it was seen in
	newest int64    // bucket of the device's latest event
	counts []uint16 // its events per ring slot; nil for the first device
	dev    string
	// ip is an address the device used since its burst began: the client IP of its
	// earliest bucket's events of smallest hash (ipB, ipH). Events of later buckets
	// never replace it, so a window judged before or after they came names the same
	// one, whatever order they came in. The evidence names every device's, which the
	// buckets' one sample each could miss (two stolen devices in one 30s bucket).
	ip  string
	ipB int64
	ipH uint64
}

func newTokenReuse(c TokenReuseConfig, lateness time.Duration, inc *incidents) *tokenReuse {
	lay := newRingLayout(c.Window, lateness, 20, false)
	d := &tokenReuse{
		cnt:       newCounters(lay, 1, true, true, 2),
		arena:     newArena(lay, c.MaxKeys),
		ids:       newSamplers(lay, c.MaxKeys, 0, 0, 0),
		gap:       lay.size,
		keyParams: map[string]uint16{},
		allowAll:  map[uint64]bool{},
		allowKey:  map[string]map[uint64]bool{},
	}
	// A token stays until no device of it can still be in a burst: window plus gap.
	d.init(TokenReuse, lay, c.MaxKeys, 2*lay.size*lay.width, inc, d)
	d.tab.onRemove = d.release
	d.samples = &d.arena
	base := trParams{enabled: true, maxDevices: c.MaxDevices, keyMaxDevices: c.APIKeyMaxDevices, severity: c.Severity}
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
		setIf(&p.keyMaxDevices, o.MaxDevices)
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

func (d *tokenReuse) prefetchIndex(events []ingest.Event, _ *runHashes, out []uint64) {
	var sink uint64
	for i := range events {
		out[i] = keyHash(events[i].TokenFP)
		sink += d.tab.touchIndex(out[i])
	}
	d.sink = sink
}

func (d *tokenReuse) prefetchState(events []ingest.Event, hs []uint64) {
	var sink uint64
	for i := range events {
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += d.tab.warm(slot)
			sink += d.cnt.prefetch(slot, events[i].Time.UnixMilli(), &d.buck)
		}
	}
	d.sink = sink
}

func (d *tokenReuse) observe(ev *ingest.Event, h evHashes, t int64, late bool) {
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
	slot := d.tab.findHash(ev.TokenFP, h.key)
	if slot < 0 {
		slot = d.tab.add(ev.TokenFP, t)
		k := &d.tab.ents[slot].s
		if i, ok := d.keyParams[ev.TokenFP]; ok {
			k.prm = i
		}
		k.apiKey = tokenIsAPIKey(ev)
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	if !p.enabled {
		return
	}
	b, bs := d.buck.of(t)
	data := d.cnt.keyData(slot)
	keep := d.keep()
	o, dropped := d.cnt.place(data, &k.r, nil, b, bs, keep)
	d.dropSlots(k, dropped, keep)
	fresh := data[o] == 0
	d.cnt.count(data, &k.r, nil, o, b, bs, t)
	ih := hash64(ev.ClientIP)
	if fresh || ih != k.ipH || b != k.ipB {
		d.cnt.sample(data, o, fresh, b, bs, ev.ClientIP, ih, &d.arena)
		k.ipB, k.ipH = b, ih
	}
	addCountry(d.cnt.extraAt(data, o), fresh, packCountry(ev.Country))
	dv := d.device(k, dh, ev.Device, b)
	if dv == nil {
		d.ids.addTo(&k.more.over, int(bs), dh)
		if k.more.overEvents == nil {
			k.more.overEvents = d.newCounts()
		}
		inc16(&k.more.overEvents[bs])
	} else {
		dv.mask |= 1 << uint(bs)
		dv.newest = max(dv.newest, b)
		if dv.counts != nil {
			inc16(&dv.counts[bs])
		}
		if ev.ClientIP != "" && (dv.ip == "" || b < dv.ipB || (b == dv.ipB && ih < dv.ipH)) {
			dv.ip, dv.ipB, dv.ipH = strings.Clone(ev.ClientIP), b, ih
		}
	}
	if !d.tab.ents[slot].hot && d.active(k) > p.limit(k) {
		d.markHot(slot)
	}
}

// addCountry keeps in cc the two lowest country codes of a bucket's events; fresh
// says the event is the bucket's first.
func addCountry(cc []uint16, fresh bool, c uint16) {
	if fresh {
		cc[0], cc[1] = 0, 0
	}
	switch {
	case c == 0 || c == cc[0] || c == cc[1]:
	case cc[0] == 0 || c < cc[0]:
		cc[1], cc[0] = cc[0], c
	case cc[1] == 0 || c < cc[1]:
		cc[1] = c
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
			// Its old burst's buckets have left the ring: mask and counts are zero.
			*dv = trDev{h: h, dev: dv.dev, newest: b, counts: dv.counts}
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
		nd.counts = d.newCounts()
		if k.more == nil {
			k.more = new(trMore)
		}
		k.more.devs = append(k.more.devs, nd)
	}
	k.nDev++
	return k.dev(int(k.nDev) - 1)
}

func (d *tokenReuse) newCounts() []uint16 {
	if n := len(d.freeCounts); n > 0 {
		c := d.freeCounts[n-1]
		d.freeCounts = d.freeCounts[:n-1]
		return c
	}
	return make([]uint16, d.lay.size)
}

func (k *trKey) dev(i int) *trDev {
	if i == 0 {
		return &k.dev0
	}
	return &k.more.devs[i-1]
}

// dropSlots forgets, in every device, the ring slots whose buckets left the ring, and
// drops the devices whose burst is over: any event of theirs that is not late would be
// more than gap buckets after their newest, which restarts the burst anyway.
func (d *tokenReuse) dropSlots(k *trKey, dropped uint64, keep int64) {
	if dropped != 0 {
		for i := 0; i < int(k.nDev); i++ {
			dv := k.dev(i)
			dv.mask &^= dropped
			clearSlots(dv.counts, dropped)
		}
		if k.more != nil {
			d.ids.clearIDs(&k.more.over, dropped)
			clearSlots(k.more.overEvents, dropped)
		}
	}
	for i := 0; i < int(k.nDev); {
		if dv := k.dev(i); dv.mask == 0 && keep-dv.newest > d.gap {
			d.drop(k, i)
			continue
		}
		i++
	}
	if k.nDev <= 1 && k.more != nil && k.more.over.big == nil && !anySet(k.more.overEvents) {
		d.freeMore(k) // the burst of many devices is over
	}
}

// clearSlots zeroes the counts of the slots in mask; counts may be nil.
func clearSlots(counts []uint16, mask uint64) {
	for m := mask; m != 0 && counts != nil; m &= m - 1 {
		counts[bits.TrailingZeros64(m)] = 0
	}
}

func anySet(counts []uint16) bool {
	for _, c := range counts {
		if c != 0 {
			return true
		}
	}
	return false
}

// freeMore recycles what a token held for its devices after the first.
func (d *tokenReuse) freeMore(k *trKey) {
	if m := k.more; m != nil {
		for i := range m.devs {
			d.putCounts(m.devs[i].counts)
		}
		d.putCounts(m.overEvents)
		d.ids.dropIDs(&m.over)
		k.more = nil
	}
}

func (d *tokenReuse) putCounts(c []uint16) {
	if c != nil {
		clear(c)
		d.freeCounts = append(d.freeCounts, c)
	}
}

func (d *tokenReuse) drop(k *trKey, i int) {
	last := int(k.nDev) - 1
	d.putCounts(k.dev(i).counts)
	if i != last {
		*k.dev(i) = *k.dev(last)
		if i == 0 {
			// The first device's events are the token's less the others'.
			d.putCounts(k.dev0.counts)
			k.dev0.counts = nil
		}
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

func (d *tokenReuse) bounds(slot int32) (int64, int64, bool) {
	r := &d.tab.ents[slot].s.r
	return r.lo, r.top, r.used
}

func (d *tokenReuse) cool(slot int32, keep int64) bool {
	k := &d.tab.ents[slot].s
	dropped := d.cnt.trim(d.cnt.keyData(slot), &k.r, nil, keep)
	d.dropSlots(k, dropped, keep)
	return d.mayFire(slot)
}

func (d *tokenReuse) mayFire(slot int32) bool {
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	return p.enabled && d.active(k) > p.limit(k)
}

func (d *tokenReuse) expiry(wm int64) int64 { return (d.lay.oldestKept(wm) - d.gap - 1) * d.lay.width }

// windowMask returns the ring slots of the live buckets of the window ending at end.
func (d *tokenReuse) windowMask(k *trKey, end int64) uint64 {
	if !k.r.used {
		return 0
	}
	return d.lay.slotMask(max(end-d.lay.n+1, k.r.lo), min(end, k.r.top))
}

func (d *tokenReuse) judge(slot int32, end int64) {
	k := &d.tab.ents[slot].s
	m := d.windowMask(k, end)
	n := 0
	for i := 0; i < int(k.nDev); i++ {
		if k.dev(i).mask&m != 0 {
			n++
		}
	}
	if n > d.params[k.prm].limit(k) {
		d.fire(slot, end, m, n)
	}
}

func (d *tokenReuse) fire(slot int32, end int64, m uint64, n int) {
	name := d.tab.keyOf(slot)
	k := &d.tab.ents[slot].s
	p := &d.params[k.prm]
	first, last, _ := d.cnt.span(d.cnt.keyData(slot), &k.r, end-d.lay.n+1, end)
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * d.lay.width,
		first:    first,
		last:     last,
		strength: n,
		severity: p.severity,
		labels:   map[string]string{"key_type": "token_fp"},
	}, func() (Evidence, string) {
		ev := d.windowEvidence(end)
		ev.DeviceCount = n
		ev.MaxDevices = p.limit(k)
		data := d.cnt.keyData(slot)
		var ips []string
		for i := 0; i < int(k.nDev); i++ {
			dv := k.dev(i)
			if dv.mask&m == 0 {
				continue
			}
			ev.Devices = append(ev.Devices, dv.dev)
			de := DeviceEvents{Device: dv.dev, Events: d.deviceEvents(k, data, i, m), ClientIP: dv.ip}
			for b := max(end-d.lay.n+1, k.r.lo); b <= min(end, k.r.top); b++ {
				if s := d.lay.slot(b); k.r.holds(b, s) && dv.mask&(1<<uint(s)) != 0 {
					de.FirstBucket = formatTime(msTime(b * d.lay.width))
					break
				}
			}
			ev.DeviceEvents = append(ev.DeviceEvents, de)
			if dv.ip != "" {
				ips = append(ips, dv.ip)
			}
		}
		from := end - d.lay.n + 1
		// Every device's address, then the buckets' samples up to ten in all.
		ips = sortedUnique(ips)
		keep := max(10, len(ips))
		for _, ip := range d.cnt.samples(data, &k.r, from, end, &d.arena, 10) {
			if len(ips) < keep && !slices.Contains(ips, ip) {
				ips = append(ips, ip)
			}
		}
		ev.ClientIPs = sortedUnique(ips)
		var ccs []string
		for b := max(from, k.r.lo); b <= min(end, k.r.top); b++ {
			if s := d.lay.slot(b); k.r.holds(b, s) && data[s*d.cnt.stride] > 0 {
				o := s * d.cnt.stride
				for _, c := range d.cnt.extraAt(data, o) {
					if c != 0 {
						ccs = append(ccs, unpackCountry(c))
					}
				}
			}
		}
		ev.Countries = sortedUnique(ccs)
		if k.more != nil {
			ev.DeviceCount += d.ids.distinctOf(&k.more.over, m)
		}
		slices.Sort(ev.Devices)
		slices.SortFunc(ev.DeviceEvents, func(a, b DeviceEvents) int { return strings.Compare(a.Device, b.Device) })
		what := "Token"
		if k.apiKey {
			what = "API key"
		}
		summary := fmt.Sprintf("%s %s was used from %d devices within %s (at most %d expected).",
			what, name, ev.DeviceCount, d.window, ev.MaxDevices)
		if len(ev.Countries) > 1 {
			summary = fmt.Sprintf("%s %s was used from %d devices in %s within %s (at most %d expected).",
				what, name, ev.DeviceCount, strings.Join(ev.Countries, ", "), d.window, ev.MaxDevices)
		}
		return ev, summary
	})
}

// deviceEvents returns device i's events in the slots of mask.
func (d *tokenReuse) deviceEvents(k *trKey, data []uint16, i int, mask uint64) int {
	n := 0
	for m := mask & k.dev(i).mask; m != 0; m &= m - 1 {
		s := bits.TrailingZeros64(m)
		if i > 0 {
			n += int(k.dev(i).counts[s])
			continue
		}
		c := int(data[int64(s)*d.cnt.stride])
		if k.more != nil {
			for j := range k.more.devs {
				c -= int(k.more.devs[j].counts[s])
			}
			if k.more.overEvents != nil {
				c -= int(k.more.overEvents[s])
			}
		}
		n += max(c, 0)
	}
	return n
}

// release frees what a token holds outside the slab when it leaves the table.
func (d *tokenReuse) release(slot int32, _ bool) {
	d.freeMore(&d.tab.ents[slot].s)
	clear(d.cnt.keyData(slot))
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
