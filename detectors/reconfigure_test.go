package detectors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestReconfigure runs events, reloads a changed config mid-stream (a window straddles
// the reload), runs more events, and compares what fired with the same stream under
// the old config: a reload changes what follows it and keeps what came before.
func TestReconfigure(t *testing.T) {
	type phase struct {
		events []ingest.Event
		change func(*Config) // then a reload; nil: none
	}
	closeAll := tail(time.Hour)
	for _, tc := range []struct {
		name    string
		start   func(*Config)
		phases  []phase
		wantErr []string // paths the reload is refused at; the old config keeps running
		// describe(alerts) with and without the reloads
		want, without string
	}{
		{
			name: "lowered threshold fires on counts from before the reload",
			phases: []phase{
				{forbidden("a", 12, t0, time.Second), func(c *Config) { c.ForbiddenBurst.Threshold = 15 }},
				{concat(forbidden("a", 4, at(20*time.Second), time.Second), closeAll), nil},
			},
			want:    "forbidden_burst a medium from=0s forbidden=16/16 threshold=15",
			without: "",
		},
		{
			name: "raised threshold silences the next window",
			phases: []phase{
				{forbidden("a", 12, t0, time.Second), func(c *Config) { c.ForbiddenBurst.Threshold = 30 }},
				{concat(forbidden("a", 12, at(20*time.Second), time.Second), closeAll), nil},
			},
			want: "",
			without: "forbidden_burst a medium from=0s forbidden=22/22 threshold=20\n" +
				"forbidden_burst a medium from=0s forbidden=24/24 threshold=20",
		},
		{
			name: "override added mid-window silences the key and keeps its counts",
			phases: []phase{
				{forbidden("a", 15, t0, time.Second), func(c *Config) {
					off := false
					c.ForbiddenBurst.Overrides = []ForbiddenBurstOverride{{Override: Override{Key: "a", Enabled: &off}}}
				}},
				// Counted nowhere while the key is off; closes no window of a.
				{forbidden("a", 10, at(15*time.Second), 500*time.Millisecond), func(c *Config) { c.ForbiddenBurst.Overrides = nil }},
				// 15 from before the first reload and 5 after the second reach 20.
				{concat(forbidden("a", 5, at(25*time.Second), time.Second), closeAll), nil},
			},
			want: "forbidden_burst a medium from=0s forbidden=20/20 threshold=20",
			without: "forbidden_burst a medium from=0s forbidden=25/25 threshold=20\n" +
				"forbidden_burst a medium from=0s forbidden=30/30 threshold=20",
		},
		{
			name: "allowlisted address range silences a client keyed by IP mid-window",
			phases: []phase{
				{ipForbidden("203.0.113.9", 15, t0), func(c *Config) {
					c.ForbiddenBurst.Allowlist = []ClientAllow{{CIDR: "203.0.113.0/24"}}
				}},
				{concat(ipForbidden("203.0.113.9", 10, at(20*time.Second)), closeAll), nil},
			},
			want: "",
			without: "forbidden_burst 203.0.113.9 medium from=0s forbidden=20/20 threshold=20\n" +
				"forbidden_burst 203.0.113.9 medium from=0s forbidden=25/25 threshold=20",
		},
		{
			name: "severity applies to the next firing, the incident escalates",
			phases: []phase{
				{concat(forbidden("a", 20, t0, time.Second), tail(3*time.Minute)), func(c *Config) { c.ForbiddenBurst.Severity = SeverityCritical }},
				{concat(forbidden("a", 20, at(4*time.Minute), time.Second), closeAll), nil},
			},
			want: "forbidden_burst a medium from=0s forbidden=20/20 threshold=20\n" +
				"forbidden_burst a critical from=0s forbidden=20/20 threshold=20",
			without: "forbidden_burst a medium from=0s forbidden=20/20 threshold=20",
		},
		{
			name: "shorter cooldown opens a new incident for the next firing",
			phases: []phase{
				{concat(forbidden("a", 20, t0, time.Second), tail(3*time.Minute)), func(c *Config) { c.ForbiddenBurst.Cooldown = time.Minute }},
				{concat(forbidden("a", 20, at(10*time.Minute), time.Second), closeAll), nil},
			},
			want: "forbidden_burst a medium from=0s forbidden=20/20 threshold=20\n" +
				"forbidden_burst a medium from=10m0s forbidden=20/20 threshold=20 (new incident)",
			without: "forbidden_burst a medium from=0s forbidden=20/20 threshold=20",
		},
		{
			name: "disabled by reload raises nothing, enabled again fires",
			phases: []phase{
				{forbidden("a", 20, t0, time.Second), func(c *Config) { c.ForbiddenBurst.Enabled = false }},
				{tail(3 * time.Minute), func(c *Config) { c.ForbiddenBurst.Enabled = true }},
				{concat(forbidden("a", 20, at(4*time.Minute), time.Second), closeAll), nil},
			},
			// Off, the first burst opens nothing; the second opens the incident.
			want:    "forbidden_burst a medium from=4m0s forbidden=20/20 threshold=20",
			without: "forbidden_burst a medium from=0s forbidden=20/20 threshold=20",
		},
		{
			name: "window change is refused and the old config keeps running",
			phases: []phase{
				{forbidden("a", 12, t0, time.Second), func(c *Config) {
					c.ForbiddenBurst.Window = 2 * time.Minute
					c.ForbiddenBurst.Threshold = 5 // refused with the rest
					c.TokenReuse.MaxKeys = 10
					c.AllowedLateness = time.Minute
				}},
				{concat(forbidden("a", 8, at(20*time.Second), time.Second), closeAll), nil},
			},
			wantErr: []string{"allowed_lateness", "token_reuse.max_keys", "forbidden_burst.window"},
			want:    "forbidden_burst a medium from=0s forbidden=20/20 threshold=20",
			without: "forbidden_burst a medium from=0s forbidden=20/20 threshold=20",
		},
		{
			name:  "a detector off at start is not enabled by a reload",
			start: func(c *Config) { c.RouteScan.Enabled = false },
			phases: []phase{
				{forbidden("a", 12, t0, time.Second), func(c *Config) { c.RouteScan.Enabled = true }},
				{concat(forbidden("a", 8, at(20*time.Second), time.Second), closeAll), nil},
			},
			wantErr: []string{"route_scan.enabled"},
			want:    "forbidden_burst a medium from=0s forbidden=20/20 threshold=20",
			without: "forbidden_burst a medium from=0s forbidden=20/20 threshold=20",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := only(ForbiddenBurst)
			if tc.start != nil {
				tc.start(&cfg)
			}
			for _, reload := range []bool{true, false} {
				e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry()})
				if err != nil {
					t.Fatal(err)
				}
				next := cfg
				var alerts []Alert
				for _, p := range tc.phases {
					alerts = append(alerts, e.Observe(p.events)...)
					if p.change == nil || !reload {
						continue
					}
					p.change(&next)
					err := e.Reconfigure(next)
					checkRefused(t, err, tc.wantErr)
				}
				alerts = append(alerts, e.Flush()...)
				got, want := describeFirings(alerts), tc.without
				if reload {
					want = tc.want
				}
				if got != want {
					t.Errorf("reload %v: alerts\n%s\nwant\n%s", reload, got, want)
				}
			}
		})
	}
}

