package detectors

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	events    prometheus.Counter
	late      prometheus.Counter
	watermark prometheus.Gauge
	alerts    *prometheus.CounterVec
	evictions *prometheus.CounterVec
	expired   *prometheus.CounterVec
	keys      *prometheus.GaugeVec
}

// newMetrics registers the engine's metrics with reg; a nil reg registers nothing.
func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		events: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_detectors_events_total",
			Help: "Events observed by the detector engine.",
		}),
		late: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_detectors_late_events_total",
			Help: "Events older than the watermark when they arrived: they update baselines but no window.",
		}),
		watermark: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_detectors_watermark_seconds",
			Help: "Event-time watermark (largest event time seen minus allowed_lateness), Unix seconds.",
		}),
		alerts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_detectors_alerts_total",
			Help: "Alerts emitted, new incidents and updates, per detector.",
		}, []string{"detector"}),
		evictions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_detectors_evictions_total",
			Help: "Keys evicted because a detector reached max_keys, per detector.",
		}, []string{"detector"}),
		expired: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_detectors_expired_keys_total",
			Help: "Idle keys dropped once no open window needed them, per detector.",
		}, []string{"detector"}),
		keys: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatewatch_detectors_tracked_keys",
			Help: "Keys a detector currently tracks.",
		}, []string{"detector"}),
	}
	for _, d := range Names {
		m.alerts.WithLabelValues(d)
		m.evictions.WithLabelValues(d)
		m.expired.WithLabelValues(d)
		m.keys.WithLabelValues(d)
	}
	return m
}
