package detectors

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// AuthFailureSprayConfig configures auth_failure_spray: within Window, responses with a
// status in Statuses to one client IP carry at least MinCredentials distinct client
// keys or tokens, and they are at least MinRatio of that IP's requests.
type AuthFailureSprayConfig struct {
	Common         `yaml:",inline"`
	Window         time.Duration              `yaml:"window"`
	Statuses       []int                      `yaml:"statuses"`
	MinCredentials int                        `yaml:"min_credentials"`
	MinRatio       float64                    `yaml:"min_ratio"`
	Allowlist      []ClientAllow              `yaml:"allowlist"` // an address or range: a login test rig
	Overrides      []AuthFailureSprayOverride `yaml:"overrides"`
}

// AuthFailureSprayOverride is an Override with auth_failure_spray's thresholds for one
// client IP (Key); a route_prefix override may only set enabled: false.
type AuthFailureSprayOverride struct {
	Override       `yaml:",inline"`
	MinCredentials *int     `yaml:"min_credentials,omitempty"`
	MinRatio       *float64 `yaml:"min_ratio,omitempty"`
}

func (c *AuthFailureSprayConfig) validate(add func(error)) {
	validateClientKeyed(add, AuthFailureSpray, &c.Common, c.Allowlist, c.Overrides, func(p string, o *AuthFailureSprayOverride) bool {
		if o.MinCredentials != nil {
			checkCount(add, p+".min_credentials", *o.MinCredentials)
		}
		if o.MinRatio != nil {
			checkShare(add, p+".min_ratio", *o.MinRatio)
		}
		return o.MinCredentials != nil || o.MinRatio != nil
	})
	checkStatuses(add, AuthFailureSpray+".statuses", c.Statuses)
	if c.MinCredentials < 2 || c.MinCredentials > 1_000_000 {
		add(cfgErr(AuthFailureSpray+".min_credentials", "must be between 2 and 1000000, got %d", c.MinCredentials))
	}
	checkShare(add, AuthFailureSpray+".min_ratio", c.MinRatio)
}

// authSpray fires when, within window, responses with a status in statuses (401) to one
// client IP carry at least min_credentials distinct client keys or tokens, and they are
// at least min_ratio of that IP's requests: credential stuffing, key guessing. One
// client retrying its expired token is one credential; an address shared by many
// healthy keys (a NAT, a mobile carrier's gateway) fails a small share of its requests.
//
// Per IP it keeps a ring of (failed, total) counts per bucket; an IP whose ring holds
// at least min_credentials failures may fire and is hot. A sampler counts the distinct
// credentials of its failures (the token fingerprint, else the client key) and keeps
// samples of them.
type authSpray struct {
	windowed[asKey]
	cnt      counters
	smp      samplers
	statuses []int
	rules    clientRules[asParams]
	sink     uint64 // what prefetch loaded, so that the loads are not optimised away
}

type asParams struct {
	enabled  bool
	minCreds uint32
	minRatio float64
	severity Severity
}

type asKey struct {
	r    ring
	sums [1]uint32 // failed over the live buckets (the totals are summed when judged)
	smp  *sampler  // while the ring holds failures
	prm  uint16
}

// Evidence fields the sampler keeps, per failure.
const (
	asClientKey = iota
	asTokenFP
	asPath
	asRequestID
	asUserAgent
	asAddress // the addresses of a client keyed by its IPv6 /64
	asFields
)

func newAuthFailureSpray(c AuthFailureSprayConfig, lateness time.Duration, inc *incidents) *authSpray {
	lay := newRingLayout(c.Window, lateness, 10, false)
	d := &authSpray{
		cnt:      newCounters(lay, 2, true, false, 0),
		smp:      newSamplers(lay, c.MaxKeys, asFields, 4, len(c.Statuses)),
		statuses: slices.Clone(c.Statuses),
	}
	d.init(AuthFailureSpray, lay, c.MaxKeys, lay.size*lay.width, inc, d)
	d.tab.onRemove = d.release
	d.samples = &d.smp.arena
	base := asParams{enabled: true, minCreds: uint32(c.MinCredentials), minRatio: c.MinRatio, severity: c.Severity}
	d.rules = newClientRules(base, asParams{}, c.Overrides, c.Allowlist, func(p *asParams, o *AuthFailureSprayOverride) {
		o.apply(&p.enabled, &p.severity)
		if o.MinCredentials != nil {
			p.minCreds = uint32(*o.MinCredentials)
		}
		setIf(&p.minRatio, o.MinRatio)
	})
	return d
}

func (d *authSpray) prefetchIndex(events []ingest.Event, hs *runHashes, out []uint64) {
	var sink uint64
	for i := range events {
		out[i] = hs.ip[i]
		sink += d.tab.touchIndex(out[i])
	}
	d.sink = sink
}

func (d *authSpray) prefetchState(events []ingest.Event, hs []uint64) {
	var sink uint64
	for i := range events {
		if slot := d.tab.peek(hs[i]); slot >= 0 {
			sink += d.tab.warm(slot)
			sink += d.cnt.prefetch(slot, events[i].Time.UnixMilli(), &d.buck)
		}
	}
	d.sink = sink
}

