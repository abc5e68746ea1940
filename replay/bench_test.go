package replay_test

import (
	"bytes"
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fastjson"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
	"github.com/gatewatch/gatewatch/ingest/synth"
	"github.com/gatewatch/gatewatch/replay"
	"github.com/gatewatch/gatewatch/store"
	"github.com/gatewatch/gatewatch/store/clickhousetest"
)

// benchTraffic is the benchmarks' input: half an hour of traffic with every attack,
// 90,000 events, ~1.4 KB AWS WAF records.
var benchTraffic = synth.Config{Duration: 30 * time.Minute, Rate: 50, Seed: 1, Attacks: synth.Attacks}

// BenchmarkReplayAWSWAF is replay from a file against the ceiling the issue sets for
// it: a bare fastjson parse of the same lines on one core, measured in the same run
// (fastjson-1core first, then replay, whose x-fastjson metric is its events/s over
// fastjson-1core's). Replay parses on every core and runs every detector. The engine
// sub-benchmark is replay's other half on its own: every detector over the parsed
// events, on one goroutine as in replay, from a fresh engine; engine-four is the same
// with the four first detectors only. Compare runs with
//
//	go test ./replay -run '^$' -bench 'ReplayAWSWAF' -benchmem -count 6
func BenchmarkReplayAWSWAF(b *testing.B) {
	path := writeSample(b, benchTraffic, ingest.FormatAWSWAF)
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	var ceiling float64 // events/s of fastjson-1core in this run
	b.Run("fastjson-1core", func(b *testing.B) {
		var p fastjson.Parser
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			for _, l := range lines {
				if _, err := p.ParseBytes(l); err != nil {
					b.Fatal(err)
				}
			}
		}
		ceiling = float64(b.N*len(lines)) / b.Elapsed().Seconds()
		b.ReportMetric(ceiling, "events/s")
	})
	// engine-four is the engine sub-benchmark with only the four detectors the engine
	// first had, which issue 16 bounds the nine by (twice their cost); engine's x-four
	// is its time an event over engine-four's.
	var four float64 // ns an event of engine-four in this run
	observe := func(b *testing.B, cfg detectors.Config) float64 {
		events := parsed(b, path)
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			e, err := detectors.NewEngine(cfg, detectors.Options{Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			for batch := range slices.Chunk(events, 1000) {
				e.Observe(batch)
			}
			e.Flush()
		}
		rate := float64(b.N*len(events)) / b.Elapsed().Seconds()
		b.ReportMetric(rate, "events/s")
		if ceiling > 0 {
			b.ReportMetric(rate/ceiling, "x-fastjson")
		}
		return 1e9 / rate
	}
	b.Run("engine-four", func(b *testing.B) {
		cfg := demoDetectors()
		cfg.ObjectEnumeration.Enabled, cfg.AuthFailureSpray.Enabled, cfg.PrivilegeAnomaly.Enabled = false, false, false
		cfg.ClientVolumeSpike.Enabled, cfg.RouteScan.Enabled = false, false
		four = observe(b, cfg)
	})
	b.Run("engine", func(b *testing.B) {
		if ns := observe(b, demoDetectors()); four > 0 {
			b.ReportMetric(ns/four, "x-four")
		}
	})
	b.Run("replay", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		events := 0
		for b.Loop() {
			_, sum := run(b, path, ingest.FormatAWSWAF, 0, replay.Options{})
			events += sum.Events
		}
		rate := float64(events) / b.Elapsed().Seconds()
		b.ReportMetric(rate, "events/s")
		if ceiling > 0 {
			b.ReportMetric(rate/ceiling, "x-fastjson")
		}
	})
}