// checkRefused checks that err names exactly the paths in want, each as a restart-only
// setting; want empty: err is nil.
func checkRefused(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("Reconfigure: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("Reconfigure accepted a config it must refuse at %v", want)
	}
	var got []string
	for e := range errorsOf(err) {
		var ce *ConfigError
		if errors.As(e, &ce) {
			got = append(got, ce.Path)
		}
	}
	for _, p := range want {
		if !strings.Contains(err.Error(), p+": ") {
			t.Errorf("refusal %q does not name %s", err, p)
		}
	}
	if len(got) != len(want) {
		t.Errorf("refused at %v, want %v", got, want)
	}
}

// errorsOf yields the errors joined in err.
func errorsOf(err error) func(func(error) bool) {
	return func(yield func(error) bool) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				if !yield(e) {
					return
				}
			}
			return
		}
		yield(err)
	}
}

// describeFirings is one line per incident update: detector, key, severity, first
// seen (since t0) and the burst's counts, marking an alert that opened a second incident for its key.
func describeFirings(alerts []Alert) string {
	var lines []string
	ids := map[string]string{}
	for _, a := range alerts {
		line := fmt.Sprintf("%s %s %s from=%s forbidden=%d/%d threshold=%d", a.Detector, a.Key, a.Severity,
			a.FirstSeen.Sub(t0), a.Evidence.ForbiddenCount, a.Evidence.TotalCount, a.Evidence.Threshold)
		if id, ok := ids[a.Key]; ok && id != a.ID {
			line += " (new incident)"
		}
		ids[a.Key] = a.ID
		if len(lines) > 0 && lines[len(lines)-1] == line {
			continue // an update that changed nothing shown here
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n")
}

// ipForbidden returns n 403s, one a second from start, for a client with no client key.
func ipForbidden(addr string, n int, start time.Time) []ingest.Event {
	return repeat(n, start, time.Second, func(i int, ts time.Time) ingest.Event {
		return req(ts, ip(addr), status(403), path("/admin"))
	})
}

// TestReloadWhileRunning applies reloads from another goroutine while Run drives the
// engine: each lands between batches (go test -race checks that none races Run).
func TestReloadWhileRunning(t *testing.T) {
	cfg := only(ForbiddenBurst)
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	src := &chanSource{c: make(chan *ingest.Batch)}
	sink := &recordingSink{}
	done := make(chan error, 1)
	go func() { done <- e.Run(context.Background(), src, sink) }()
	send := func(events []ingest.Event) { src.c <- &ingest.Batch{Events: events} }
	send(forbidden("a", 12, t0, time.Second))
	next := cfg
	next.ForbiddenBurst.Threshold = 15
	for range 3 { // a reload while Run waits for a batch, and again as batches come
		if err := e.Reconfigure(next); err != nil {
			t.Fatal(err)
		}
		send(ok("b", 1, at(12*time.Second), 0))
	}
	send(forbidden("a", 4, at(20*time.Second), time.Second))
	send(tail(time.Hour))
	close(src.c)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, want := describeFirings(sink.alerts), "forbidden_burst a medium from=0s forbidden=16/16 threshold=15"; got != want {
		t.Errorf("alerts\n%s\nwant\n%s", got, want)
	}
}

// chanSource hands out the batches sent on c and ends when c is closed.
type chanSource struct{ c chan *ingest.Batch }

func (s *chanSource) Next(ctx context.Context) (*ingest.Batch, error) {
	select {
	case b, ok := <-s.c:
		if !ok {
			return nil, io.EOF
		}
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestReloadResolvesLiveKeys: an override or allowlist entry added by a reload reaches
// the keys every detector already tracks (each finds a key's params its own way: by
// client, token, route, or the hash a client and route pair is kept under), and
// removing it again puts them back under the detector's settings.
func TestReloadResolvesLiveKeys(t *testing.T) {
	off := false
	silence := func(c *Config) {
		o := Override{Key: "k1", Enabled: &off}
		c.NewCountry.Overrides = []NewCountryOverride{{Override: o}}
		c.TokenReuse.Overrides = []TokenReuseOverride{{Override: Override{Key: "tok1", Enabled: &off}}}
		c.ForbiddenBurst.Overrides = []ForbiddenBurstOverride{{Override: o}}
		c.QuietEndpointSpike.Overrides = []QuietEndpointSpikeOverride{{Override: Override{RoutePrefix: "/admin/", Enabled: &off}}}
		c.ObjectEnumeration.Overrides = []ObjectEnumerationOverride{{Override: o}}
		c.AuthFailureSpray.Allowlist = []ClientAllow{{Key: "203.0.113.5"}}
		c.PrivilegeAnomaly.Overrides = []PrivilegeAnomalyOverride{{Override: o}}
		c.ClientVolumeSpike.Allowlist = []ClientAllow{{Key: "k1"}}
		c.RouteScan.Allowlist = []ClientAllow{{CIDR: "203.0.113.0/24"}}
	}
	cfg := DefaultConfig()
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewPedanticRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	e.Observe([]ingest.Event{req(t0, client("k1"), ip("203.0.113.5"), token("tok1"), device("dev1"), country("DE"),
		route("POST", "/admin/users/{id}"), path("/admin/users/7"))})
	check := func(wantOn bool) {
		t.Helper()
		for _, d := range e.dets {
			got := liveKeysEnabled(d)
			if len(got) != 1 {
				t.Errorf("%s tracks %d keys, want 1", d.name(), len(got))
				continue
			}
			if got[0] != wantOn {
				t.Errorf("%s: key enabled %v, want %v", d.name(), got[0], wantOn)
			}
		}
	}
	check(true)
	next := cfg
	silence(&next)
	if err := e.Reconfigure(next); err != nil {
		t.Fatal(err)
	}
	check(false)
	if err := e.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	check(true)
}

// liveKeysEnabled returns, for every key detector d tracks, whether its params are
// enabled.
func liveKeysEnabled(d detector) []bool {
	var out []bool
	add := func(each func(func(int32)), on func(int32) bool) { each(func(s int32) { out = append(out, on(s)) }) }
	switch d := d.(type) {
	case *newCountry:
		add(d.tab.each, func(s int32) bool { return d.params[d.tab.ents[s].s.prm].enabled })
	case *tokenReuse:
		add(d.tab.each, func(s int32) bool { return d.params[d.tab.ents[s].s.prm].enabled })
	case *forbiddenBurst:
		add(d.tab.each, func(s int32) bool { return d.rules.params[d.tab.ents[s].s.prm].enabled })
	case *quietSpike:
		add(d.tab.each, func(s int32) bool { return d.params[d.tab.ents[s].s.prm].enabled })
	case *objectEnum:
		add(d.tab.each, func(s int32) bool { return d.rules.params[d.tab.ents[s].s.prm].enabled })
	case *authSpray:
		add(d.tab.each, func(s int32) bool { return d.rules.params[d.tab.ents[s].s.prm].enabled })
	case *privilegeAnomaly:
		add(d.tab.each, func(s int32) bool { return d.rules.params[d.tab.ents[s].s.prm].enabled })
	case *volumeSpike:
		add(d.tab.each, func(s int32) bool { return d.rules.params[d.tab.ents[s].s.prm].enabled })
	case *routeScan:
		add(d.tab.each, func(s int32) bool { return d.rules.params[d.tab.ents[s].s.prm].enabled })
	default:
		panic("liveKeysEnabled: unknown detector " + d.name())
	}
	return out
}
