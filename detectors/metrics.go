package detectors

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	events    prometheus.Counter
	late      prometheus.Counter
	lateLag   prometheus.Histogram
	ahead     prometheus.Counter
	watermark prometheus.Gauge
	idle      prometheus.Gauge
	behind    prometheus.Gauge
	alerts    *prometheus.CounterVec
	partTime  *prometheus.GaugeVec
	evictions *prometheus.CounterVec
	expired   *prometheus.CounterVec
	// droppedSamples: evidence samples an arena had no room for (maxArenaBytes).
	droppedSamples *prometheus.CounterVec
	keys           *prometheus.GaugeVec
}

// newMetrics registers the engine's metrics with reg, through promauto as every part
// does: registering them twice on one registry panics, so engines sharing a process
// need registries of their own, or registerers wrapped with labels that tell them
// apart (prometheus.WrapRegistererWith). reg must not be nil (NewEngine refuses it).
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
		lateLag: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "gatewatch_detectors_late_lag_seconds",
			Help:    "How far each late event came behind the newest event time of its partition (or behind the time the engine's watermark stood for, when that was further): an allowed_lateness above it would have taken the event.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 24 * 3600},
		}),
		ahead: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_detectors_ahead_events_total",
			Help: "Events more than max_ahead ahead of their partition's stream: judged at the stream's time, they do not move the watermark.",
		}),
		watermark: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_detectors_watermark_seconds",
			Help: "Event-time watermark (the smallest of the partitions' largest event time minus allowed_lateness), Unix seconds.",
		}),
		behind: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_detectors_partitions_behind",
			Help: "Partitions more than max_skew behind the leading one: the watermark goes on without them, and a record they deliver behind it is late.",
		}),
		idle: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_detectors_idle_partitions",
			Help: "Partitions that delivered nothing for idle_timeout and no longer hold back the watermark.",
		}),
		alerts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_detectors_alerts_total",
			Help: "Alerts emitted, new incidents and updates, per detector and severity.",
		}, []string{"detector", "severity"}),
		partTime: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatewatch_detectors_partition_event_time_seconds",
			Help: "Largest event time read from each partition the engine reads (topic/partition), Unix seconds: time() minus it is how far behind the partition's stream is.",
		}, []string{"partition"}),
		evictions: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_detectors_evictions_total",
			Help: "Keys evicted because a detector reached max_keys, per detector.",
		}, []string{"detector"}),
		expired: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_detectors_expired_keys_total",
			Help: "Idle keys dropped once no open window needed them, per detector.",
		}, []string{"detector"}),
		droppedSamples: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_detectors_dropped_samples_total",
			Help: "Evidence samples (paths, client IPs) a detector did not keep because its samples reached their memory bound, per detector.",
		}, []string{"detector"}),
		keys: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatewatch_detectors_tracked_keys",
			Help: "Keys a detector currently tracks.",
		}, []string{"detector"}),
	}
	for _, d := range Names {
		for _, sev := range severities {
			m.alerts.WithLabelValues(d, string(sev))
		}
		m.evictions.WithLabelValues(d)
		m.expired.WithLabelValues(d)
		m.droppedSamples.WithLabelValues(d)
		m.keys.WithLabelValues(d)
	}
	return m
}
