package store

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
)

// Both stores implement detectors.BaselineStore with the semantics of
// detectors.MemoryBaselines, which the shared test suite uses as the model: an update
// replaces the whole baseline of each key and route in it, and TrafficSince only moves
// earlier. Both also answer BaselinesAsOf, what the baselines were at a past time, for
// replay and forensics; see reconstructAsOf for what that can and cannot know.

// BaselineSettings are the detector settings the stored baselines are learned with.
// The stores need them to forget what the detectors forget and to rebuild past
// baselines; fill them with BaselineSettingsFrom. Zero fields take the detectors'
// defaults.
type BaselineSettings struct {
	// History is new_country's history. A key not seen within it of the newest
	// event the baselines know is dropped by maintenance, as the detector drops it
	// from memory; BaselinesAsOf looks this far back for a key's last event from a
	// country.
	History time.Duration
	// LearningPeriod is quiet_endpoint_spike's learning_period; the route rates are
	// averages with this time constant (at least an hour, as in the detector).
	LearningPeriod time.Duration
	// PeakMemory is quiet_endpoint_spike's peak_memory, the time constant of its
	// route peaks. A route whose rate and peak have not moved for three of the longer
	// time constant is dropped.
	PeakMemory time.Duration
	// ClientLearningPeriod and ClientPeakMemory are client_volume_spike's
	// learning_period and peak_memory; a client key is dropped as a route is.
	ClientLearningPeriod, ClientPeakMemory time.Duration
	// Window and ClientWindow are quiet_endpoint_spike's and client_volume_spike's
	// windows, Hot and ClientHot the smallest window counts their peaks take in
	// (detectors.HotCount): BaselinesAsOf rebuilds a peak reached after its time from
	// the archive's requests per minute, as the detector folds it.
	Window, ClientWindow time.Duration
	Hot, ClientHot       uint32
	// ObjectPeakMemory is object_enumeration's peak_memory: a client and route whose
	// peak is older than three of it is dropped.
	ObjectPeakMemory time.Duration
	// PrivilegeHistory is privilege_anomaly's history: a key whose last privileged
	// request is older than it is dropped.
	PrivilegeHistory time.Duration
	// Refresh is the detectors' baseline_refresh: a refresh that loads only what
	// changed reads back this much further (see changesMargin).
	Refresh time.Duration
}

// BaselineSettingsFrom returns the settings of the detectors configured by cfg.
func BaselineSettingsFrom(cfg detectors.Config) BaselineSettings {
	return BaselineSettings{
		History:              cfg.NewCountry.History,
		LearningPeriod:       cfg.QuietEndpointSpike.LearningPeriod,
		PeakMemory:           cfg.QuietEndpointSpike.PeakMemory,
		ClientLearningPeriod: cfg.ClientVolumeSpike.LearningPeriod,
		ClientPeakMemory:     cfg.ClientVolumeSpike.PeakMemory,
		Window:               cfg.QuietEndpointSpike.Window,
		ClientWindow:         cfg.ClientVolumeSpike.Window,
		Hot:                  detectors.HotCount(uint32(max(cfg.QuietEndpointSpike.MinCount, 0)), cfg.QuietEndpointSpike.MinPeakRatio),
		ClientHot:            detectors.HotCount(uint32(max(cfg.ClientVolumeSpike.MinCount, 0)), cfg.ClientVolumeSpike.MinPeakRatio),
		ObjectPeakMemory:     cfg.ObjectEnumeration.PeakMemory,
		PrivilegeHistory:     cfg.PrivilegeAnomaly.History,
		Refresh:              cfg.BaselineRefresh,
	}
}

