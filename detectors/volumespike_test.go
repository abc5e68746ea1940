package detectors

import (
	"fmt"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// calls returns n requests of key k, one every step.
func calls(k string, n int, start time.Time, step time.Duration) []ingest.Event {
	return repeat(n, start, step, func(i int, ts time.Time) ingest.Event {
		return req(ts, client(k), ip("198.51.100.40"), path(fmt.Sprintf("/v1/items/%d", i%50)))
	})
}

// usual is a snapshot of a month of traffic in which key k makes rate requests a
// minute and at most peak in a window.
func usual(k string, rate, peak float64) *Baselines {
	b := established()
	b.Clients = []ClientBaseline{{Key: k, FirstSeen: t0.Add(-60 * 24 * time.Hour), RatePerMinute: rate, AsOf: t0,
		Peak: peak, PeakAt: t0.Add(-24 * time.Hour)}}
	return b
}

func TestClientVolumeSpike(t *testing.T) {
	runEdges(t, ClientVolumeSpike, []edgeCase{
		{name: "a jump to six times its peak", snap: usual("k", 2, 50), events: calls("k", 300, t0, time.Second), incidents: 1, key: "k",
			check: func(t *testing.T, a Alert) {
				// The peak of a day ago has decayed with peak_memory (a week): 50 e^(-1/7).
				ev := a.Evidence
				if ev.ObservedCount < 200 || ev.MinCount != 200 || *ev.RecentPeak < 43.3 || *ev.RecentPeak > 43.4 || ev.MinPeakRatio != 4 ||
					*ev.PValue >= 1e-6 || len(ev.SamplePaths) == 0 || ev.KeyFirstSeen == "" {
					t.Errorf("evidence %+v", ev)
				}
			}},
		{name: "first_seen and last_seen are its events' times", snap: usual("k", 2, 50), events: calls("k", 300, at(7*time.Second), time.Second),
			incidents: 1, key: "k", check: func(t *testing.T, a Alert) {
				// Not the edges of the buckets they fell in.
				if !a.FirstSeen.Equal(at(7*time.Second)) || a.LastSeen.Sub(a.FirstSeen)%time.Second != 0 ||
					a.LastSeen.Before(at(206*time.Second)) || a.LastSeen.After(at(306*time.Second)) {
					t.Errorf("first_seen %s last_seen %s", a.FirstSeen, a.LastSeen)
				}
			}},
		{name: "below min_count", snap: usual("k", 0.1, 0), events: calls("k", 199, t0, time.Second)},
		{name: "at min_count", snap: usual("k", 0.1, 0), events: calls("k", 200, t0, time.Second), incidents: 1, key: "k"},
		{name: "less than min_peak_ratio times its peak", snap: usual("k", 2, 100), events: calls("k", 300, t0, time.Second)},
		{name: "not improbable under its rate", snap: usual("k", 28, 0), events: calls("k", 300, t0, time.Second)},
		{name: "a key first seen within learning_period", snap: func() *Baselines {
			b := usual("k", 2, 50)
			b.Clients[0].FirstSeen = t0.Add(-time.Hour)
			return b
		}(), events: calls("k", 300, t0, time.Second)},
		{name: "a key never seen before", snap: established(), events: calls("k", 1000, t0, 100*time.Millisecond)},
		{name: "spread over the whole window", snap: usual("k", 0.1, 0), events: concat(calls("k", 199, t0, 3*time.Second),
			calls("k", 1, at(9*time.Minute+59*time.Second), 0)), incidents: 1, key: "k"},
		{name: "one bucket past the window", snap: usual("k", 0.1, 0), events: concat(calls("k", 199, t0, time.Second),
			calls("k", 1, at(10*time.Minute), 0))},
		{name: "reversed within allowed lateness", snap: usual("k", 0.1, 0), events: reversed(calls("k", 300, t0, 80*time.Millisecond)),
			incidents: 1, key: "k"},
		{name: "half beyond allowed lateness", snap: usual("k", 0.1, 0), events: concat(
			calls("k", 150, at(5*time.Minute), 100*time.Millisecond),
			[]ingest.Event{req(at(6*time.Minute), client("other"))},
			calls("k", 150, at(4*time.Minute), 100*time.Millisecond))},
		{name: "override raises min_count", snap: usual("k", 0.1, 0), cfg: func(c *Config) {
			n := 1000
			c.ClientVolumeSpike.Overrides = []ClientVolumeSpikeOverride{{Override: Override{Key: "k"}, MinCount: &n}}
		}, events: calls("k", 900, t0, 500*time.Millisecond)},
		{name: "allowlisted key", snap: usual("k", 0.1, 0), cfg: func(c *Config) {
			c.ClientVolumeSpike.Allowlist = []ClientAllow{{Key: "k"}}
		}, events: calls("k", 900, t0, 500*time.Millisecond)},
	})
}

// TestClientVolumeSpikeDailyRhythm: a key busy in office hours and quiet at night,
// learned from two days of its own traffic, is not a spike on the third morning; the
// same volume at night, when the key has never been that busy since... still is not:
// its peak is what it has done before. A night far above anything before is.
func TestClientVolumeSpikeDailyRhythm(t *testing.T) {
	if testing.Short() {
		t.Skip("three days of traffic")
	}
	day := t0.Truncate(24 * time.Hour)
	var events []ingest.Event
	for d := 0; d < 3; d++ {
		for m := 0; m < 24*60; m++ {
			ts := day.Add(time.Duration(d)*24*time.Hour + time.Duration(m)*time.Minute)
			n := 1 // a minute at night
			if h := ts.Hour(); h >= 9 && h < 17 {
				n = 30 + 3*d // office hours, growing slowly
			}
			events = append(events, calls("k", n, ts, time.Minute/time.Duration(n))...)
		}
	}
	// The second night: as busy as office hours. The third: ten times the key's peak.
	events = inOrder(events, calls("k", 330, day.Add(24*time.Hour+22*time.Hour), 1800*time.Millisecond),
		calls("k", 3000, day.Add(2*24*time.Hour+22*time.Hour), 200*time.Millisecond))
	cfg := only(ClientVolumeSpike)
	cfg.ClientVolumeSpike.LearningPeriod = 24 * time.Hour
	res := run(t, cfg, nil, 500, events)
	groups := incidentsOf(res.alerts)
	if len(groups) != 1 || groups[0][0].FirstSeen.Before(day.Add(2*24*time.Hour+21*time.Hour)) {
		t.Fatalf("incidents:\n%s\nwant one, the third night", describe(res.alerts))
	}
	if err := res.engine.SyncBaselines(t.Context()); err != nil {
		t.Fatal(err)
	}
	b, _ := res.engine.store.LoadBaselines(t.Context(), AllBaselines)
	if len(b.Clients) != 1 || b.Clients[0].Peak < 300 || !b.Clients[0].FirstSeen.Equal(day) {
		t.Errorf("client baselines %+v", b.Clients)
	}
}
