package store

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Outcomes of archived events, the values of the result label.
const (
	resultWritten   = "written"   // inserted into ClickHouse, or written into the embedded store
	resultSpilled   = "spilled"   // written to the spill directory to wait for ClickHouse
	resultDuplicate = "duplicate" // a replayed block ClickHouse already had, not sent again
	resultRejected  = "rejected"  // refused by ArchiveEvents: buffer full or closed
	resultLost      = "lost"      // neither written nor spilled (disk failure at shutdown, corrupt segment)
)

type archiveMetrics struct {
	events         *prometheus.CounterVec
	buffered       prometheus.Gauge
	spilled        prometheus.Gauge
	insertErrors   prometheus.Counter
	insertDuration prometheus.Histogram
}

// newArchiveMetrics registers the archive metrics with reg, through promauto as every
// part does. Both stores register them; the embedded store's spilled stays 0.
func newArchiveMetrics(reg prometheus.Registerer) *archiveMetrics {
	f := promauto.With(reg)
	m := &archiveMetrics{
		events: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_store_archive_events_total",
			Help: "Events handed to the archive, by outcome: written, spilled, duplicate, rejected, lost (the embedded store only writes or rejects).",
		}, []string{"result"}),
		buffered: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_store_archive_buffered_events",
			Help: "Events held in memory on their way to the archive, ClickHouse or the embedded store.",
		}),
		spilled: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_store_archive_spilled_events",
			Help: "Events waiting in the spill directory for ClickHouse to come back.",
		}),
		insertErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_store_archive_insert_errors_total",
			Help: "Archive inserts into ClickHouse, or writes into the embedded store, that failed.",
		}),
		insertDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "gatewatch_store_archive_insert_duration_seconds",
			Help:    "Time to insert one archive batch into ClickHouse, or to write one into the embedded store.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
	}
	for _, r := range []string{resultWritten, resultSpilled, resultDuplicate, resultRejected, resultLost} {
		m.events.WithLabelValues(r)
	}
	return m
}

// Outcomes of baseline updates, the values of the result label.
const (
	resultFailed = "failed" // neither written nor spilled: UpdateBaselines returned an error
)

type baselineMetrics struct {
	updates      *prometheus.CounterVec
	spilled      prometheus.Gauge
	writeErrors  prometheus.Counter
	loadDuration prometheus.Gauge
}

// newBaselineMetrics registers the ClickHouse baseline metrics with reg, through
// promauto as every part does (NewClickHouse requires reg).
func newBaselineMetrics(reg prometheus.Registerer) *baselineMetrics {
	f := promauto.With(reg)
	m := &baselineMetrics{
		updates: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_store_baseline_updates_total",
			Help: "Baseline updates (UpdateBaselines calls) by outcome: written to ClickHouse, spilled to disk to be written later, failed.",
		}, []string{"result"}),
		spilled: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_store_baseline_spilled_updates",
			Help: "Baseline updates waiting in the spill directory for ClickHouse.",
		}),
		writeErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_store_baseline_write_errors_total",
			Help: "Baseline writes to ClickHouse that failed, first attempts and replays of spilled updates.",
		}),
		loadDuration: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_store_baseline_load_seconds",
			Help: "How long the last LoadBaselines took, spill replay included.",
		}),
	}
	for _, r := range []string{resultWritten, resultSpilled, resultFailed} {
		m.updates.WithLabelValues(r)
	}
	return m
}
