package replay_test

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/replay"
)

// keySource hands out n events, every one from a client key, a client IP and an
// object id never seen before, a thousand a batch, 100 a second of event time: a
// scanner trying made-up API keys from a botnet, the worst case for everything that
// grows with keys.
type keySource struct {
	n, next int
	start   time.Time
	buf     []ingest.Event
}

const keyBatch = 1000

func (s *keySource) Next(context.Context) (*ingest.Batch, error) {
	if s.next >= s.n {
		return nil, io.EOF
	}
	if s.buf == nil {
		s.buf = make([]ingest.Event, keyBatch)
	}
	evs := s.buf[:min(keyBatch, s.n-s.next)]
	countries := [...]string{"US", "DE", "FR", "BR", "IN", "JP"}
	for i := range evs {
		k := s.next + i
		id := strconv.Itoa(k)
		evs[i] = ingest.Event{
			Time: s.start.Add(time.Duration(k) * 10 * time.Millisecond), Source: "awswaf",
			ClientKey: "key-" + id + "-0123456789abcdef", TokenFP: "tok-" + id + "-0123456789abcdef",
			ClientIP: fmt.Sprintf("10.%d.%d.%d", k>>16&255, k>>8&255, k&255), Country: countries[k%len(countries)],
			Method: "GET", Host: "api.example.com", Route: "/v1/invoices/{id}", Path: "/v1/invoices/" + id, Status: []int{200, 401, 403}[k%3],
		}
	}
	s.next += len(evs)
	return ingest.NewBatch(evs, nil), nil
}

// memoryConfig is the default detectors with max_keys of every detector at maxKeys
// (0: the defaults).
func memoryConfig(maxKeys int) detectors.Config {
	return withMaxKeys(detectors.DefaultConfig(), maxKeys)
}

// withMaxKeys returns cfg with max_keys of every detector at maxKeys (0: as it is).
func withMaxKeys(cfg detectors.Config, maxKeys int) detectors.Config {
	if maxKeys == 0 {
		return cfg
	}
	for _, c := range []*detectors.Common{&cfg.NewCountry.Common, &cfg.TokenReuse.Common, &cfg.ForbiddenBurst.Common,
		&cfg.QuietEndpointSpike.Common, &cfg.ObjectEnumeration.Common, &cfg.AuthFailureSpray.Common,
		&cfg.PrivilegeAnomaly.Common, &cfg.ClientVolumeSpike.Common, &cfg.RouteScan.Common} {
		c.MaxKeys = maxKeys
	}
	return cfg
}

// heapInUse returns the bytes of live heap, after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// replayKeys replays n distinct keys with every detector at maxKeys (0: the
// defaults) and returns the heap in use (after a collection) over the heap before it,
// sampled every sample batches: the largest in the first half of the replay and in
// the second.
func replayKeys(tb testing.TB, n, maxKeys, sample int) (first, second uint64) {
	tb.Helper()
	base := heapInUse()
	batches := 0
	src := &keySource{n: n, start: time.Date(2026, 11, 2, 6, 0, 0, 0, time.UTC)}
	sum, err := replay.Run(tb.Context(), replay.Options{Source: src, Detectors: memoryConfig(maxKeys), Out: io.Discard,
		Progress: func(replay.Progress) {
			if batches++; batches%sample != 0 {
				return
			}
			h := heapInUse()
			h -= min(base, h)
			if batches*keyBatch <= n/2 {
				first = max(first, h)
			} else {
				second = max(second, h)
			}
		}})
	if err != nil {
		tb.Fatal(err)
	}
	if sum.Events != n {
		tb.Fatalf("replayed %d events, want %d", sum.Events, n)
	}
	return first, second
}

// memoryBound is what a replay of any number of distinct keys stays within, over the
// heap before it, with max_keys 10,000 on every detector: the detectors' state and the
// replay's baseline store (twice max_keys of each kind it learns) at their caps, the
// lookup cache, and the samples of a bucket's events. README "Sizing" states it.
const (
	memoryMaxKeys = 10_000
	memoryBound   = 96 << 20
)

// TestReplayMemoryIsBoundedByMaxKeys replays 2,000,000 distinct client keys, client
// IPs and token fingerprints (and so as many objects) through every detector, each at
// max_keys 10,000: the heap in use stays within memoryBound all along, and is no larger
// in the second million keys than in the first (within 4 MiB): once every cap is
// reached, and the windows of the longest detector are full (about 200,000 events at
// this rate), nothing grows with the keys. Under the race detector, which makes it
// minutes, it replays 600,000.
func TestReplayMemoryIsBoundedByMaxKeys(t *testing.T) {
	n := 2_000_000
	if raceEnabled {
		n = 600_000
	}
	first, second := replayKeys(t, n, memoryMaxKeys, 100)
	mib := func(b uint64) float64 { return float64(b) / (1 << 20) }
	t.Logf("heap in use: at most %.1f MiB over the first %d keys, %.1f MiB over the next", mib(first), n/2, mib(second))
	if peak := max(first, second); peak > memoryBound {
		t.Errorf("the heap in use reached %.1f MiB over %d distinct keys, over the bound of %d MiB", mib(peak), n, memoryBound>>20)
	}
	if second > first+4<<20 {
		t.Errorf("the heap in use grows with the keys: at most %.1f MiB over the first %d, %.1f MiB over the next", mib(first), n/2, mib(second))
	}
}

// BenchmarkReplayMemory2M reports the peak heap in use (after a collection, sampled
// every 100 batches) of a replay of 2,000,000 distinct keys with max_keys 10,000 on
// every detector, and with the defaults (1,000,000; 200,000 for quiet_endpoint_spike).
//
//	go test ./replay -run '^$' -bench ReplayMemory2M -benchtime 1x -count 3
func BenchmarkReplayMemory2M(b *testing.B) {
	for _, maxKeys := range []int{memoryMaxKeys, 0} {
		name := fmt.Sprintf("max_keys=%d", maxKeys)
		if maxKeys == 0 {
			name = "max_keys=default"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var peak uint64
			for b.Loop() {
				first, second := replayKeys(b, 2_000_000, maxKeys, 100)
				peak = max(first, second)
			}
			b.ReportMetric(float64(peak)/(1<<20), "MiB-peak-heap")
		})
	}
}
