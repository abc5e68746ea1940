package detectors

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// decodeConfig decodes src over the defaults the way cmd/gatewatch does.
func decodeConfig(t *testing.T, src string) (Config, error) {
	t.Helper()
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader([]byte(src)))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, err
	}
	return cfg, nil
}

func TestDefaultConfigMatchesDesign(t *testing.T) {
	design := `
allowed_lateness: 30s
new_country:          {enabled: true, history: 720h, learning_period: 168h, min_events: 20}
token_reuse:          {enabled: true, window: 10m, max_devices: 1}
forbidden_burst:      {enabled: true, window: 1m, threshold: 20, min_ratio: 0.5, statuses: [403]}
quiet_endpoint_spike: {enabled: true, window: 5m, learning_period: 24h, quiet_rate: 1, min_count: 20, p_value: 1e-6}
object_enumeration:   {enabled: true, learning_period: 24h}   # further parameters: see the example config
auth_failure_spray:   {enabled: true}
privilege_anomaly:    {enabled: true, learning_period: 24h}
client_volume_spike:  {enabled: true, learning_period: 24h}
route_scan:           {enabled: true}
`
	got, err := decodeConfig(t, design)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	if a, b := mustYAML(t, got), mustYAML(t, want); a != b {
		t.Errorf("DESIGN.md's example decodes to\n%s\nwant the defaults\n%s", a, b)
	}
	if err := want.Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v", err)
	}
	empty := ""
	for _, e := range want.enabled() {
		empty += e.name + ": {}\n"
	}
	for _, src := range []string{"", empty} {
		got, err := decodeConfig(t, src)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := mustYAML(t, got), mustYAML(t, want); a != b {
			t.Errorf("%q decodes to\n%s\nwant the defaults", src, a)
		}
	}
}