func (s BaselineSettings) withDefaults() BaselineSettings {
	d := BaselineSettingsFrom(detectors.DefaultConfig())
	for _, f := range []struct{ v, def *time.Duration }{
		{&s.History, &d.History}, {&s.LearningPeriod, &d.LearningPeriod}, {&s.PeakMemory, &d.PeakMemory},
		{&s.ClientLearningPeriod, &d.ClientLearningPeriod}, {&s.ClientPeakMemory, &d.ClientPeakMemory},
		{&s.ObjectPeakMemory, &d.ObjectPeakMemory}, {&s.PrivilegeHistory, &d.PrivilegeHistory},
		{&s.Refresh, &d.Refresh}, {&s.Window, &d.Window}, {&s.ClientWindow, &d.ClientWindow},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	if s.Hot == 0 {
		s.Hot = d.Hot
	}
	if s.ClientHot == 0 {
		s.ClientHot = d.ClientHot
	}
	return s
}

// changesMargin is how far below the newest version of the last load a load of the
// changes (ClickHouse.LoadBaselinesSince) reads, so that it also gets the rows that
// landed after that load with older versions. A version is its writer's wall clock
// when it made the update (never below the versions it has read: see versionClock),
// so such rows are those of writers whose clocks are behind the newest writer's (NTP
// keeps hosts within milliseconds; minutes cover a host that lost it), those in flight
// when the last load read (at most baseline_timeout, seconds), and those another
// instance spilled in an outage and wrote once ClickHouse was back (this process's own
// spill is waited for: see LoadBaselinesSince). Five minutes cover the first two with
// room to spare; one baseline_refresh more has every version read by two loads in a
// row, so a row that lands up to a refresh late, a short outage's spill, is still read
// once. A spill written back later than that is read by the next whole load (a
// restart, a task that moves), or looked up when its key is evicted and seen again.
// Reading rows twice is harmless: the merge is idempotent.
func (s BaselineSettings) changesMargin() time.Duration { return 5*time.Minute + s.Refresh }

// tau is the time constant of the route rates in milliseconds, as the detector sets it.
func (s BaselineSettings) tau() float64 {
	return float64(max(s.LearningPeriod, time.Hour).Milliseconds())
}

// routeTTL is how long a route may go without a new bucket in its rate or a new peak
// before it is dropped: both have decayed below 5%, and the detector has forgotten it
// too.
func (s BaselineSettings) routeTTL() int64 {
	return 3 * max(int64(s.tau()), s.PeakMemory.Milliseconds())
}

// clientTTL is routeTTL for client_volume_spike's keys.
func (s BaselineSettings) clientTTL() int64 {
	return 3 * max(max(s.ClientLearningPeriod, time.Hour).Milliseconds(), s.ClientPeakMemory.Milliseconds())
}

// objectTTL is how long a client and route's peak is kept.
func (s BaselineSettings) objectTTL() int64 { return 3 * s.ObjectPeakMemory.Milliseconds() }

// asOfSpan is how far before t BaselinesAsOf counts requests to rebuild a route rate:
// five time constants, beyond which a request weighs less than 0.7%.
func (s BaselineSettings) asOfSpan() int64 { return 5 * int64(s.tau()) }

// clientTau and clientAsOfSpan are tau and asOfSpan for client_volume_spike's rates.
func (s BaselineSettings) clientTau() float64 {
	return float64(max(s.ClientLearningPeriod, time.Hour).Milliseconds())
}

func (s BaselineSettings) clientAsOfSpan() int64 { return 5 * int64(s.clientTau()) }

// keyLastSeen returns the last time k's key was seen: its newest country, or when it
// came first if it has no country.
func keyLastSeen(k *detectors.KeyBaseline) time.Time {
	last := k.FirstSeen
	for _, c := range k.Countries {
		if c.LastSeen.After(last) {
			last = c.LastSeen
		}
	}
	return last
}

// newestSeen returns the newest time an update mentions, as Unix ms; MinInt64 if none.
func newestSeen(u *detectors.Baselines) int64 {
	n := int64(math.MinInt64)
	for i := range u.Keys {
		n = max(n, keyLastSeen(&u.Keys[i]).UnixMilli())
	}
	for _, r := range u.Routes {
		n = max(n, routeLast(&r))
	}
	for _, c := range u.Clients {
		n = max(n, clientLast(&c))
	}
	for _, o := range u.Objects {
		n = max(n, o.PeakAt.UnixMilli())
	}
	for _, p := range u.Privileged {
		n = max(n, p.LastSeen.UnixMilli())
	}
	return n
}

// routeLast is the last time a route's baseline moved, Unix ms.
func routeLast(r *detectors.RouteBaseline) int64 {
	return max(r.AsOf.UnixMilli(), r.PeakAt.UnixMilli())
}

// clientLast is the last time a client's baseline moved, Unix ms.
func clientLast(c *detectors.ClientBaseline) int64 {
	return max(c.AsOf.UnixMilli(), c.PeakAt.UnixMilli())
}

func emptyUpdate(u *detectors.Baselines) bool {
	return len(u.Keys) == 0 && len(u.Routes) == 0 && len(u.Clients) == 0 && len(u.Objects) == 0 &&
		len(u.Privileged) == 0 && u.TrafficSince.IsZero()
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// A versionClock hands out the versions of baseline updates: wall-clock nanoseconds,
// strictly increasing, and above every version seen (in ClickHouse, in the spill). A
// later update thus wins over an earlier one in ReplacingMergeTree however late the
// earlier one is written, across restarts, and across instances that loaded each
// other's writes, even when clocks disagree or step back.
type versionClock struct{ last uint64 }

func (c *versionClock) next(now time.Time) uint64 {
	v := uint64(max(now.UnixNano(), 0))
	if v <= c.last {
		v = c.last + 1
	}
	c.last = v
	return v
}

func (c *versionClock) observe(v uint64) { c.last = max(c.last, v) }

// An update spilled to disk is a block whose id is its version and whose records are
// its entries, each a kind byte then:
//
//	keyRecord        key, first seen, events, countries: n, then each country, first
//	                 seen, last seen, events
//	routeRecord      route, rate (float64 bits, big-endian), as of: written before
//	                 routes had peaks, still read
//	peakRouteRecord  route, rate, as of, peak (float64 bits), peak at
//	clientRecord     key, first seen, rate, as of, peak, peak at
//	objectRecord     client, route, peak, peak at
//	privilegeRecord  key, first seen, last seen, events
//	sinceRecord      traffic since
//
// Strings are a uvarint length and bytes, times zig-zag varints of Unix ms, counts
// uvarints. The bodies after the names are also what Local stores.
const (
	keyRecord       = 'k'
	routeRecord     = 'r'
	peakRouteRecord = 'R'
	clientRecord    = 'c'
	objectRecord    = 'o'
	privilegeRecord = 'p'
	sinceRecord     = 's'
)

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendFloat(dst []byte, f float64) []byte {
	return binary.BigEndian.AppendUint64(dst, math.Float64bits(f))
}

func appendTime(dst []byte, t time.Time) []byte { return binary.AppendVarint(dst, t.UnixMilli()) }

func appendKeyBody(dst []byte, k *detectors.KeyBaseline) []byte {
	dst = appendTime(dst, k.FirstSeen)
	dst = binary.AppendUvarint(dst, k.Events)
	dst = binary.AppendUvarint(dst, uint64(len(k.Countries)))
	for _, c := range k.Countries {
		dst = appendString(dst, c.Country)
		dst = appendTime(dst, c.FirstSeen)
		dst = appendTime(dst, c.LastSeen)
		dst = binary.AppendUvarint(dst, c.Events)
	}
	return dst
}

// appendRouteBody writes a route's peakRouteRecord body.
func appendRouteBody(dst []byte, r *detectors.RouteBaseline) []byte {
	dst = appendTime(appendFloat(dst, r.RatePerMinute), r.AsOf)
	return appendTime(appendFloat(dst, r.Peak), r.PeakAt)
}

func appendClientBody(dst []byte, c *detectors.ClientBaseline) []byte {
	dst = appendTime(appendFloat(appendTime(dst, c.FirstSeen), c.RatePerMinute), c.AsOf)
	return appendTime(appendFloat(dst, c.Peak), c.PeakAt)
}

// objectName is the name Local files a client and route under: the client with its
// length, then the route.
func objectName(o *detectors.ObjectBaseline) []byte {
	return append(appendString(nil, o.Client), o.Route...)
}

func appendObjectBody(dst []byte, o *detectors.ObjectBaseline) []byte {
	return appendTime(appendFloat(dst, o.Peak), o.PeakAt)
}

func appendPrivilegeBody(dst []byte, p *detectors.PrivilegeBaseline) []byte {
	return binary.AppendUvarint(appendTime(appendTime(dst, p.FirstSeen), p.LastSeen), p.Events)
}

// encodeUpdate returns u as spill records and how many there are.
func encodeUpdate(u *detectors.Baselines) ([]byte, int) {
	var b []byte
	n := 0
	if !u.TrafficSince.IsZero() {
		b = appendTime(append(b, sinceRecord), u.TrafficSince)
		n++
	}
	for i := range u.Keys {
		b = appendKeyBody(appendString(append(b, keyRecord), u.Keys[i].Key), &u.Keys[i])
		n++
	}
	for i := range u.Routes {
		b = appendRouteBody(appendString(append(b, peakRouteRecord), u.Routes[i].Route), &u.Routes[i])
		n++
	}
	for i := range u.Clients {
		b = appendClientBody(appendString(append(b, clientRecord), u.Clients[i].Key), &u.Clients[i])
		n++
	}
	for i := range u.Objects {
		o := &u.Objects[i]
		b = appendObjectBody(appendString(appendString(append(b, objectRecord), o.Client), o.Route), o)
		n++
	}
	for i := range u.Privileged {
		b = appendPrivilegeBody(appendString(append(b, privilegeRecord), u.Privileged[i].Key), &u.Privileged[i])
		n++
	}
	return b, n
}

// A recordReader takes a record apart, copying what it keeps.
type recordReader struct {
	data []byte
	err  error
	// countries interns country codes: a few hundred values over millions of rows.
	countries map[string]string
}

func (r *recordReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: baseline %s", errCorrupt, what)
	}
}

func (r *recordReader) uvarint(what string) uint64 {
	v, k := binary.Uvarint(r.data)
	if k <= 0 {
		r.fail(what)
		r.data = nil
		return 0
	}
	r.data = r.data[k:]
	return v
}

func (r *recordReader) time(what string) time.Time {
	v, k := binary.Varint(r.data)
	if k <= 0 {
		r.fail(what)
		r.data = nil
		return time.Time{}
	}
	r.data = r.data[k:]
	return msTime(v)
}

func (r *recordReader) bytes(what string) []byte {
	n := r.uvarint(what)
	if n > uint64(len(r.data)) {
		r.fail(what)
		r.data = nil
		return nil
	}
	b := r.data[:n]
	r.data = r.data[n:]
	return b
}

func (r *recordReader) country(what string) string {
	b := r.bytes(what)
	if s, ok := r.countries[string(b)]; ok {
		return s
	}
	if r.countries == nil {
		r.countries = map[string]string{}
	}
	s := string(b)
	r.countries[s] = s
	return s
}

func (r *recordReader) keyBody(k *detectors.KeyBaseline) {
	k.FirstSeen = r.time("first seen")
	k.Events = r.uvarint("events")
	n := r.uvarint("countries")
	if n > uint64(len(r.data)) { // every country takes bytes: a wild count is corruption
		r.fail("countries")
		return
	}
	k.Countries = make([]detectors.CountryBaseline, 0, n)
	for range n {
		c := detectors.CountryBaseline{Country: r.country("country")}
		c.FirstSeen = r.time("country first seen")
		c.LastSeen = r.time("country last seen")
		c.Events = r.uvarint("country events")
		if r.err != nil {
			return
		}
		k.Countries = append(k.Countries, c)
	}
}

func (r *recordReader) float(what string) float64 {
	if len(r.data) < 8 {
		r.fail(what)
		r.data = nil
		return 0
	}
	f := math.Float64frombits(binary.BigEndian.Uint64(r.data))
	r.data = r.data[8:]
	return f
}

// routeBody reads a route's body: its rate and as of, then, unless it was written
// before routes had peaks (old), its peak and peak at.
func (r *recordReader) routeBody(rb *detectors.RouteBaseline, old bool) {
	rb.RatePerMinute = r.float("rate")
	rb.AsOf = r.time("as of")
	if !old {
		rb.Peak = r.float("peak")
		rb.PeakAt = r.time("peak at")
	}
}

func (r *recordReader) clientBody(c *detectors.ClientBaseline) {
	c.FirstSeen = r.time("first seen")
	c.RatePerMinute = r.float("rate")
	c.AsOf = r.time("as of")
	c.Peak = r.float("peak")
	c.PeakAt = r.time("peak at")
}

func (r *recordReader) objectBody(o *detectors.ObjectBaseline) {
	o.Peak = r.float("peak")
	o.PeakAt = r.time("peak at")
}

func (r *recordReader) privilegeBody(p *detectors.PrivilegeBaseline) {
	p.FirstSeen = r.time("first seen")
	p.LastSeen = r.time("last seen")
	p.Events = r.uvarint("events")
}

// decodeUpdate reads n spill records back into an update.
func decodeUpdate(data []byte, n int) (detectors.Baselines, error) {
	var u detectors.Baselines
	r := recordReader{data: data}
	for i := 0; i < n && r.err == nil; i++ {
		if len(r.data) == 0 {
			r.fail("record missing")
			break
		}
		kind := r.data[0]
		r.data = r.data[1:]
		switch kind {
		case sinceRecord:
			u.TrafficSince = r.time("traffic since")
		case keyRecord:
			k := detectors.KeyBaseline{Key: string(r.bytes("key"))}
			r.keyBody(&k)
			u.Keys = append(u.Keys, k)
		case routeRecord, peakRouteRecord:
			rb := detectors.RouteBaseline{Route: string(r.bytes("route"))}
			r.routeBody(&rb, kind == routeRecord)
			u.Routes = append(u.Routes, rb)
		case clientRecord:
			c := detectors.ClientBaseline{Key: string(r.bytes("client key"))}
			r.clientBody(&c)
			u.Clients = append(u.Clients, c)
		case objectRecord:
			o := detectors.ObjectBaseline{Client: string(r.bytes("client"))}
			o.Route = string(r.bytes("route"))
			r.objectBody(&o)
			u.Objects = append(u.Objects, o)
		case privilegeRecord:
			p := detectors.PrivilegeBaseline{Key: string(r.bytes("privileged key"))}
			r.privilegeBody(&p)
			u.Privileged = append(u.Privileged, p)
		default:
			r.fail(fmt.Sprintf("record kind %q", kind))
		}
	}
	if r.err == nil && len(r.data) != 0 {
		r.fail("bytes after the last record")
	}
	return u, r.err
}

// A pairFact is what the archive says about one key's events from one country: the
// last event before t (at or after lookFrom) and how many come at or after t.
type pairFact struct {
	key, country string
	lastBefore   int64 // Unix ms; noEvent when the archive has none in [lookFrom, t)
	after        uint64
}

const noEvent = math.MinInt64

// archiveFacts is what reconstructAsOf needs of the event archive for a time t.
type archiveFacts struct {
	// lookFrom is where the archive's testimony about the past starts: t minus
	// history, or the oldest archived event if that is later, but not after t.
	lookFrom int64
	pairs    []pairFact                // sorted by key, then country
	routes   []detectors.RouteBaseline // rates rebuilt as of t, sorted by route
	// clients are the client keys' rates rebuilt as of t (Key and RatePerMinute only),
	// sorted by key.
	clients []detectors.ClientBaseline
	// routePeaks and clientPeaks are the peaks as of t of the routes and client keys
	// whose stored peak came at or after t (peaksToRebuild), rebuilt from the
	// archive's requests per minute (peakFolder); one without requests is missing.
	routePeaks, clientPeaks map[string]peakFact
}

// A peakFact is a peak rebuilt from the archive: the count of the window it was
// reached in, and that window's end (Unix ms).
type peakFact struct {
	v  float64
	at int64
}

// asOf returns the peak decayed to x with time constant ptau (ms), as the detector
// decays it.
func (p peakFact) asOf(x int64, ptau float64) float64 {
	if p.v == 0 {
		return 0
	}
	return p.v * math.Exp(-float64(x-p.at)/ptau)
}

// minuteCount is an entry's requests in the minute that starts at start (Unix ms).
type minuteCount struct {
	start int64
	n     uint64
}

// peakSpan is how far before t a peak is rebuilt from: three of its time constant,
// past which a peak has decayed below 5% of what it was.
func peakSpan(peakMemory time.Duration) int64 { return 3 * peakMemory.Milliseconds() }

// A peakFolder rebuilds an entry's peak from its requests per minute, given in time
// order, as the detector folds it: the windows of window's length (whole minutes)
// ending at each minute end, each counting the minutes that start within it; a window
// of at least hot requests replaces the peak when it is at least the peak decayed to
// its end (time constant ptau, ms). It holds one window's minutes, whatever the span
// read. The detector's windows end at each of its buckets, finer than a minute, so a
// peak rebuilt can fall short of the one it had by the requests of part of a minute.
type peakFolder struct {
	window int64 // ms, whole minutes
	hot    uint64
	ptau   float64
	mins   []minuteCount // the minutes of the window ending at next, and the current one
	sum    uint64
	next   int64 // the end of the next window to judge
	p      peakFact
}

func newPeakFolder(window time.Duration, hot uint32, peakMemory time.Duration) *peakFolder {
	return &peakFolder{window: max((window.Milliseconds()+59999)/60000, 1) * 60000, hot: uint64(hot),
		ptau: float64(peakMemory.Milliseconds())}
}

// add counts n requests in the minute that starts at start, no earlier than the
// minutes added before.
func (f *peakFolder) add(start int64, n uint64) {
	if k := len(f.mins); k > 0 && f.mins[k-1].start == start {
		f.mins[k-1].n += n
		f.sum += n
		return
	}
	f.judge(start) // the windows that end before this minute
	f.mins = append(f.mins, minuteCount{start: start, n: n})
	f.sum += n
	f.next = max(f.next, start+60000)
}

// judge folds in the windows that end by upTo.
func (f *peakFolder) judge(upTo int64) {
	for f.next <= upTo {
		drop := 0
		for drop < len(f.mins) && f.mins[drop].start < f.next-f.window {
			f.sum -= f.mins[drop].n
			drop++
		}
		f.mins = append(f.mins[:0], f.mins[drop:]...)
		if len(f.mins) == 0 {
			return // nothing more until the next minute added
		}
		if f.sum >= f.hot && float64(f.sum) >= f.p.asOf(f.next, f.ptau) {
			f.p = peakFact{v: float64(f.sum), at: f.next}
		}
		f.next += 60000
	}
}

// peakAsOf returns the peak as of tm, folding in the windows that end by then; no
// minute may be added after.
func (f *peakFolder) peakAsOf(tm int64) peakFact {
	f.judge(tm)
	return f.p
}

// peaksToRebuild returns the routes and client keys of cur whose stored peak came at
// or after tm (Unix ms), sorted: what reconstructAsOf needs rebuilt peaks of.
func peaksToRebuild(cur *detectors.Baselines, tm int64) (routes, clients []string) {
	for i := range cur.Routes {
		if r := &cur.Routes[i]; r.Peak > 0 && r.PeakAt.UnixMilli() >= tm {
			routes = append(routes, r.Route)
		}
	}
	for i := range cur.Clients {
		if c := &cur.Clients[i]; c.Peak > 0 && c.PeakAt.UnixMilli() >= tm && c.FirstSeen.UnixMilli() < tm {
			clients = append(clients, c.Key)
		}
	}
	slices.Sort(routes)
	slices.Sort(clients)
	return routes, clients
}

// lookFrom returns the start of the archive's testimony at t (Unix ms): t minus
// history, the oldest archived event (oldest; math.MaxInt64 for an empty archive) if
// that is later, t if both are.
func lookFrom(t, history, oldest int64) int64 { return min(max(t-history, oldest), t) }

// routeWeight is the weight, in a rate of requests a minute as of t, of one request
// counted in the minute that ends at end (both Unix ms): the detector's exponential
// average with time constant tau, each bucket weighted as of its end.
func routeWeight(t, end int64, tau float64) float64 {
	return math.Exp(-float64(t-end)/tau) * 60000 / tau
}

// reconstructAsOf rebuilds the baselines as they were at t from the stored baselines
// cur (the newest of each entry; ReplacingMergeTree and bbolt keep no older ones) and
// what the event archive says around t. It is exact where the stored entry did not
// change at or after t, and an estimate elsewhere:
//
//   - TrafficSince: exact (it only moves earlier).
//   - Keys and countries first seen before t are present; those first seen later are
//     not. A key that expired (idle beyond history) or was evicted and came back
//     after t has a first-seen after t and is missing, although it existed at t.
//   - A country last seen before t is as stored. A country seen again at or after t
//     gets as last-seen its last archived event before t, looked up within history
//     before t; with none there, the latest time the archive allows: just before
//     where the archive's testimony starts (lookFrom), which with an archive covering
//     the whole history puts it outside history, as it was. Without an archive that
//     reaches back before t this is just before t: a country active after t is taken
//     to have been active up to t.
//   - Counts (key and country events) of entries seen at or after t are the stored
//     counts less the archived events at or after t, at least 1. Archived events the
//     baseline had not yet counted when it was last written (seconds' worth, written
//     after the last sync) are subtracted too, and events a new_country route-prefix
//     override ignores are counted by the archive but not by the detector.
//   - Route rates last folded before t are as stored. Others are rebuilt from the
//     archive's requests per route and minute over the five time constants before t
//     (whole minutes ending by t; the detector folds finer buckets, which shifts a
//     weight by under 0.05% for a time constant of a day, and an allowlisted client's
//     requests, which the detector skips, count), as of t. A route without archived
//     requests in that span is missing: its rate was below 0.7% of what it is now.
//     A route's peak is as stored if it was reached before t. Else it is rebuilt from
//     the archive's requests of the route per minute within three peak_memory before
//     t (peakFolder; the detector's finer buckets, and requests answered 404 or 405,
//     which the detector does not count, make it an estimate); without requests
//     there, none (0).
//   - A client key's rate (client_volume_spike) is as stored if neither it nor the
//     key's peak moved at or after t. Otherwise, for a key first seen before t, it is
//     rebuilt as a route's is, from the archive's requests of the key (its own time
//     constant, the requests of the detector's skip rules counted), with the stored
//     peak if it was reached before t, else one rebuilt as a route's is; a key
//     without archived requests in that span is missing.
//   - object_enumeration's client and route peaks are as stored if they were reached
//     before t, and missing otherwise: the archive does not hold the distinct objects
//     of each window a peak is made of.
//   - privilege_anomaly's keys first seen before t are present; one seen again at or
//     after t is taken to have been seen just before t, as a country is without an
//     archive.
func reconstructAsOf(cur detectors.Baselines, facts archiveFacts, t time.Time) detectors.Baselines {
	tm := t.UnixMilli()
	var out detectors.Baselines
	if !cur.TrafficSince.IsZero() && cur.TrafficSince.UnixMilli() < tm {
		out.TrafficSince = cur.TrafficSince
	}
	pairs := facts.pairs
	for i := range cur.Keys {
		k := &cur.Keys[i]
		// The facts of k, a run of pairs; skip those of keys before it.
		for len(pairs) > 0 && pairs[0].key < k.Key {
			pairs = pairs[1:]
		}
		n := 0
		for n < len(pairs) && pairs[n].key == k.Key {
			n++
		}
		mine := pairs[:n]
		pairs = pairs[n:]
		if k.FirstSeen.UnixMilli() >= tm {
			continue
		}
		kb := detectors.KeyBaseline{Key: k.Key, FirstSeen: k.FirstSeen, Events: k.Events}
		if keyLastSeen(k).UnixMilli() >= tm {
			var after uint64
			for _, p := range mine {
				after += p.after
			}
			kb.Events = max(k.Events-min(after, k.Events), 1)
		}
		for _, c := range k.Countries {
			if c.FirstSeen.UnixMilli() >= tm {
				continue
			}
			if c.LastSeen.UnixMilli() >= tm {
				j, found := slices.BinarySearchFunc(mine, c.Country, func(p pairFact, country string) int {
					return strings.Compare(p.country, country)
				})
				last := max(c.FirstSeen.UnixMilli(), facts.lookFrom-1)
				var after uint64
				if found {
					if mine[j].lastBefore != noEvent {
						last = max(mine[j].lastBefore, c.FirstSeen.UnixMilli())
					}
					after = mine[j].after
				}
				c.LastSeen = msTime(min(last, tm-1))
				c.Events = max(c.Events-min(after, c.Events), 1)
			}
			kb.Countries = append(kb.Countries, c)
		}
		out.Keys = append(out.Keys, kb)
	}
	rebuilt := facts.routes
	for _, r := range cur.Routes {
		for len(rebuilt) > 0 && rebuilt[0].Route < r.Route {
			out.Routes = append(out.Routes, rebuilt[0])
			rebuilt = rebuilt[1:]
		}
		var fresh *detectors.RouteBaseline
		if len(rebuilt) > 0 && rebuilt[0].Route == r.Route {
			fresh = &rebuilt[0]
			rebuilt = rebuilt[1:]
		}
		switch {
		case r.AsOf.UnixMilli() < tm:
			out.Routes = append(out.Routes, r)
		case fresh != nil:
			out.Routes = append(out.Routes, *fresh)
		}
	}
	out.Routes = append(out.Routes, rebuilt...)
	peaks := map[string]*detectors.RouteBaseline{}
	for i := range cur.Routes {
		peaks[cur.Routes[i].Route] = &cur.Routes[i]
	}
	for i := range out.Routes {
		r := &out.Routes[i]
		r.Peak, r.PeakAt = 0, time.Time{}
		c := peaks[r.Route]
		switch {
		case c == nil:
		case c.PeakAt.UnixMilli() < tm:
			r.Peak, r.PeakAt = c.Peak, c.PeakAt
		default:
			if p, ok := facts.routePeaks[r.Route]; ok && p.v > 0 {
				r.Peak, r.PeakAt = p.v, msTime(p.at)
			}
		}
	}
	rebuiltClients := facts.clients
	for _, c := range cur.Clients {
		var fresh *detectors.ClientBaseline
		for len(rebuiltClients) > 0 && rebuiltClients[0].Key <= c.Key {
			if rebuiltClients[0].Key == c.Key {
				fresh = &rebuiltClients[0]
			}
			rebuiltClients = rebuiltClients[1:]
		}
		switch {
		case c.FirstSeen.UnixMilli() >= tm:
		case clientLast(&c) < tm:
			out.Clients = append(out.Clients, c)
		case fresh != nil:
			cb := detectors.ClientBaseline{Key: c.Key, FirstSeen: c.FirstSeen, RatePerMinute: fresh.RatePerMinute, AsOf: msTime(tm)}
			if c.PeakAt.UnixMilli() < tm {
				cb.Peak, cb.PeakAt = c.Peak, c.PeakAt
			} else if p, ok := facts.clientPeaks[c.Key]; ok && p.v > 0 {
				cb.Peak, cb.PeakAt = p.v, msTime(p.at)
			}
			out.Clients = append(out.Clients, cb)
		}
	}
	for _, o := range cur.Objects {
		if o.PeakAt.UnixMilli() < tm {
			out.Objects = append(out.Objects, o)
		}
	}
	for _, p := range cur.Privileged {
		if p.FirstSeen.UnixMilli() >= tm {
			continue
		}
		if p.LastSeen.UnixMilli() >= tm {
			p.LastSeen = msTime(tm - 1)
		}
		out.Privileged = append(out.Privileged, p)
	}
	return out
}

// sortPairs sorts archive facts by key, then country.
func sortPairs(p []pairFact) {
	slices.SortFunc(p, func(a, b pairFact) int {
		return cmp.Or(strings.Compare(a.key, b.key), strings.Compare(a.country, b.country))
	})
}
