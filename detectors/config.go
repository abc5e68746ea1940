package detectors

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gatewatch/gatewatch/internal/config"
)

// Config is the detectors section of gatewatch.yaml. Decode it over DefaultConfig with
// KnownFields(true); none of its structs implements yaml.Unmarshaler, so unknown keys
// are reported with their line. Validate checks what decoding cannot.
type Config struct {
	// AllowedLateness is how far behind the largest event time already read from its
	// own partition an event may be and still count in windows; each partition's
	// watermark trails its largest event time by it, and the engine's watermark is the
	// smallest of its partitions'.
	AllowedLateness time.Duration `yaml:"allowed_lateness"`
	// IdleTimeout is how long (wall clock: the one place the engine reads it) a
	// partition may deliver nothing before it stops holding back the watermark. A
	// partition whose shipper is a minute behind holds it back while its records keep
	// coming; one that went silent does not stall every window.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxAhead is how far ahead of its partition's stream a record may be and still
	// move the watermark. A record further ahead (a gateway with a wrong clock) is
	// counted, logged and judged on its own: it updates baselines and enters no
	// window, so it neither makes later records late nor hides an attack.
	MaxAhead time.Duration `yaml:"max_ahead"`
	// MaxSkew is how far a partition's stream may trail the leading partition's and
	// still hold back the watermark. Windows keep room for it (each key's buckets span
	// the window, allowed_lateness and max_skew), so a shipper a few minutes behind the
	// others still has its records counted; a partition further behind is passed over
	// like an idle one, and its records are late until it catches up.
	MaxSkew            time.Duration            `yaml:"max_skew"`
	NewCountry         NewCountryConfig         `yaml:"new_country"`
	TokenReuse         TokenReuseConfig         `yaml:"token_reuse"`
	ForbiddenBurst     ForbiddenBurstConfig     `yaml:"forbidden_burst"`
	QuietEndpointSpike QuietEndpointSpikeConfig `yaml:"quiet_endpoint_spike"`
	ObjectEnumeration  ObjectEnumerationConfig  `yaml:"object_enumeration"`
	AuthFailureSpray   AuthFailureSprayConfig   `yaml:"auth_failure_spray"`
	PrivilegeAnomaly   PrivilegeAnomalyConfig   `yaml:"privilege_anomaly"`
	ClientVolumeSpike  ClientVolumeSpikeConfig  `yaml:"client_volume_spike"`
	RouteScan          RouteScanConfig          `yaml:"route_scan"`
	// BaselineRefresh is how far the watermark (event time, never the wall clock)
	// advances between reloads of the baseline store while Run runs; 0 disables them.
	// Each reload adopts the baselines of keys and routes this instance does not track
	// (a key whose Kafka partition moved here in a rebalance is judged against what the
	// instance that had it learned) and merges the stored countries into the keys it
	// does track. See Engine.RefreshBaselines.
	BaselineRefresh time.Duration `yaml:"baseline_refresh"`
}

// Common holds the settings every detector takes.
type Common struct {
	Enabled  bool     `yaml:"enabled"`
	Severity Severity `yaml:"severity"`
	// Runbook replaces the link alerting.runbook_base_url + "/" + detector + ".md".
	Runbook string `yaml:"runbook"`
	// Cooldown is how long a key must stop firing before its next firing opens a new
	// incident (a new alert id) rather than updating the current one.
	Cooldown time.Duration `yaml:"cooldown"`
	// MaxKeys caps the keys the detector tracks; past it the coldest key is evicted.
	MaxKeys int `yaml:"max_keys"`
}

// Override changes a detector's settings for one key, or for requests whose route
// starts with RoutePrefix. Exactly one of Key and RoutePrefix is set. Pointer fields
// left nil keep the detector's setting. Overrides are tried in order; the first that
// matches applies.
type Override struct {
	Key         string    `yaml:"key,omitempty"`
	RoutePrefix string    `yaml:"route_prefix,omitempty"`
	Enabled     *bool     `yaml:"enabled,omitempty"`
	Severity    *Severity `yaml:"severity,omitempty"`
}

