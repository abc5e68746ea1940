package detectors

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A Reload is a config checked against one engine and built, ready to put in force:
// PrepareReload does everything that can fail, Apply nothing that can, so that several
// engines (a replica's tasks) take a new config all or none. One reload at a time: the
// caller orders them.
type Reload struct {
	e    *Engine
	cfg  Config
	next *Engine // built from cfg with the live engine's detectors, never run
}

// Reconfigure puts cfg in force without losing state: PrepareReload, then Apply.
func (e *Engine) Reconfigure(cfg Config) error {
	r, err := e.PrepareReload(cfg)
	if err != nil {
		return err
	}
	r.Apply()
	return nil
}

// PrepareReload checks cfg against the engine's config in force. A reload changes
// every setting that does not shape the state the detectors keep: enabled, severity,
// runbook, cooldown, thresholds, learning periods, overrides, allowlists, privileged
// rules, route_scan's actions, baseline_refresh. Settings that size or lay out kept
// state (windows, max_keys, allowed_lateness, max_skew, max_ahead, idle_timeout, the
// statuses whose counts the samplers keep, new_country's and privilege_anomaly's
// history, and the learning_period and peak_memory that set the time constants of
// quiet_endpoint_spike's and client_volume_spike's baselines) are refused, each
// named, as is enabling a detector the engine was started without: it has no state to
// keep. A detector disabled by a reload keeps observing (its baselines stay current,
// so enabling it again judges against what it would have learned) and raises nothing.
func (e *Engine) PrepareReload(cfg Config) (*Reload, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("detectors: invalid config: %w", err)
	}
	var errs []error
	for _, s := range shapeSettings(&e.cfg, &cfg) {
		if !s.same {
			errs = append(errs, cfgErr(s.path, "takes effect only after a restart"))
		}
	}
	// The throwaway engine builds every detector the live one runs, muted or not, so
	// that their params line up one to one.
	build := cfg
	next := detectorCommons(&build)
	for i := range next {
		switch {
		case e.built(next[i].name):
			next[i].c.Enabled = true
		case next[i].c.Enabled:
			errs = append(errs, cfgErr(next[i].name+".enabled", "the detector was off at start: enabling it takes effect only after a restart"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	n, err := NewEngine(build, Options{Registerer: prometheus.NewRegistry(), RunbookBaseURL: e.runbookBase})
	if err != nil {
		return nil, err
	}
	if len(n.dets) != len(e.dets) {
		return nil, fmt.Errorf("detectors: reload built %d detectors, the engine runs %d", len(n.dets), len(e.dets))
	}
	return &Reload{e: e, cfg: cfg, next: n}, nil
}

// Apply puts the prepared config in force. It may be called while Run runs, from any
// goroutine: it waits until Run is between batches.
func (r *Reload) Apply() {
	e := r.e
	e.mu.Lock()
	defer e.mu.Unlock()
	enabled := map[string]bool{}
	for _, d := range detectorCommons(&r.cfg) {
		enabled[d.name] = d.c.Enabled
	}
	for j, d := range e.dets {
		d.(reconfigurable).reconfigure(r.next.dets[j])
		inc, next := e.incs[j], r.next.incs[j]
		inc.cooldown, inc.runbook = next.cooldown, next.runbook
		inc.muted = !enabled[d.name()]
	}
	e.refresh = r.cfg.BaselineRefresh.Milliseconds()
	e.cfg = r.cfg
	e.log.Info("detector settings reloaded")
}

// built reports whether the engine runs detector name.
func (e *Engine) built(name string) bool {
	return slices.ContainsFunc(e.dets, func(d detector) bool { return d.name() == name })
}

// A setting whose change only a restart can apply, and whether two configs agree on it.
type shapeSetting struct {
	path string
	same bool
}

// shapeSettings lists the settings that shape the state the engine keeps.
func shapeSettings(a, b *Config) []shapeSetting {
	s := []shapeSetting{
		{"allowed_lateness", a.AllowedLateness == b.AllowedLateness},
		{"idle_timeout", a.IdleTimeout == b.IdleTimeout},
		{"max_ahead", a.MaxAhead == b.MaxAhead},
		{"max_skew", a.MaxSkew == b.MaxSkew},
		{NewCountry + ".history", a.NewCountry.History == b.NewCountry.History},
		{PrivilegeAnomaly + ".history", a.PrivilegeAnomaly.History == b.PrivilegeAnomaly.History},
		{ForbiddenBurst + ".statuses", slices.Equal(a.ForbiddenBurst.Statuses, b.ForbiddenBurst.Statuses)},
		{AuthFailureSpray + ".statuses", slices.Equal(a.AuthFailureSpray.Statuses, b.AuthFailureSpray.Statuses)},
		{RouteScan + ".statuses", slices.Equal(a.RouteScan.Statuses, b.RouteScan.Statuses)},
		{QuietEndpointSpike + ".learning_period", a.QuietEndpointSpike.LearningPeriod == b.QuietEndpointSpike.LearningPeriod},
		{QuietEndpointSpike + ".peak_memory", a.QuietEndpointSpike.PeakMemory == b.QuietEndpointSpike.PeakMemory},
		{ClientVolumeSpike + ".learning_period", a.ClientVolumeSpike.LearningPeriod == b.ClientVolumeSpike.LearningPeriod},
		{ClientVolumeSpike + ".peak_memory", a.ClientVolumeSpike.PeakMemory == b.ClientVolumeSpike.PeakMemory},
	}
	ca, cb := detectorCommons(a), detectorCommons(b)
	for i := range ca {
		s = append(s, shapeSetting{ca[i].name + ".max_keys", ca[i].c.MaxKeys == cb[i].c.MaxKeys})
		if ca[i].window != nil {
			s = append(s, shapeSetting{ca[i].name + ".window", *ca[i].window == *cb[i].window})
		}
	}
	return s
}

// detectorCommon is one detector's common settings and window (nil: it has none).
type detectorCommon struct {
	name   string
	c      *Common
	window *time.Duration
}

// detectorCommons lists c's detectors in the engine's order.
func detectorCommons(c *Config) []detectorCommon {
	return []detectorCommon{
		{NewCountry, &c.NewCountry.Common, nil},
		{TokenReuse, &c.TokenReuse.Common, &c.TokenReuse.Window},
		{ForbiddenBurst, &c.ForbiddenBurst.Common, &c.ForbiddenBurst.Window},
		{QuietEndpointSpike, &c.QuietEndpointSpike.Common, &c.QuietEndpointSpike.Window},
		{ObjectEnumeration, &c.ObjectEnumeration.Common, &c.ObjectEnumeration.Window},
		{AuthFailureSpray, &c.AuthFailureSpray.Common, &c.AuthFailureSpray.Window},
		{PrivilegeAnomaly, &c.PrivilegeAnomaly.Common, &c.PrivilegeAnomaly.Window},
		{ClientVolumeSpike, &c.ClientVolumeSpike.Common, &c.ClientVolumeSpike.Window},
		{RouteScan, &c.RouteScan.Common, &c.RouteScan.Window},
	}
}

// A reconfigurable detector takes the settings of next, the same detector built from a
// new config with the same layout, and re-resolves each live key's params under them.
type reconfigurable interface {
	reconfigure(next detector)
}

// resolveKeys sets the params index of every live key of tab to what of returns for it.
func resolveKeys[S any](tab *keyTable[S], prm func(*S) *uint16, of func(key string) uint16) {
	tab.each(func(slot int32) {
		*prm(&tab.ents[slot].s) = of(tab.keyOf(slot))
	})
}

// resolve is of for a live key: a key that is an address in an allowlisted range is
// allowlisted too, since its requests would now be skipped.
func (r *clientRules[P]) resolve(key string) uint16 {
	if i := r.of(key); i != 0 {
		return i
	}
	if inNets(r.allowNet, key) {
		return 1
	}
	return 0
}

func (d *forbiddenBurst) reconfigure(next detector) {
	reclient(&d.windowed, &d.rules, next.(*forbiddenBurst).rules, func(k *fbKey) *uint16 { return &k.prm })
}

func (d *authSpray) reconfigure(next detector) {
	reclient(&d.windowed, &d.rules, next.(*authSpray).rules, func(k *asKey) *uint16 { return &k.prm })
}

func (d *routeScan) reconfigure(next detector) {
	n := next.(*routeScan)
	d.actions = n.actions
	reclient(&d.windowed, &d.rules, n.rules, func(k *rsKey) *uint16 { return &k.prm })
}

func (d *privilegeAnomaly) reconfigure(next detector) {
	n := next.(*privilegeAnomaly)
	d.match, d.learn = n.match, n.learn
	reclient(&d.windowed, &d.rules, n.rules, func(k *paKey) *uint16 { return &k.prm })
}

func (d *volumeSpike) reconfigure(next detector) {
	reclient(&d.windowed, &d.rules, next.(*volumeSpike).rules, func(k *cvKey) *uint16 { return &k.prm })
}

// reclient puts a client-keyed detector's new rules in force: every live key's params
// are resolved again under them, and the hot list rebuilt.
func reclient[S, P any](w *windowed[S], rules *clientRules[P], next clientRules[P], prm func(*S) *uint16) {
	*rules = next
	resolveKeys(w.tab, prm, rules.resolve)
	w.rehot()
}

// An object_enumeration key is a hash of its client and route: its client's params
// are found by the hash of the client each override and allowlist entry names.
func (d *objectEnum) reconfigure(next detector) {
	n := next.(*objectEnum)
	d.rules, d.ptau, d.learn = n.rules, n.ptau, n.learn
	byHash := make(map[uint64]uint16, len(d.rules.keyParams))
	for key, i := range d.rules.keyParams {
		byHash[keyHash(key)] = i
	}
	d.tab.each(func(slot int32) {
		k := &d.tab.ents[slot].s
		ch := binary.LittleEndian.Uint64([]byte(d.tab.keyOf(slot)[:8]))
		if k.byIP {
			ch ^= ipClientSalt
		}
		k.prm = byHash[ch]
		if k.prm == 0 && k.byIP && k.names != nil && inNets(d.rules.allowNet, k.names.client) {
			k.prm = 1
		}
	})
	d.rehot()
}

func (d *tokenReuse) reconfigure(next detector) {
	n := next.(*tokenReuse)
	d.params, d.keyParams, d.skip, d.allowAll, d.allowKey = n.params, n.keyParams, n.skip, n.allowAll, n.allowKey
	resolveKeys(d.tab, func(k *trKey) *uint16 { return &k.prm }, func(key string) uint16 { return d.keyParams[key] })
	d.rehot()
}

func (d *quietSpike) reconfigure(next detector) {
	n := next.(*quietSpike)
	d.cfg, d.params, d.allowKey, d.allowNet = n.cfg, n.params, n.allowKey, n.allowNet
	d.tab.each(func(slot int32) {
		k := &d.tab.ents[slot].s
		key := d.tab.keyOf(slot)
		k.prm = d.paramsIndex(key, strings.TrimPrefix(key[k.split:], " "))
	})
	d.rehot()
}

// new_country has no hot list: its pending candidates are decided under the params
// their keys have when they are due.
func (d *newCountry) reconfigure(next detector) {
	n := next.(*newCountry)
	d.cfg, d.params, d.keyParams, d.skip, d.allow = n.cfg, n.params, n.keyParams, n.skip, n.allow
	resolveKeys(d.tab, func(k *ncKey) *uint16 { return &k.prm }, func(key string) uint16 { return d.keyParams[key] })
}
