package detectors

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatewatch/gatewatch/ingest"
)

// TestArenaBound: past its bound an arena keeps no new value and counts it; a slot
// that passes to a newer bucket, or a reset, gives its bytes back.
func TestArenaBound(t *testing.T) {
	a := newArena(newRingLayout(time.Minute, 0, 4, false), 1)
	a.max = 20 // each value costs its length plus one
	steps := []struct {
		b, slot int64
		v       string
		kept    bool
		size    int64
		dropped uint64
	}{
		{0, 0, "aaaaaaaa", true, 9, 0},
		{0, 1, "bbbbbbbb", true, 18, 0},
		{0, 1, "cc", false, 18, 1},  // 21 > 20
		{0, 0, "d", true, 20, 1},    // exactly the bound
		{0, 2, "", false, 20, 2},    // even an empty value costs a byte
		{4, 0, "eeee", true, 14, 2}, // slot 0 passes to bucket 4: its 11 bytes go back
		{3, 0, "f", false, 14, 2},   // an older bucket than the slot's: not kept, not counted
	}
	for i, s := range steps {
		off := a.put(s.b, s.slot, s.v)
		if (off > 0) != s.kept || a.size != s.size || a.dropped != s.dropped {
			t.Fatalf("step %d, put(%d, %d, %q): offset %d, size %d, dropped %d; want kept %v, size %d, dropped %d",
				i, s.b, s.slot, s.v, off, a.size, a.dropped, s.kept, s.size, s.dropped)
		}
		if s.kept {
			if got := a.get(s.slot, sampleRef{off: off}); got != s.v {
				t.Fatalf("step %d: got %q back, want %q", i, got, s.v)
			}
		}
	}
	a.reset()
	if a.size != 0 || a.put(5, 1, "gggggggggggggggggg") == 0 {
		t.Errorf("after a reset: size %d, and a value of 19 bytes not kept", a.size)
	}
}

// TestSamplesAtTheirBound: a detector whose samples reach their bound still fires,
// with the samples it kept, and the engine counts what it dropped.
func TestSamplesAtTheirBound(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cfg := only(RouteScan)
	e, err := NewEngine(cfg, Options{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	d := e.dets[0].(*routeScan)
	d.smp.arena.max = 64
	var evs []ingest.Event
	for i := range 200 {
		evs = append(evs, req(t0.Add(time.Duration(i)*100*time.Millisecond), ip("198.51.100.7"), status(404),
			route("GET", fmt.Sprintf("/probe/%03d-%s", i, strings.Repeat("x", 20))), path(fmt.Sprintf("/probe/%03d-%s", i, strings.Repeat("x", 20)))))
	}
	alerts := e.Observe(evs)
	alerts = append(alerts, e.Flush()...)
	if len(alerts) == 0 {
		t.Fatal("the scan raised nothing")
	}
	if len(alerts[0].Evidence.SamplePaths) == 0 {
		t.Error("the alert has no sample paths")
	}
	if got := testutil.ToFloat64(e.m.droppedSamples.WithLabelValues(RouteScan)); got == 0 {
		t.Error("gatewatch_detectors_dropped_samples_total is 0")
	}
}

// TestSamplesBoundFollowsMaxKeys: every detector that samples bounds its samples by its
// max_keys, as the memory bound (README, Sizing) counts them, and shares the bound out
// with max_keys among a cluster's tasks.
func TestSamplesBoundFollowsMaxKeys(t *testing.T) {
	// bound builds the detector name alone with maxKeys and returns its samples bound;
	// ok is false when it keeps no samples.
	bound := func(name string, maxKeys int) (b int64, ok bool) {
		cfg := only(name)
		for _, c := range detectorCommons(&cfg) {
			c.c.MaxKeys = maxKeys
		}
		e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		s, ok := e.dets[0].(interface{ droppedSamples() (uint64, int64) })
		if !ok {
			return 0, false
		}
		_, b = s.droppedSamples()
		return b, true
	}
	for _, name := range Names {
		if _, ok := bound(name, 1); ok != (name != NewCountry) {
			t.Errorf("%s keeps samples: %v, want all but new_country to", name, ok)
			continue
		}
		for _, tc := range []struct {
			maxKeys int
			want    int64
		}{
			{1_000_000, 1_000_000 * samplesPerKey},
			{31_250, 31_250 * samplesPerKey}, // a cluster task's share of the default
			{100, minSamples},
		} {
			if got, ok := bound(name, tc.maxKeys); ok && got != tc.want {
				t.Errorf("%s with max_keys %d: samples bound %d bytes, want %d", name, tc.maxKeys, got, tc.want)
			}
		}
	}
}