func (d *authSpray) observe(ev *ingest.Event, h evHashes, t int64, late bool) {
	if late || ev.ClientIP == "" || d.rules.skip(ev) {
		return
	}
	key := AddrKey(ev.ClientIP, &d.addr)
	slot := d.tab.findHash(key, h.key)
	if slot < 0 {
		slot = d.tab.add(key, t)
		d.tab.ents[slot].s.prm = d.rules.of(key)
	} else {
		d.tab.touch(slot, t)
	}
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	if !p.enabled {
		return
	}
	b, bs := d.buck.of(t)
	data := d.cnt.keyData(slot)
	o, _ := d.cnt.place(data, &k.r, k.sums[:], b, bs, d.keep())
	d.settle(k)
	d.cnt.add(data, k.sums[:], o, 1)
	j := slices.Index(d.statuses, ev.Status)
	if j < 0 {
		return
	}
	d.cnt.count(data, &k.r, k.sums[:], o, b, bs, t)
	if k.smp == nil {
		k.smp = d.smp.get()
	}
	s := k.smp
	cs := d.smp.claim(s, b, bs)
	d.smp.offer(s, b, cs, asClientKey, ev.ClientKey)
	d.smp.offer(s, b, cs, asTokenFP, ev.TokenFP)
	d.smp.offer(s, b, cs, asPath, ev.Path)
	d.smp.offer(s, b, cs, asRequestID, ev.RequestID)
	d.smp.offer(s, b, cs, asUserAgent, ev.UserAgent)
	if key != ev.ClientIP {
		d.smp.offer(s, b, cs, asAddress, ev.ClientIP)
	}
	if cred := credential(ev); cred != 0 {
		d.smp.addID(s, cs, cred)
	}
	d.smp.inc(s, cs, j)
	if k.sums[0] >= p.minCreds {
		d.markHot(slot)
	}
}

// credential returns the hash of the credential a request carried: its token (or API
// key) fingerprint, else its client key; 0 when it carried none.
func credential(ev *ingest.Event) uint64 {
	switch {
	case ev.TokenFP != "":
		return hash64(ev.TokenFP)
	case ev.ClientKey != "":
		return hash64(ev.ClientKey)
	}
	return 0
}

func (d *authSpray) settle(k *asKey) {
	if k.sums[0] == 0 && k.smp != nil {
		d.smp.put(k.smp)
		k.smp = nil
	}
}

func (d *authSpray) bounds(slot int32) (int64, int64, bool) {
	r := &d.tab.ents[slot].s.r
	return r.lo, r.top, r.used
}

func (d *authSpray) cool(slot int32, keep int64) bool {
	k := &d.tab.ents[slot].s
	d.cnt.trim(d.cnt.keyData(slot), &k.r, k.sums[:], keep)
	d.settle(k)
	return d.mayFire(slot)
}

func (d *authSpray) mayFire(slot int32) bool {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	return p.enabled && k.sums[0] >= p.minCreds
}

func (d *authSpray) expiry(wm int64) int64 { return d.lay.oldestOpenMs(wm) }

func (d *authSpray) judge(slot int32, end int64) {
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	data := d.cnt.keyData(slot)
	from := end - d.lay.n + 1
	failed := d.cnt.sum(data, &k.r, from, end, 0)
	tot := d.cnt.sum(data, &k.r, from, end, 1)
	if failed < p.minCreds || float64(failed) < p.minRatio*float64(tot) || k.smp == nil {
		return
	}
	w := d.smp.window(k.smp, from, end)
	// The distinct count is an estimate past exactLimit, which may overshoot the failures.
	if creds := min(d.smp.distinct(k.smp, w), int(failed)); creds >= int(p.minCreds) {
		d.fire(slot, end, failed, tot, creds, w)
	}
}

func (d *authSpray) fire(slot int32, end int64, failed, tot uint32, creds int, w uint64) {
	name := d.tab.keyOf(slot)
	k := &d.tab.ents[slot].s
	p := &d.rules.params[k.prm]
	first, last, _ := d.cnt.span(d.cnt.keyData(slot), &k.r, end-d.lay.n+1, end)
	d.inc.fire(firing{
		key:      name,
		at:       (end + 1) * d.lay.width,
		first:    first,
		last:     last,
		strength: creds,
		severity: p.severity,
		labels:   map[string]string{"key_type": "client_ip"},
	}, func() (Evidence, string) {
		s := k.smp
		ev := d.windowEvidence(end)
		ev.Statuses = slices.Clone(d.statuses)
		for j, st := range d.statuses {
			if c := d.smp.countIn(s, w, j); c > 0 {
				ev.StatusCounts = append(ev.StatusCounts, StatusCount{Status: st, Count: c})
			}
		}
		ev.FailureCount, ev.TotalCount = int(failed), int(tot)
		ev.Ratio = math.Round(float64(failed)/float64(tot)*1e4) / 1e4
		ev.MinRatio = p.minRatio
		ev.DistinctCredentials, ev.MinCredentials = creds, int(p.minCreds)
		ev.ClientKeys = d.smp.collect(s, w, asClientKey, 10)
		ev.TokenFPs = d.smp.collect(s, w, asTokenFP, 10)
		ev.SamplePaths = d.smp.collect(s, w, asPath, 5)
		ev.SampleRequestIDs = d.smp.collect(s, w, asRequestID, 5)
		ev.UserAgents = d.smp.collect(s, w, asUserAgent, 5)
		ev.ClientIPs = d.smp.collect(s, w, asAddress, 10)
		summary := fmt.Sprintf("Client IP %s failed authentication with %d distinct credentials (%d of its %d requests answered %s) within %s.",
			name, creds, failed, tot, statusList(d.statuses), d.window)
		return ev, summary
	})
}

func (d *authSpray) release(slot int32, _ bool) {
	k := &d.tab.ents[slot].s
	if k.smp != nil {
		d.smp.put(k.smp)
	}
	clear(d.cnt.keyData(slot))
}
