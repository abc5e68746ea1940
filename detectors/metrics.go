package detectors

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	events    prometheus.Counter
	late      prometheus.Counter
	ahead     prometheus.Counter
	watermark prometheus.Gauge
	idle      prometheus.Gauge
	behind    prometheus.Gauge
	alerts    *prometheus.CounterVec
	evictions *prometheus.CounterVec
	expired   *prometheus.CounterVec
	keys      *prometheus.GaugeVec
}

// newMetrics registers the engine's metrics with reg; a nil reg registers nothing. It
// returns an error, where promauto would panic, when reg already has them: engines
// sharing a process need registries of their own, or registerers wrapped with labels
// that tell them apart.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	f := &factory{}
	m := &metrics{
		events: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_detectors_events_total",
			Help: "Events observed by the detector engine.",
		}),
		late: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_detectors_late_events_total",
			Help: "Events older than the watermark when they arrived: they update baselines but no window.",
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
			Help: "Partitions more than max_skew behind the leading one: their records are late until they catch up.",
		}),
		idle: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_detectors_idle_partitions",
			Help: "Partitions that delivered nothing for idle_timeout and no longer hold back the watermark.",
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
	if reg != nil {
		var errs []error
		for _, c := range *f {
			if err := reg.Register(c); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("detectors: register metrics: %w", err)
		}
	}
	return m, nil
}

// factory makes metrics and remembers them for registration.
type factory []prometheus.Collector

func (f *factory) NewCounter(o prometheus.CounterOpts) prometheus.Counter {
	c := prometheus.NewCounter(o)
	*f = append(*f, c)
	return c
}

func (f *factory) NewGauge(o prometheus.GaugeOpts) prometheus.Gauge {
	g := prometheus.NewGauge(o)
	*f = append(*f, g)
	return g
}

func (f *factory) NewCounterVec(o prometheus.CounterOpts, labels []string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(o, labels)
	*f = append(*f, c)
	return c
}

func (f *factory) NewGaugeVec(o prometheus.GaugeOpts, labels []string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(o, labels)
	*f = append(*f, g)
	return g
}
