package cluster

import (
	"slices"
	"strings"
	"testing"

	"github.com/gatewatch/gatewatch/detectors"
)

// TestEveryDetectorHasOneTopic: each detector of detectors.Config runs in the tasks of
// exactly one internal topic (in none, scale-out would silently not run it; in two, it
// would raise each alert twice from partial traffic), and taskConfig enables exactly
// those of its topic.
func TestEveryDetectorHasOneTopic(t *testing.T) {
	cfg := detectors.DefaultConfig()
	names, _ := detectorFields(&cfg)
	if len(names) < 4 {
		t.Fatalf("found the detectors %v in detectors.Config; the reflection misses some", names)
	}
	for _, n := range names {
		var in []string
		for k := range numKinds {
			if slices.Contains(kinds[k].detectors, n) {
				in = append(in, k.String())
			}
		}
		if len(in) != 1 {
			t.Errorf("detector %s runs on the internal topics %v, want exactly one", n, in)
		}
	}
	if err := CheckDetectors(cfg); err != nil {
		t.Errorf("CheckDetectors(defaults) = %v", err)
	}
	for k := range numKinds {
		tc := taskConfig(cfg, k)
		names, commons := detectorFields(&tc)
		for i, n := range names {
			if want := slices.Contains(kinds[k].detectors, n); commons[i].Enabled != want {
				t.Errorf("the %s task's config has %s enabled=%v, want %v", k, n, commons[i].Enabled, want)
			}
		}
	}
	// A detector no topic carries is refused by name.
	saved := kinds[Token].detectors
	kinds[Token].detectors = nil
	defer func() { kinds[Token].detectors = saved }()
	if err := CheckDetectors(cfg); err == nil || !slices.ContainsFunc(saved, func(d string) bool { return strings.Contains(err.Error(), d) }) {
		t.Errorf("CheckDetectors with no topic for %v = %v, want an error naming them", saved, err)
	}
}

// TestTaskShareOfMaxKeys: a task's detectors track their share of max_keys, rounded
// up, so that every task of a topic together track no more than one engine would.
func TestTaskShareOfMaxKeys(t *testing.T) {
	cfg := detectors.DefaultConfig()
	cfg.NewCountry.MaxKeys = 1000
	cfg.QuietEndpointSpike.MaxKeys = 7
	for _, tc := range []struct {
		partitions     int
		client, routes int // new_country's and quiet_endpoint_spike's
	}{
		{1, 1000, 7},
		{3, 334, 3},
		{32, 32, 1},
		{2000, 1, 1},
	} {
		c := taskEngineConfig(cfg, Client, tc.partitions)
		r := taskEngineConfig(cfg, Route, tc.partitions)
		if c.NewCountry.MaxKeys != tc.client || r.QuietEndpointSpike.MaxKeys != tc.routes {
			t.Errorf("%d partitions: max_keys %d and %d, want %d and %d", tc.partitions,
				c.NewCountry.MaxKeys, r.QuietEndpointSpike.MaxKeys, tc.client, tc.routes)
		}
	}
}