func mustYAML(t *testing.T, c Config) string {
	t.Helper()
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestConfigDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ name, src, want string }{
		{"unknown key", "forbidden_burst:\n  treshold: 5\n", "line 2: field treshold not found"},
		{"bare number duration", "token_reuse:\n  window: 10\n", "line 2: cannot unmarshal !!int `10` into time.Duration"},
		{"bad severity", "new_country:\n  severity: urgent\n", `line 2: severity must be low, medium, high or critical, got "urgent"`},
		{"unknown override field", "forbidden_burst:\n  overrides:\n    - {key: a, treshold: 3}\n", "field treshold not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeConfig(t, tc.src)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decode(%q) = %v, want an error containing %q", tc.src, err, tc.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want []string // "key: message fragment"
	}{
		{"ratio above one", "forbidden_burst: {min_ratio: 1.5}", []string{"forbidden_burst.min_ratio: must be in (0,1], got 1.5"}},
		{"zero threshold and no statuses", "forbidden_burst: {threshold: 0, statuses: []}", []string{
			"forbidden_burst.threshold: must be between 1 and 1000000, got 0",
			"forbidden_burst.statuses: must list at least one status",
		}},
		{"bad status", "forbidden_burst: {statuses: [403, 42, 403]}", []string{
			"forbidden_burst.statuses[1]: must be an HTTP status",
			"forbidden_burst.statuses[2]: status 403 is listed twice",
		}},
		{"p value", "quiet_endpoint_spike: {p_value: 1}", []string{"quiet_endpoint_spike.p_value: must be in (0,1), got 1"}},
		{"negative rate", "quiet_endpoint_spike: {quiet_rate: -1}", []string{"quiet_endpoint_spike.quiet_rate: must be a rate"}},
		{"max devices", "token_reuse: {max_devices: 0}", []string{"token_reuse.max_devices: must be between 1 and 16, got 0"}},
		{"small window", "token_reuse: {window: 10ms}", []string{"token_reuse.window: must be at least 1s, got 10ms"}},
		{"lateness too large", "allowed_lateness: 2m\nforbidden_burst: {window: 1s}", []string{"allowed_lateness: allowed_lateness plus max_skew (5m0s) is more than 61 times forbidden_burst.window"}},
		{"skew too large", "max_skew: 2h", []string{"max_skew: must be between 0s and 1h0m0s, got 2h0m0s"}},
		{"negative lateness", "allowed_lateness: -1s", []string{"allowed_lateness: must be between 0s and 1h0m0s, got -1s"}},
		{"history", "new_country: {history: 0s, min_events: -1}", []string{
			"new_country.history: must be positive, got 0s",
			"new_country.min_events: must not be negative, got -1",
		}},
		{"common", "token_reuse: {cooldown: 0s, max_keys: 0, runbook: wiki/page}", []string{
			"token_reuse.cooldown: must be positive, got 0s",
			"token_reuse.max_keys: must be between 1 and 100000000, got 0",
			`token_reuse.runbook: must be an absolute URL, got "wiki/page"`,
		}},
		{"allowlist country", "new_country: {allowlist: [{key: p, countries: [de]}]}", []string{
			`new_country.allowlist[0].countries[0]: must be an ISO 3166-1 alpha-2 code in upper case, got "de"`,
		}},
		{"allowlist client", "forbidden_burst: {allowlist: [{key: a, cidr: 10.0.0.0/8}, {cidr: 10.0.0.0/33}]}", []string{
			"forbidden_burst.allowlist[0]: must set exactly one of key and cidr",
			`forbidden_burst.allowlist[1].cidr: must be an address range like 10.0.0.0/8, got "10.0.0.0/33"`,
		}},
		{"override without target", "forbidden_burst: {overrides: [{threshold: 5}]}", []string{"forbidden_burst.overrides[0]: must set key or route_prefix"}},
		{"override changes nothing", "token_reuse: {overrides: [{key: k}]}", []string{"token_reuse.overrides[0]: changes nothing"}},
		{"override bad value", "forbidden_burst: {overrides: [{key: k, min_ratio: 0}]}", []string{"forbidden_burst.overrides[0].min_ratio: must be in (0,1], got 0"}},
		{"route prefix thresholds on client detector", "forbidden_burst: {overrides: [{route_prefix: /admin, threshold: 5}]}", []string{
			"forbidden_burst.overrides[0].route_prefix: a route_prefix override of a detector keyed by client can only set enabled: false",
		}},
		{"route prefix without slash", "quiet_endpoint_spike: {overrides: [{route_prefix: admin, min_count: 5}]}", []string{
			`quiet_endpoint_spike.overrides[0].route_prefix: must start with /, got "admin"`,
		}},
		{"peak settings", "quiet_endpoint_spike: {min_peak_ratio: 0.5, peak_memory: 10m}", []string{
			"quiet_endpoint_spike.min_peak_ratio: must be between 1 and 1000, got 0.5",
			"quiet_endpoint_spike.peak_memory: must be at least 1h, got 10m0s",
		}},
		{"lateness too large for a window with history", "allowed_lateness: 61s\nmax_skew: 0s\nclient_volume_spike: {window: 1s}", []string{
			"allowed_lateness: allowed_lateness plus max_skew (1m1s) is more than 60 times client_volume_spike.window"}},
		{"object enumeration", "object_enumeration: {min_distinct: 0, min_peak_ratio: 0, peak_memory: 0s, learning_period: -1h}", []string{
			"object_enumeration.min_distinct: must be between 1 and 1000000, got 0",
			"object_enumeration.min_peak_ratio: must be between 1 and 1000, got 0",
			"object_enumeration.peak_memory: must be at least 1h, got 0s",
			"object_enumeration.learning_period: must not be negative, got -1h0m0s",
		}},
		{"auth failure spray", "auth_failure_spray: {min_credentials: 1, min_ratio: 2, statuses: [401, 401], overrides: [{key: 10.0.0.1, min_credentials: 0}]}", []string{
			"auth_failure_spray.min_credentials: must be between 2 and 1000000, got 1",
			"auth_failure_spray.min_ratio: must be in (0,1], got 2",
			"auth_failure_spray.statuses[1]: status 401 is listed twice",
			"auth_failure_spray.overrides[0].min_credentials: must be between 1 and 1000000, got 0",
		}},
		{"privilege anomaly", "privilege_anomaly: {history: 0s, min_count: 0, privileged: [{segment: a/b}, {route_prefix: admin}, {}, {segment: admin, methods: [\"\"]}]}", []string{
			"privilege_anomaly.history: must be positive, got 0s",
			"privilege_anomaly.min_count: must be between 1 and 1000000, got 0",
			`privilege_anomaly.privileged[0].segment: must be one path segment, without /, got "a/b"`,
			`privilege_anomaly.privileged[1].route_prefix: must start with /, got "admin"`,
			"privilege_anomaly.privileged[2]: must set exactly one of segment and route_prefix",
			`privilege_anomaly.privileged[3].methods[0]: must be an HTTP method, got ""`,
		}},
		{"no privileged rules", "privilege_anomaly: {privileged: []}", []string{"privilege_anomaly.privileged: must list at least one rule"}},
		{"client volume spike", "client_volume_spike: {p_value: 0, min_count: 0, overrides: [{route_prefix: /x, min_count: 3}]}", []string{
			"client_volume_spike.p_value: must be in (0,1), got 0",
			"client_volume_spike.min_count: must be between 1 and 1000000, got 0",
			"client_volume_spike.overrides[0].route_prefix: a route_prefix override of a detector keyed by client can only set enabled: false",
		}},
		{"route scan", "route_scan: {min_routes: 0, actions: [\"\"], statuses: [1000], allowlist: [{}]}", []string{
			"route_scan.min_routes: must be between 1 and 1000000, got 0",
			`route_scan.actions[0]: must not be empty`,
			"route_scan.statuses[0]: must be an HTTP status (100-599), got 1000",
			"route_scan.allowlist[0]: must set exactly one of key and cidr",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := decodeConfig(t, tc.src)
			if err != nil {
				t.Fatalf("decode(%q): %v", tc.src, err)
			}
			err = cfg.Validate()
			if err == nil {
				t.Fatalf("Validate(%q) = nil, want %q", tc.src, tc.want)
			}
			got := unjoin(err)
			if len(got) != len(tc.want) {
				t.Errorf("Validate(%q) = %d errors %q, want %d", tc.src, len(got), got, len(tc.want))
			}
			for _, w := range tc.want {
				found := false
				for _, g := range got {
					var ce *ConfigError
					if !errors.As(g, &ce) {
						t.Errorf("error %v is %T, want *ConfigError", g, g)
						continue
					}
					if strings.HasPrefix(w, ce.Key()+": ") && strings.Contains(g.Error(), w) {
						found = true
					}
				}
				if !found {
					t.Errorf("Validate(%q) = %q, want one error like %q", tc.src, got, w)
				}
			}
		})
	}
}