// NewCountryConfig configures new_country: an established client key (first seen at
// least LearningPeriod before the event, with at least MinEvents events) seen from a
// country not among those it was seen from within History.
type NewCountryConfig struct {
	Common         `yaml:",inline"`
	History        time.Duration        `yaml:"history"`
	LearningPeriod time.Duration        `yaml:"learning_period"`
	MinEvents      int                  `yaml:"min_events"`
	Allowlist      []CountryAllow       `yaml:"allowlist"`
	Overrides      []NewCountryOverride `yaml:"overrides"`
}

// CountryAllow lists countries a client key may appear from without an alert.
type CountryAllow struct {
	Key       string   `yaml:"key"`
	Countries []string `yaml:"countries"`
}

// NewCountryOverride is an Override with new_country's thresholds. A route_prefix
// override may only set enabled: false, which ignores requests on those routes.
type NewCountryOverride struct {
	Override       `yaml:",inline"`
	LearningPeriod *time.Duration `yaml:"learning_period,omitempty"`
	MinEvents      *int           `yaml:"min_events,omitempty"`
}

// TokenReuseConfig configures token_reuse: one token fingerprint seen from more than
// MaxDevices distinct devices within Window; APIKeyMaxDevices for a token that is an
// API key (see tokenIsAPIKey). A bearer token is issued to one device, but a partner's
// API key is used by each of its programs (a backend and a batch job, two SDK
// versions during an upgrade) all day: with one threshold for both, every such key
// pages every time its programs overlap; two devices an API key are let pass. An override's max_devices applies to its
// token, whatever its kind.
type TokenReuseConfig struct {
	Common           `yaml:",inline"`
	Window           time.Duration        `yaml:"window"`
	MaxDevices       int                  `yaml:"max_devices"`
	APIKeyMaxDevices int                  `yaml:"api_key_max_devices"`
	Allowlist        []DeviceAllow        `yaml:"allowlist"`
	Overrides        []TokenReuseOverride `yaml:"overrides"`
}

// DeviceAllow lists devices that do not count towards a token's distinct devices: a
// shared gateway or test rig. An empty Key applies to every token.
type DeviceAllow struct {
	Key     string   `yaml:"key"`
	Devices []string `yaml:"devices"`
}

// TokenReuseOverride is an Override with token_reuse's threshold. A route_prefix
// override may only set enabled: false.
type TokenReuseOverride struct {
	Override   `yaml:",inline"`
	MaxDevices *int `yaml:"max_devices,omitempty"`
}

// ForbiddenBurstConfig configures forbidden_burst: within Window, at least Threshold
// responses to one client (its client key, else its IP) with a status in Statuses,
// making up at least MinRatio of that client's requests.
type ForbiddenBurstConfig struct {
	Common    `yaml:",inline"`
	Window    time.Duration            `yaml:"window"`
	Threshold int                      `yaml:"threshold"`
	MinRatio  float64                  `yaml:"min_ratio"`
	Statuses  []int                    `yaml:"statuses"`
	Allowlist []ClientAllow            `yaml:"allowlist"`
	Overrides []ForbiddenBurstOverride `yaml:"overrides"`
}

// ClientAllow names a client whose requests a detector ignores: a client key or IP
// (Key), or an address range (CIDR). Exactly one is set.
type ClientAllow struct {
	Key  string `yaml:"key,omitempty"`
	CIDR string `yaml:"cidr,omitempty"`
}

// ForbiddenBurstOverride is an Override with forbidden_burst's thresholds. A
// route_prefix override may only set enabled: false.
type ForbiddenBurstOverride struct {
	Override  `yaml:",inline"`
	Threshold *int     `yaml:"threshold,omitempty"`
	MinRatio  *float64 `yaml:"min_ratio,omitempty"`
}

