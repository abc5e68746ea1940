package detectors

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// use is one request with token tok from device dev.
func use(tok, dev string, ts time.Time, opts ...func(*ingest.Event)) ingest.Event {
	base := []func(*ingest.Event){token(tok), device(dev), client("k-" + tok), ip("192.0.2.10"), country("DE")}
	return req(ts, append(base, opts...)...)
}

func TestTokenReuse(t *testing.T) {
	type want struct {
		incidents int
		devices   []string
		first     time.Duration
	}
	maxDev := func(n int) func(*Config) {
		return func(c *Config) {
			c.TokenReuse.Overrides = []TokenReuseOverride{{Override: Override{Key: "t1"}, MaxDevices: &n}}
		}
	}
	for _, tc := range []struct {
		name   string
		cfg    func(*Config)
		events []ingest.Event
		want   want
	}{
		{"one device", nil, repeat(50, t0, 10*time.Second, func(i int, ts time.Time) ingest.Event {
			return use("t1", "phone", ts)
		}), want{}},
		{"two devices", nil, []ingest.Event{use("t1", "phone", t0), use("t1", "laptop", at(time.Minute))},
			want{1, []string{"laptop", "phone"}, 0}},
		{"second device at the window's last bucket", nil, []ingest.Event{use("t1", "phone", t0), use("t1", "laptop", at(9*time.Minute+59*time.Second))},
			want{1, []string{"laptop", "phone"}, 0}},
		{"second device one bucket after the window", nil, []ingest.Event{use("t1", "phone", t0), use("t1", "laptop", at(10*time.Minute))},
			want{}},
		{"reversed within allowed lateness", nil, []ingest.Event{use("t1", "laptop", at(20*time.Second)), use("t1", "phone", t0)},
			want{1, []string{"laptop", "phone"}, 0}},
		{"second device beyond allowed lateness", nil, []ingest.Event{
			use("t1", "laptop", at(5*time.Minute)), use("t2", "x", at(6*time.Minute)), use("t1", "phone", at(4*time.Minute)),
		}, want{}},
		{"different tokens", nil, []ingest.Event{use("t1", "phone", t0), use("t2", "laptop", t0)}, want{}},
		{"no device", nil, []ingest.Event{use("t1", "", t0), use("t1", "phone", t0)}, want{}},
		{"override allows three", maxDev(3), repeat(3, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return use("t1", fmt.Sprintf("d%d", i), ts)
		}), want{}},
		{"override allows three, four seen", maxDev(3), repeat(4, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return use("t1", fmt.Sprintf("d%d", i), ts)
		}), want{1, []string{"d0", "d1", "d2", "d3"}, 0}},
		// An API key (its fingerprint is the client key; or any API Gateway token) is
		// used by each of its client's programs: api_key_max_devices, 2 by default.
		{"an API key from two programs", nil, repeat(30, t0, 10*time.Second, func(i int, ts time.Time) ingest.Event {
			return use("t1", fmt.Sprintf("prog%d", i%2), ts, client("t1"))
		}), want{}},
		{"an API key from three devices", nil, repeat(3, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return use("t1", fmt.Sprintf("d%d", i), ts, client("t1"))
		}), want{1, []string{"d0", "d1", "d2"}, 0}},
		{"an API Gateway token from two programs", nil, repeat(2, t0, time.Second, func(i int, ts time.Time) ingest.Event {
			return use("t1", fmt.Sprintf("d%d", i), ts, func(e *ingest.Event) { e.Source = ingest.FormatAPIGateway })
		}), want{}},
		{"an API key's threshold set to one", func(c *Config) { c.TokenReuse.APIKeyMaxDevices = 1 },
			[]ingest.Event{use("t1", "phone", t0, client("t1")), use("t1", "laptop", at(time.Minute), client("t1"))},
			want{1, []string{"laptop", "phone"}, 0}},
		{"an override's max_devices holds for an API key", maxDev(1),
			[]ingest.Event{use("t1", "phone", t0, client("t1")), use("t1", "laptop", at(time.Minute), client("t1"))},
			want{1, []string{"laptop", "phone"}, 0}},
		{"allowlisted device", func(c *Config) {
			c.TokenReuse.Allowlist = []DeviceAllow{{Devices: []string{"gateway-rig"}}}
		}, []ingest.Event{use("t1", "phone", t0), use("t1", "gateway-rig", t0)}, want{}},
		{"allowlisted device for another token", func(c *Config) {
			c.TokenReuse.Allowlist = []DeviceAllow{{Key: "t2", Devices: []string{"gateway-rig"}}}
		}, []ingest.Event{use("t1", "phone", t0), use("t1", "gateway-rig", t0)}, want{1, []string{"gateway-rig", "phone"}, 0}},
		{"route prefix ignored", func(c *Config) {
			f := false
			c.TokenReuse.Overrides = []TokenReuseOverride{{Override: Override{RoutePrefix: "/v1", Enabled: &f}}}
		}, []ingest.Event{use("t1", "phone", t0), use("t1", "laptop", t0)}, want{}},
		{"reuse again within cooldown", nil, []ingest.Event{
			use("t1", "phone", t0), use("t1", "laptop", t0),
			use("t1", "phone", at(25*time.Minute)), use("t1", "laptop", at(25*time.Minute)),
		}, want{1, []string{"laptop", "phone"}, 0}},
		{"reuse again after cooldown", nil, []ingest.Event{
			use("t1", "phone", t0), use("t1", "laptop", t0),
			use("t1", "phone", at(60*time.Minute)), use("t1", "laptop", at(60*time.Minute)),
		}, want{2, []string{"laptop", "phone"}, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := only(TokenReuse)
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			for _, batch := range []int{0, 1} {
				res := run(t, cfg, nil, batch, concat(tc.events, tail(3*time.Hour)))
				groups := incidentsOf(res.alerts)
				if len(groups) != tc.want.incidents {
					t.Fatalf("batch %d: %d incidents, want %d:\n%s", batch, len(groups), tc.want.incidents, describe(res.alerts))
				}
				if tc.want.incidents == 0 {
					continue
				}
				a := groups[0][0]
				if !slices.Equal(a.Evidence.Devices, tc.want.devices) || !a.FirstSeen.Equal(at(tc.want.first)) ||
					a.Evidence.DeviceCount != len(tc.want.devices) {
					t.Errorf("batch %d: devices %v (count %d) first_seen %s, want %v %s", batch,
						a.Evidence.Devices, a.Evidence.DeviceCount, a.FirstSeen, tc.want.devices, at(tc.want.first))
				}
				if a.Key != "t1" || a.Labels["key_type"] != "token_fp" || a.Severity != SeverityHigh {
					t.Errorf("alert %+v", a)
				}
			}
		})
	}
}