func TestConfigValidOverrides(t *testing.T) {
	src := `
new_country:
  allowlist: [{key: partner-123, countries: [DE, FR]}]
  overrides:
    - {key: partner-9, min_events: 100}
    - {route_prefix: /health, enabled: false}
token_reuse:
  allowlist: [{devices: [gateway-rig]}]
  overrides: [{key: 0123abcd, max_devices: 3, severity: low}]
forbidden_burst:
  allowlist: [{cidr: 10.0.0.0/8}, {key: scanner-1}]
  overrides: [{key: 203.0.113.9, enabled: false}, {key: k, threshold: 50, min_ratio: 0.9}]
quiet_endpoint_spike:
  overrides:
    - {route_prefix: /admin, min_count: 5, p_value: 0.001, min_peak_ratio: 2}
    - {key: "POST /v1/export", enabled: false}
object_enumeration:
  allowlist: [{key: partner-sync}]
  overrides: [{key: k, min_distinct: 200, min_peak_ratio: 2}, {route_prefix: /v1/public, enabled: false}]
auth_failure_spray:
  allowlist: [{cidr: 192.0.2.0/24}]
  overrides: [{key: 198.51.100.1, min_credentials: 50, min_ratio: 0.9}]
privilege_anomaly:
  privileged: [{segment: admin}, {route_prefix: /v1/billing/refunds, methods: [POST]}]
  allowlist: [{key: admin-console}]
  overrides: [{key: k, min_count: 10, severity: critical}]
client_volume_spike:
  overrides: [{key: batch-exporter, enabled: false}, {key: k, min_count: 1000, p_value: 1e-9, min_peak_ratio: 8}]
route_scan:
  actions: [BLOCK, CHALLENGE]
  allowlist: [{cidr: 10.0.0.0/8}]
  overrides: [{key: 203.0.113.5, min_routes: 100, min_ratio: 0.9}]
`
	cfg, err := decodeConfig(t, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	if o := cfg.ForbiddenBurst.Overrides[1]; o.Enabled != nil || *o.Threshold != 50 || *o.MinRatio != 0.9 {
		t.Errorf("override decoded as %+v", o)
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func TestConfigSet(t *testing.T) {
	for _, tc := range []struct {
		path, value string
		check       func(c Config) bool
	}{
		{"detectors.forbidden_burst.threshold", "30", func(c Config) bool { return c.ForbiddenBurst.Threshold == 30 }},
		{"forbidden_burst.min_ratio", "0.25", func(c Config) bool { return c.ForbiddenBurst.MinRatio == 0.25 }},
		{"forbidden_burst.statuses", "[401, 403]", func(c Config) bool { return len(c.ForbiddenBurst.Statuses) == 2 }},
		{"token_reuse.window", "15m", func(c Config) bool { return c.TokenReuse.Window == 15*time.Minute }},
		{"token_reuse.enabled", "false", func(c Config) bool { return !c.TokenReuse.Enabled }},
		{"quiet_endpoint_spike.p_value", "1e-9", func(c Config) bool { return c.QuietEndpointSpike.PValue == 1e-9 }},
		{"detectors.allowed_lateness", "1m", func(c Config) bool { return c.AllowedLateness == time.Minute }},
		{"new_country.severity", "critical", func(c Config) bool { return c.NewCountry.Severity == SeverityCritical }},
		{"new_country.runbook", "", func(c Config) bool { return c.NewCountry.Runbook == "" }},
		{"forbidden_burst", "{threshold: 7}", func(c Config) bool {
			return c.ForbiddenBurst.Threshold == 7 && c.ForbiddenBurst.MinRatio == 0.5 && c.ForbiddenBurst.Window == time.Minute
		}},
		{"forbidden_burst.overrides", "[{key: k, threshold: 3}]", func(c Config) bool {
			return len(c.ForbiddenBurst.Overrides) == 1 && *c.ForbiddenBurst.Overrides[0].Threshold == 3
		}},
	} {
		t.Run(tc.path+"="+tc.value, func(t *testing.T) {
			c := DefaultConfig()
			if err := c.Set(tc.path, tc.value); err != nil {
				t.Fatalf("Set(%q, %q) = %v", tc.path, tc.value, err)
			}
			if !tc.check(c) {
				t.Errorf("Set(%q, %q) gave\n%s", tc.path, tc.value, mustYAML(t, c))
			}
			if d := DefaultConfig(); d.ForbiddenBurst.Statuses[0] != 403 {
				t.Errorf("Set changed the defaults' statuses")
			}
		})
	}
}

func TestConfigSetErrors(t *testing.T) {
	for _, tc := range []struct{ path, value, want string }{
		{"forbidden_burst.treshold", "5", `unknown setting "treshold" (known here: enabled, severity, runbook, cooldown, max_keys, window, threshold`},
		{"nope.threshold", "5", `unknown setting "nope" (known here: allowed_lateness, idle_timeout, max_ahead, max_skew, new_country,`},
		{"forbidden_burst.threshold", "abc", "bad value \"abc\": unmarshal errors:\n  cannot unmarshal !!str `abc` into int"},
		{"token_reuse.window", "10", "cannot unmarshal !!int `10` into time.Duration"},
		{"forbidden_burst.threshold", "20.5", `bad value "20.5": must be a whole number, got 20.5`},
		{"forbidden_burst.threshold.x", "1", `"forbidden_burst.threshold" is a value, not a section`},
		{"new_country.severity", "urgent", `severity must be low, medium, high or critical, got "urgent"`},
		{"forbidden_burst.statuses", "[403", "is not YAML"},
		{"", "1", "empty setting name"},
	} {
		t.Run(tc.path+"="+tc.value, func(t *testing.T) {
			c := DefaultConfig()
			before := mustYAML(t, c)
			err := c.Set(tc.path, tc.value)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Set(%q, %q) = %v, want an error containing %q", tc.path, tc.value, err, tc.want)
			}
			if after := mustYAML(t, c); after != before {
				t.Errorf("a failed Set(%q, %q) changed the config", tc.path, tc.value)
			}
		})
	}
}