// QuietEndpointSpikeConfig configures quiet_endpoint_spike: once the detector has seen
// LearningPeriod of traffic, a route (method and route template) whose baseline rate is
// at most QuietRate requests a minute gets at least MinCount requests within Window, a
// count that high has a Poisson probability below PValue under the baseline, and it is
// at least MinPeakRatio times the route's recent peak (its largest window count,
// decaying with PeakMemory). Requests answered 404 or 405 do not count.
type QuietEndpointSpikeConfig struct {
	Common         `yaml:",inline"`
	Window         time.Duration                `yaml:"window"`
	LearningPeriod time.Duration                `yaml:"learning_period"`
	QuietRate      float64                      `yaml:"quiet_rate"`
	MinCount       int                          `yaml:"min_count"`
	PValue         float64                      `yaml:"p_value"`
	MinPeakRatio   float64                      `yaml:"min_peak_ratio"`
	PeakMemory     time.Duration                `yaml:"peak_memory"`
	Allowlist      []ClientAllow                `yaml:"allowlist"` // clients that never count: monitors, batch jobs
	Overrides      []QuietEndpointSpikeOverride `yaml:"overrides"`
}

// QuietEndpointSpikeOverride is an Override with quiet_endpoint_spike's thresholds. Its
// Key is "METHOD /route/template"; RoutePrefix matches the route template.
type QuietEndpointSpikeOverride struct {
	Override     `yaml:",inline"`
	QuietRate    *float64 `yaml:"quiet_rate,omitempty"`
	MinCount     *int     `yaml:"min_count,omitempty"`
	PValue       *float64 `yaml:"p_value,omitempty"`
	MinPeakRatio *float64 `yaml:"min_peak_ratio,omitempty"`
}

// DefaultConfig returns the documented defaults, which the config file overrides.
func DefaultConfig() Config {
	return Config{
		AllowedLateness: 30 * time.Second,
		IdleTimeout:     time.Minute,
		MaxAhead:        10 * time.Minute,
		MaxSkew:         3 * time.Minute,
		NewCountry: NewCountryConfig{
			// An hour, so that a second new country within the hour joins the
			// incident the first one opened and escalates it.
			Common:         Common{Enabled: true, Severity: SeverityHigh, Cooldown: time.Hour, MaxKeys: 1_000_000},
			History:        720 * time.Hour,
			LearningPeriod: 168 * time.Hour,
			MinEvents:      20,
		},
		TokenReuse: TokenReuseConfig{
			Common:           Common{Enabled: true, Severity: SeverityHigh, Cooldown: 30 * time.Minute, MaxKeys: 1_000_000},
			Window:           10 * time.Minute,
			MaxDevices:       1,
			APIKeyMaxDevices: 2,
		},
		ForbiddenBurst: ForbiddenBurstConfig{
			Common:    Common{Enabled: true, Severity: SeverityMedium, Cooldown: 30 * time.Minute, MaxKeys: 1_000_000},
			Window:    time.Minute,
			Threshold: 20,
			MinRatio:  0.5,
			Statuses:  []int{403},
		},
		QuietEndpointSpike: QuietEndpointSpikeConfig{
			Common:         Common{Enabled: true, Severity: SeverityMedium, Cooldown: 30 * time.Minute, MaxKeys: 200_000},
			Window:         5 * time.Minute,
			LearningPeriod: 24 * time.Hour,
			QuietRate:      1,
			MinCount:       20,
			PValue:         1e-6,
			MinPeakRatio:   3,
			PeakMemory:     7 * 24 * time.Hour,
		},
		ObjectEnumeration: ObjectEnumerationConfig{
			Common:         Common{Enabled: true, Severity: SeverityHigh, Cooldown: 30 * time.Minute, MaxKeys: 1_000_000},
			Window:         5 * time.Minute,
			LearningPeriod: 24 * time.Hour,
			MinDistinct:    50,
			MinPeakRatio:   4,
			PeakMemory:     7 * 24 * time.Hour,
		},
		AuthFailureSpray: AuthFailureSprayConfig{
			Common:         Common{Enabled: true, Severity: SeverityHigh, Cooldown: 30 * time.Minute, MaxKeys: 1_000_000},
			Window:         10 * time.Minute,
			Statuses:       []int{401},
			MinCredentials: 10,
			MinRatio:       0.5,
		},
		PrivilegeAnomaly: PrivilegeAnomalyConfig{
			Common:         Common{Enabled: true, Severity: SeverityHigh, Cooldown: time.Hour, MaxKeys: 1_000_000},
			Window:         10 * time.Minute,
			LearningPeriod: 24 * time.Hour,
			History:        720 * time.Hour,
			MinCount:       3,
			Privileged:     defaultPrivileged(),
		},
		ClientVolumeSpike: ClientVolumeSpikeConfig{
			Common:         Common{Enabled: true, Severity: SeverityMedium, Cooldown: 30 * time.Minute, MaxKeys: 1_000_000},
			Window:         10 * time.Minute,
			LearningPeriod: 24 * time.Hour,
			MinCount:       200,
			PValue:         1e-6,
			MinPeakRatio:   4,
			PeakMemory:     7 * 24 * time.Hour,
		},
		RouteScan: RouteScanConfig{
			Common:    Common{Enabled: true, Severity: SeverityMedium, Cooldown: 30 * time.Minute, MaxKeys: 1_000_000},
			Window:    5 * time.Minute,
			Statuses:  []int{404, 405},
			Actions:   []string{"BLOCK", "DENY", "DROP"},
			MinRoutes: 20,
			MinRatio:  0.5,
		},
		BaselineRefresh: 5 * time.Minute,
	}
}