// Every device's address is in the evidence, though the buckets keep one sample each:
// two stolen devices in one 30s bucket, from two addresses, and a long-lived phone
// among many of its own.
func TestTokenReuseEvidenceNamesEveryDevicesAddress(t *testing.T) {
	var events []ingest.Event
	for i := range 40 {
		events = append(events, use("t1", "phone", at(time.Duration(i)*5*time.Second), ip(fmt.Sprintf("192.0.2.%d", 10+i%3))))
	}
	events = append(events,
		use("t1", "stolen-1", at(91*time.Second), ip("203.0.113.66")),
		use("t1", "stolen-2", at(92*time.Second), ip("198.51.100.77")))
	slices.SortStableFunc(events, func(a, b ingest.Event) int { return a.Time.Compare(b.Time) })
	groups := incidentsOf(run(t, only(TokenReuse), nil, 0, events).alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents", len(groups))
	}
	ips := final(groups[0]).Evidence.ClientIPs
	for _, want := range []string{"203.0.113.66", "198.51.100.77"} {
		if !slices.Contains(ips, want) {
			t.Errorf("client_ips %v lack %s", ips, want)
		}
	}
}

func TestTokenReuseEvidence(t *testing.T) {
	events := []ingest.Event{
		use("t1", "phone", t0, ip("192.0.2.10"), country("DE")),
		use("t1", "phone", at(10*time.Second), ip("192.0.2.11"), country("DE")),
		use("t1", "attacker", at(90*time.Second), ip("203.0.113.66"), country("BR")),
		use("t1", "attacker", at(100*time.Second), ip("203.0.113.66"), country("BR")),
		use("t1", "attacker", at(110*time.Second), ip("203.0.113.66"), country("BR")),
	}
	res := run(t, only(TokenReuse), nil, 0, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents:\n%s", len(groups), describe(res.alerts))
	}
	a := final(groups[0])
	ev := a.Evidence
	if !slices.Equal(ev.Countries, []string{"BR", "DE"}) || len(ev.ClientIPs) != 2 || !slices.Contains(ev.ClientIPs, "203.0.113.66") ||
		len(ev.DeviceEvents) != 2 || ev.MaxDevices != 1 || ev.Window != "10m0s" {
		t.Errorf("evidence %+v", ev)
	}
	// Each device with its address and the bucket it came in: the attacker's came last.
	phoneIP := "192.0.2.10"
	if len(ev.DeviceEvents) == 2 && ev.DeviceEvents[1].ClientIP == "192.0.2.11" {
		phoneIP = "192.0.2.11" // the first bucket's address of smallest hash
	}
	want := []DeviceEvents{
		{Device: "attacker", Events: 3, ClientIP: "203.0.113.66", FirstBucket: formatTime(at(90 * time.Second))},
		{Device: "phone", Events: 2, ClientIP: phoneIP, FirstBucket: formatTime(t0)},
	}
	if !slices.Equal(ev.DeviceEvents, want) {
		t.Errorf("device_events %+v, want %+v", ev.DeviceEvents, want)
	}
	// The first and last events of the window, not the edges of their 30s buckets.
	if !a.FirstSeen.Equal(t0) || !a.LastSeen.Equal(at(110*time.Second)) {
		t.Errorf("first_seen %s last_seen %s", a.FirstSeen, a.LastSeen)
	}
	summary := "Token t1 was used from 2 devices in BR, DE within 10m0s (at most 1 expected)."
	if a.Summary != summary {
		t.Errorf("summary %q, want %q", a.Summary, summary)
	}

	// A request without a bearer token has its API key for a token: the summary
	// names it so.
	for i := range events {
		events[i].ClientKey = events[i].TokenFP
	}
	cfg := only(TokenReuse)
	cfg.TokenReuse.APIKeyMaxDevices = 1
	res = run(t, cfg, nil, 0, events)
	groups = incidentsOf(res.alerts)
	summary = "API key t1 was used from 2 devices in BR, DE within 10m0s (at most 1 expected)."
	if len(groups) != 1 || final(groups[0]).Summary != summary {
		t.Errorf("an API key's incidents:\n%s\nwant one with summary %q", describe(res.alerts), summary)
	}
}

