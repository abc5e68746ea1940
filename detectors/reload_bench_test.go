package detectors

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/ingest"
)

// BenchmarkReload measures a reload of an engine that holds the benchmark mix's state
// (every detector warm): PrepareReload, which builds and checks the new config off the
// engine's goroutine, and Apply, which takes the engine between two batches (the lock
// Run holds per batch) and brings every tracked key under the new overrides and
// allowlists. ns/op is both; apply-µs is Apply alone, how long detection stalls.
// Reloads alternate forbidden_burst's threshold.
//
//	go test ./detectors -run '^$' -bench Reload -count 3
func BenchmarkReload(b *testing.B) {
	m := newBenchMix(false)
	cfg := DefaultConfig()
	e, err := NewEngine(cfg, Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	batch := make([]ingest.Event, 256)
	for range benchWarmup / len(batch) {
		m.fill(batch)
		e.Observe(batch)
	}
	other := cfg
	other.ForbiddenBurst.Threshold++
	var apply time.Duration
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		next := cfg
		if i%2 == 0 {
			next = other
		}
		r, err := e.PrepareReload(next)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		r.Apply()
		apply += time.Since(start)
	}
	b.ReportMetric(float64(apply.Microseconds())/float64(b.N), "apply-µs")
	keys := 0
	for _, d := range e.dets {
		n, _, _ := d.stats()
		keys += n
	}
	b.ReportMetric(float64(keys), "keys")
}