// A ConfigError is one invalid setting: the config.Error every part reports. Path
// (also returned by Key) is its dotted path below the detectors section
// ("forbidden_burst.min_ratio"), which the config loader turns into a file position.
type ConfigError = config.Error

// cfgErr reports one invalid setting at its key path below the detectors section.
var cfgErr = config.Errorf

// Limits that keep state bounded and windows representable.
const (
	maxMaxKeys    = 100_000_000
	maxMaxDevices = 16 // exact device sets hold 32; a threshold well inside keeps decisions exact
	maxStatuses   = 8
	minWindow     = time.Second
	minRefresh    = time.Second // below it, a reload of the whole store per batch
	maxLateness   = time.Hour
)

var countryRE = regexp.MustCompile(`^[A-Z]{2}$`)

// Validate reports every invalid setting at once, each as a *ConfigError.
func (c *Config) Validate() error {
	var errs []error
	add := func(err error) { errs = append(errs, err) }
	if c.AllowedLateness < 0 || c.AllowedLateness > maxLateness {
		add(cfgErr("allowed_lateness", "must be between 0s and %s, got %s", maxLateness, c.AllowedLateness))
	}
	if c.IdleTimeout <= 0 {
		add(cfgErr("idle_timeout", "must be positive, got %s", c.IdleTimeout))
	}
	if c.MaxSkew < 0 || c.MaxSkew > maxLateness {
		add(cfgErr("max_skew", "must be between 0s and %s, got %s", maxLateness, c.MaxSkew))
	}
	if c.MaxAhead < time.Second {
		add(cfgErr("max_ahead", "must be at least 1s, got %s", c.MaxAhead))
	}
	if c.BaselineRefresh < 0 || (c.BaselineRefresh > 0 && c.BaselineRefresh < minRefresh) {
		add(cfgErr("baseline_refresh", "must be 0s (never reload) or at least %s, got %s", minRefresh, c.BaselineRefresh))
	}
	windows := []struct {
		name    string
		window  time.Duration
		cfg     Common
		history bool // keeps a window before the open ones
	}{
		{TokenReuse, c.TokenReuse.Window, c.TokenReuse.Common, false},
		{ForbiddenBurst, c.ForbiddenBurst.Window, c.ForbiddenBurst.Common, false},
		{QuietEndpointSpike, c.QuietEndpointSpike.Window, c.QuietEndpointSpike.Common, true},
		{ObjectEnumeration, c.ObjectEnumeration.Window, c.ObjectEnumeration.Common, true},
		{AuthFailureSpray, c.AuthFailureSpray.Window, c.AuthFailureSpray.Common, false},
		{PrivilegeAnomaly, c.PrivilegeAnomaly.Window, c.PrivilegeAnomaly.Common, false},
		{ClientVolumeSpike, c.ClientVolumeSpike.Window, c.ClientVolumeSpike.Common, true},
		{RouteScan, c.RouteScan.Window, c.RouteScan.Common, false},
	}
	for _, w := range windows {
		// A key's ring holds a window, allowed_lateness and two buckets (and one more
		// window with history) in at most maxRing buckets of the window's length.
		most := time.Duration(maxRing - 3)
		if w.history {
			most--
		}
		if w.window < minWindow {
			add(cfgErr(w.name+".window", "must be at least %s, got %s", minWindow, w.window))
		} else if spread := c.AllowedLateness + c.MaxSkew; w.cfg.Enabled && c.AllowedLateness >= 0 && c.MaxSkew >= 0 && c.MaxSkew <= maxLateness && spread > most*w.window {
			add(cfgErr("allowed_lateness", "allowed_lateness plus max_skew (%s) is more than %d times %s.window (%s): windows could not hold it", spread, most, w.name, w.window))
		}
	}

	nc := &c.NewCountry
	validateCommon(NewCountry, &nc.Common, add)
	if nc.History <= 0 {
		add(cfgErr("new_country.history", "must be positive, got %s", nc.History))
	}
	checkLearning(add, "new_country.learning_period", nc.LearningPeriod)
	if nc.MinEvents < 0 {
		add(cfgErr("new_country.min_events", "must not be negative, got %d", nc.MinEvents))
	}
	for i, a := range nc.Allowlist {
		p := fmt.Sprintf("new_country.allowlist[%d]", i)
		if a.Key == "" {
			add(cfgErr(p+".key", "must be set"))
		}
		if len(a.Countries) == 0 {
			add(cfgErr(p+".countries", "must list at least one country"))
		}
		for j, cc := range a.Countries {
			if !countryRE.MatchString(cc) {
				add(cfgErr(fmt.Sprintf("%s.countries[%d]", p, j), "must be an ISO 3166-1 alpha-2 code in upper case, got %q", cc))
			}
		}
	}
	for i, o := range nc.Overrides {
		p := fmt.Sprintf("new_country.overrides[%d]", i)
		validateOverride(p, &o.Override, o.LearningPeriod != nil || o.MinEvents != nil, false, add)
		if o.LearningPeriod != nil {
			checkLearning(add, p+".learning_period", *o.LearningPeriod)
		}
		if o.MinEvents != nil && *o.MinEvents < 0 {
			add(cfgErr(p+".min_events", "must not be negative, got %d", *o.MinEvents))
		}
	}

	tr := &c.TokenReuse
	validateCommon(TokenReuse, &tr.Common, add)
	checkMaxDevices := func(p string, v int) {
		if v < 1 || v > maxMaxDevices {
			add(cfgErr(p, "must be between 1 and %d, got %d", maxMaxDevices, v))
		}
	}
	checkMaxDevices("token_reuse.max_devices", tr.MaxDevices)
	checkMaxDevices("token_reuse.api_key_max_devices", tr.APIKeyMaxDevices)
	for i, a := range tr.Allowlist {
		p := fmt.Sprintf("token_reuse.allowlist[%d]", i)
		if len(a.Devices) == 0 {
			add(cfgErr(p+".devices", "must list at least one device"))
		}
		for j, d := range a.Devices {
			if d == "" {
				add(cfgErr(fmt.Sprintf("%s.devices[%d]", p, j), "must not be empty"))
			}
		}
	}
	for i, o := range tr.Overrides {
		p := fmt.Sprintf("token_reuse.overrides[%d]", i)
		validateOverride(p, &o.Override, o.MaxDevices != nil, false, add)
		if o.MaxDevices != nil {
			checkMaxDevices(p+".max_devices", *o.MaxDevices)
		}
	}

	fb := &c.ForbiddenBurst
	validateCommon(ForbiddenBurst, &fb.Common, add)
	checkCount(add, "forbidden_burst.threshold", fb.Threshold)
	checkShare(add, "forbidden_burst.min_ratio", fb.MinRatio)
	checkStatuses(add, "forbidden_burst.statuses", fb.Statuses)
	validateClientAllow("forbidden_burst", fb.Allowlist, add)
	for i, o := range fb.Overrides {
		p := fmt.Sprintf("forbidden_burst.overrides[%d]", i)
		validateOverride(p, &o.Override, o.Threshold != nil || o.MinRatio != nil, false, add)
		if o.Threshold != nil {
			checkCount(add, p+".threshold", *o.Threshold)
		}
		if o.MinRatio != nil {
			checkShare(add, p+".min_ratio", *o.MinRatio)
		}
	}

	qs := &c.QuietEndpointSpike
	validateCommon(QuietEndpointSpike, &qs.Common, add)
	checkRate := func(p string, v float64) {
		if !(v >= 0) || math.IsInf(v, 0) {
			add(cfgErr(p, "must be a rate of zero or more requests a minute, got %v", v))
		}
	}
	checkLearning(add, "quiet_endpoint_spike.learning_period", qs.LearningPeriod)
	checkRate("quiet_endpoint_spike.quiet_rate", qs.QuietRate)
	checkCount(add, "quiet_endpoint_spike.min_count", qs.MinCount)
	checkP(add, "quiet_endpoint_spike.p_value", qs.PValue)
	checkPeakRatio(add, "quiet_endpoint_spike.min_peak_ratio", qs.MinPeakRatio)
	checkMemory(add, "quiet_endpoint_spike.peak_memory", qs.PeakMemory)
	validateClientAllow("quiet_endpoint_spike", qs.Allowlist, add)
	for i, o := range qs.Overrides {
		p := fmt.Sprintf("quiet_endpoint_spike.overrides[%d]", i)
		validateOverride(p, &o.Override, o.QuietRate != nil || o.MinCount != nil || o.PValue != nil || o.MinPeakRatio != nil, true, add)
		if o.QuietRate != nil {
			checkRate(p+".quiet_rate", *o.QuietRate)
		}
		if o.MinCount != nil {
			checkCount(add, p+".min_count", *o.MinCount)
		}
		if o.PValue != nil {
			checkP(add, p+".p_value", *o.PValue)
		}
		if o.MinPeakRatio != nil {
			checkPeakRatio(add, p+".min_peak_ratio", *o.MinPeakRatio)
		}
	}
	c.ObjectEnumeration.validate(add)
	c.AuthFailureSpray.validate(add)
	c.PrivilegeAnomaly.validate(add)
	c.ClientVolumeSpike.validate(add)
	c.RouteScan.validate(add)
	return errors.Join(errs...)
}

