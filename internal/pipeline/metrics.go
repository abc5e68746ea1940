package pipeline

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	batches      prometheus.Counter
	archiveWaits prometheus.Counter
	ackQueue     prometheus.Gauge
	reloads      *prometheus.CounterVec
	configOK     prometheus.Gauge
	configTime   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, version, commit string) *metrics {
	f := promauto.With(reg)
	f.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gatewatch_build_info",
		Help: "Always 1; the labels say which gatewatch runs.",
	}, []string{"version", "commit", "goversion"}).WithLabelValues(version, commit, runtime.Version()).Set(1)
	m := &metrics{
		batches: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_pipeline_batches_total",
			Help: "Batches of events handed to the detector engine.",
		}),
		archiveWaits: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_pipeline_archive_waits_total",
			Help: "Times ingest waited because the archive buffer was full (the database and its spill behind).",
		}),
		ackQueue: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_pipeline_commits_waiting",
			Help: "Acknowledged batches waiting for the archive to be durable before their offsets are committed.",
		}),
		reloads: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_config_reloads_total",
			Help: "Config reloads (SIGHUP or a change of the file), by result: success or failure.",
		}, []string{"result"}),
		configOK: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_config_last_reload_successful",
			Help: "1 when the last config reload succeeded (or none was tried), 0 when the file in place was refused and the previous config still runs.",
		}),
		configTime: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_config_last_reload_success_timestamp_seconds",
			Help: "When the config in force was loaded, Unix seconds.",
		}),
	}
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	m.configOK.Set(1)
	return m
}