// BenchmarkReplayArchive is replay from the store's event archive: the events of
// benchTraffic archived once, then read back in time order through every detector, from
// the embedded store and from a local clickhouse-server (skipped without one). Each
// store's read is the bare ReadEvents loop, measured in the same run: replay's x-read
// is its events/s over read's.
//
//	go test ./replay -run '^$' -bench 'ReplayArchive' -benchmem -count 6
func BenchmarkReplayArchive(b *testing.B) {
	path := writeSample(b, benchTraffic, ingest.FormatAWSWAF)
	from, to := benchTraffic.Start, benchTraffic.Start.Add(benchTraffic.Duration)
	if from.IsZero() {
		from, to = synth.DefaultStart, synth.DefaultStart.Add(benchTraffic.Duration)
	}
	bench := func(b *testing.B, st store.Store) {
		n := archive(b, st, path)
		var ceiling float64 // events/s of read in this run
		b.Run("read", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				got := 0
				for _, err := range st.ReadEvents(context.Background(), from, to.Add(time.Minute), "") {
					if err != nil {
						b.Fatal(err)
					}
					got++
				}
				if got != n {
					b.Fatalf("read %d events of the %d archived", got, n)
				}
			}
			ceiling = float64(b.N*n) / b.Elapsed().Seconds()
			b.ReportMetric(ceiling, "events/s")
		})
		b.Run("replay", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a := replay.NewArchive(st.ReadEvents(context.Background(), from, to.Add(time.Minute), ""))
				_, sum := replayOf(b, a, replay.Options{})
				a.Close()
				if sum.Events != n {
					b.Fatalf("replayed %d events of the %d archived", sum.Events, n)
				}
			}
			rate := float64(b.N*n) / b.Elapsed().Seconds()
			b.ReportMetric(rate, "events/s")
			if ceiling > 0 {
				b.ReportMetric(rate/ceiling, "x-read")
			}
		})
	}
	b.Run("embedded", func(b *testing.B) {
		st, err := store.NewLocal(store.Config{DataDir: b.TempDir()}, store.LocalOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close(context.Background()) })
		bench(b, st)
	})
	b.Run("clickhouse", func(b *testing.B) {
		addr := clickhousetest.Require(b)
		db := clickhousetest.NewDatabase(b, addr)
		cfg := store.Config{DataDir: b.TempDir(), ClickHouse: &store.ClickHouseConfig{Addr: []string{addr}, Database: db}}
		st, err := store.NewClickHouse(cfg, store.ClickHouseOptions{Registerer: prometheus.NewRegistry()})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		if err := st.Migrate(ctx); err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = st.Run(ctx)
		}()
		b.Cleanup(func() {
			cancel()
			<-done
			st.Close(context.Background())
		})
		bench(b, st)
	})
}

// parsed returns the events of the file at path, each with strings of its own: a
// batch's strings share the parser's buffers.
func parsed(b *testing.B, path string) []ingest.Event {
	b.Helper()
	var events []ingest.Event
	eachBatch(b, path, func(batch []ingest.Event) {
		for _, ev := range batch {
			events = append(events, ev.Clone())
		}
	})
	return events
}

// archive parses the file at path into st's archive, waits until it is readable, and
// returns how many events it holds.
func archive(b *testing.B, st store.Store, path string) int {
	b.Helper()
	ctx := context.Background()
	n := 0
	eachBatch(b, path, func(events []ingest.Event) {
		n += len(events)
		if err := st.ArchiveEvents(ctx, events); err != nil {
			b.Fatal(err)
		}
	})
	if err := st.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	if err := st.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkSweep is what a sweep of four values costs against four separate replays of
// the same file, measured in the same run (separate first, then sweep, whose
// x-separate metric is its time over separate's): the sweep reads and parses the input
// once for its five engines (the config's and one per value).
//
//	go test ./replay -run '^$' -bench 'Sweep' -benchmem -count 6
func BenchmarkSweep(b *testing.B) {
	path := writeSample(b, benchTraffic, ingest.FormatAWSWAF)
	sw, err := replay.ParseSweep("detectors.forbidden_burst.threshold=10,20,50,100")
	if err != nil {
		b.Fatal(err)
	}
	variants, err := sw.Variants(demoDetectors())
	if err != nil {
		b.Fatal(err)
	}
	var separate time.Duration // per op, in this run
	b.Run("separate-4", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, v := range variants {
				run(b, path, ingest.FormatAWSWAF, 0, replay.Options{Detectors: v.Detectors})
			}
		}
		separate = b.Elapsed() / time.Duration(b.N)
	})
	b.Run("sweep-4", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, sum := run(b, path, ingest.FormatAWSWAF, 0, replay.Options{Variants: variants})
			if len(sum.Results) != 1+len(variants) {
				b.Fatalf("%d results", len(sum.Results))
			}
		}
		if separate > 0 {
			b.ReportMetric(float64(b.Elapsed()/time.Duration(b.N))/float64(separate), "x-separate")
		}
	})
}