// checkCount checks a count threshold.
func checkCount(add func(error), p string, v int) {
	if v < 1 || v > 1_000_000 {
		add(cfgErr(p, "must be between 1 and 1000000, got %d", v))
	}
}

// checkShare checks a share of a client's requests.
func checkShare(add func(error), p string, v float64) {
	if !(v > 0 && v <= 1) {
		add(cfgErr(p, "must be in (0,1], got %v", v))
	}
}

// checkPeakRatio checks how many times its recent peak a count must be.
func checkPeakRatio(add func(error), p string, v float64) {
	if !(v >= 1 && v <= 1000) {
		add(cfgErr(p, "must be between 1 and 1000, got %v", v))
	}
}

func checkP(add func(error), p string, v float64) {
	if !(v > 0 && v < 1) {
		add(cfgErr(p, "must be in (0,1), got %v", v))
	}
}

func checkLearning(add func(error), p string, v time.Duration) {
	if v < 0 {
		add(cfgErr(p, "must not be negative, got %s", v))
	}
}

// checkMemory checks a peak's time constant: at least an hour, since a shorter one
// would forget an hourly job between two runs.
func checkMemory(add func(error), p string, v time.Duration) {
	if v < time.Hour {
		add(cfgErr(p, "must be at least 1h, got %s", v))
	}
}

