package replay_test

import (
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/replay"
)

// TestReplaySyncInterval: a lane writes its baselines every few batches, not after
// each, and raises the same alerts as when it writes after each, byte for byte, even
// with max_keys so small that keys are evicted and come back between two writes.
func TestReplaySyncInterval(t *testing.T) {
	path := writeSample(t, synth.Config{Duration: time.Hour, Rate: 20, Seed: 3, Attacks: synth.Attacks}, ingest.FormatAWSWAF)
	defer func(n int) { *replay.SyncEvery = n }(*replay.SyncEvery)
	for _, maxKeys := range []int{0, 200, 40} {
		cfg := withMaxKeys(demoDetectors(), maxKeys)
		var want []byte
		for _, every := range []int{1, 16} {
			*replay.SyncEvery = every
			got, sum := run(t, path, ingest.FormatAWSWAF, 0, replay.Options{Detectors: cfg})
			t.Logf("max_keys %d, sync every %d: %d events, %d bytes of alerts", maxKeys, every, sum.Events, len(got))
			if every == 1 {
				want = got
			} else if string(got) != string(want) {
				t.Errorf("max_keys %d: writing every %d batches gave other alerts:\n%s\nwant\n%s", maxKeys, every, got, want)
			}
		}
	}
}