func TestTokenReuseManyDevices(t *testing.T) {
	events := repeat(40, t0, time.Second, func(i int, ts time.Time) ingest.Event {
		return use("t1", fmt.Sprintf("bot-%02d", i), ts)
	})
	res := run(t, only(TokenReuse), nil, 0, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents:\n%s", len(groups), describe(res.alerts))
	}
	ev := final(groups[0]).Evidence
	// 32 devices are counted exactly, the other 8 by the sketch.
	if ev.DeviceCount < 39 || ev.DeviceCount > 41 || len(ev.Devices) != exactLimit {
		t.Errorf("device_count %d with %d listed, want about 40 with %d listed", ev.DeviceCount, len(ev.Devices), exactLimit)
	}
}

// TestTokenReuseCountsTheWindow: a token in use on its owner's phone all day, replayed
// from another device at the end of the day. The alert's counts and times are those of
// the window it names, not of the phone's day.
func TestTokenReuseCountsTheWindow(t *testing.T) {
	events := concat(
		repeat(1700, t0, 20*time.Second, func(i int, ts time.Time) ingest.Event { return use("t1", "phone", ts) }),
		[]ingest.Event{use("t1", "attacker", at(1700*20*time.Second-90*time.Second), ip("203.0.113.66"))})
	res := run(t, only(TokenReuse), nil, 0, inOrder(events))
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 {
		t.Fatalf("%d incidents:\n%s", len(groups), describe(res.alerts))
	}
	a := groups[0][0]
	ws, _ := time.Parse(time.RFC3339, a.Evidence.WindowStart)
	we, _ := time.Parse(time.RFC3339, a.Evidence.WindowEnd)
	for _, d := range a.Evidence.DeviceEvents {
		if d.Device == "phone" && (d.Events < 25 || d.Events > 30) {
			t.Errorf("phone: %d events, want the 25 to 30 of the 10m window, not its day", d.Events)
		}
	}
	if a.FirstSeen.Before(ws) || a.LastSeen.After(we) || a.FirstSeen.Sub(ws) >= 20*time.Second {
		t.Errorf("first_seen %s last_seen %s for window %s..%s", a.FirstSeen, a.LastSeen, ws, we)
	}
}