// checkStatuses checks a list of HTTP statuses.
func checkStatuses(add func(error), p string, statuses []int) {
	switch {
	case len(statuses) == 0:
		add(cfgErr(p, "must list at least one status"))
	case len(statuses) > maxStatuses:
		add(cfgErr(p, "must list at most %d statuses, got %d", maxStatuses, len(statuses)))
	}
	for i, s := range statuses {
		if s < 100 || s > 599 {
			add(cfgErr(fmt.Sprintf("%s[%d]", p, i), "must be an HTTP status (100-599), got %d", s))
		} else if slices.Index(statuses, s) != i {
			add(cfgErr(fmt.Sprintf("%s[%d]", p, i), "status %d is listed twice", s))
		}
	}
}

// validateClientKeyed checks what every client-keyed detector's config has: common
// settings, allowlist and overrides, thresholds naming whether an override sets any.
func validateClientKeyed[O any, PO interface {
	*O
	overriding
}](add func(error), name string, c *Common, allow []ClientAllow, overrides []O, thresholds func(p string, o *O) bool) {
	validateCommon(name, c, add)
	validateClientAllow(name, allow, add)
	for i := range overrides {
		p := fmt.Sprintf("%s.overrides[%d]", name, i)
		validateOverride(p, PO(&overrides[i]).base(), thresholds(p, &overrides[i]), false, add)
	}
}

func validateCommon(name string, c *Common, add func(error)) {
	if !c.Severity.Valid() {
		add(cfgErr(name+".severity", "must be low, medium, high or critical, got %q", c.Severity))
	}
	if c.Cooldown <= 0 {
		add(cfgErr(name+".cooldown", "must be positive, got %s", c.Cooldown))
	}
	if c.MaxKeys < 1 || c.MaxKeys > maxMaxKeys {
		add(cfgErr(name+".max_keys", "must be between 1 and %d, got %d", maxMaxKeys, c.MaxKeys))
	}
	if c.Runbook != "" {
		u, err := url.Parse(c.Runbook)
		if err != nil || !u.IsAbs() || u.Host == "" {
			add(cfgErr(name+".runbook", "must be an absolute URL, got %q", c.Runbook))
		}
	}
}

// validateOverride checks the fields every override has. thresholds says whether o
// sets any detector-specific value; routeThresholds whether the detector is keyed by
// route, so that a route prefix can carry thresholds.
func validateOverride(p string, o *Override, thresholds, routeThresholds bool, add func(error)) {
	switch {
	case o.Key == "" && o.RoutePrefix == "":
		add(cfgErr(p, "must set key or route_prefix"))
	case o.Key != "" && o.RoutePrefix != "":
		add(cfgErr(p, "must set key or route_prefix, not both"))
	case o.RoutePrefix != "" && !strings.HasPrefix(o.RoutePrefix, "/"):
		add(cfgErr(p+".route_prefix", "must start with /, got %q", o.RoutePrefix))
	}
	if o.Enabled == nil && o.Severity == nil && !thresholds {
		add(cfgErr(p, "changes nothing: set enabled, severity or a threshold"))
	}
	if o.Severity != nil && !o.Severity.Valid() {
		add(cfgErr(p+".severity", "must be low, medium, high or critical, got %q", *o.Severity))
	}
	if o.RoutePrefix != "" && !routeThresholds && (thresholds || o.Severity != nil || o.Enabled == nil || *o.Enabled) {
		add(cfgErr(p+".route_prefix", "a route_prefix override of a detector keyed by client can only set enabled: false"))
	}
}

func validateClientAllow(name string, list []ClientAllow, add func(error)) {
	for i, a := range list {
		p := fmt.Sprintf("%s.allowlist[%d]", name, i)
		switch {
		case (a.Key == "") == (a.CIDR == ""):
			add(cfgErr(p, "must set exactly one of key and cidr"))
		case a.CIDR != "":
			if _, err := netip.ParsePrefix(a.CIDR); err != nil {
				add(cfgErr(p+".cidr", "must be an address range like 10.0.0.0/8, got %q", a.CIDR))
			}
		}
	}
}

// Set overrides one setting by its YAML path below the detectors section
// ("forbidden_burst.threshold", "quiet_endpoint_spike.p_value", "allowed_lateness"; a
// leading "detectors." is accepted) with value written in YAML ("30", "10m",
// "[403, 401]", "{threshold: 5}"). It is what `replay --set` uses. It goes through the
// same strict decoding as the config file, so every setting works and a wrong name or
// type is an error; call Validate afterwards for the semantic checks.
func (c *Config) Set(path, value string) error {
	rel := strings.TrimPrefix(path, "detectors.")
	fail := func(format string, args ...any) error {
		return fmt.Errorf("detectors: set %s: %s", path, fmt.Sprintf(format, args...))
	}
	if rel == "" {
		return fail("empty setting name")
	}
	var doc yaml.Node
	if err := doc.Encode(c); err != nil {
		return fail("encoding the current config: %v", err)
	}
	n := &doc
	var walked []string
	for _, part := range strings.Split(rel, ".") {
		if n.Kind != yaml.MappingNode {
			return fail("%q is a value, not a section", strings.Join(walked, "."))
		}
		walked = append(walked, part)
		var child *yaml.Node
		var names []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			names = append(names, n.Content[i].Value)
			if n.Content[i].Value == part {
				child = n.Content[i+1]
			}
		}
		if child == nil {
			return fail("unknown setting %q (known here: %s)", part, strings.Join(names, ", "))
		}
		n = child
	}
	var v yaml.Node
	if err := yaml.Unmarshal([]byte(value), &v); err != nil {
		return fail("value %q is not YAML: %v", value, stripLine(err))
	}
	if len(v.Content) == 0 { // an empty value is the empty string, e.g. to clear a runbook
		v.Content = []*yaml.Node{{Kind: yaml.ScalarNode, Tag: "!!str", Value: value}}
	}
	*n = *v.Content[0]
	if errs := config.WholeNumbers(&doc, c); len(errs) > 0 {
		return fail("bad value %q: %s", value, errs[0].Msg)
	}
	b, err := yaml.Marshal(&doc)
	if err != nil {
		return fail("%v", err)
	}
	next := *c
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&next); err != nil {
		return fail("bad value %q: %v", value, stripLine(err))
	}
	*c = next
	return nil
}

var lineRE = regexp.MustCompile(`line \d+: `)

// stripLine drops the line numbers from a yaml error: they count lines of the config
// Set re-encoded, not of anything the user wrote.
func stripLine(err error) string {
	return lineRE.ReplaceAllString(strings.TrimPrefix(err.Error(), "yaml: "), "")
}

// inNets reports whether the address ip (as logged) lies in one of nets; an empty list
// costs nothing, so the hot path pays only when an allowlist names networks.
func inNets(nets []netip.Prefix, ip string) bool {
	if len(nets) == 0 {
		return false
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	addr = addr.Unmap()
	for _, n := range nets {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

// apply sets enabled and severity to what the override says, where it says anything.
func (o *Override) apply(enabled *bool, severity *Severity) {
	setIf(enabled, o.Enabled)
	setIf(severity, o.Severity)
}

// setIf sets *dst to *v when an override sets v.
func setIf[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}
