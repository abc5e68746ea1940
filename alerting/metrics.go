package alerting

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Outcomes of routing an alert, the values of the result label.
const (
	resultRouted   = "routed"   // reached at least one receiver's queue, or was already there
	resultSilenced = "silenced" // muted by a silence in force
	resultUnrouted = "unrouted" // no route matched
)

type metrics struct {
	// routed, silenced and unrouted are the series of alerts, resolved once.
	routed, silenced, unrouted prometheus.Counter

	alerts    *prometheus.CounterVec
	sent      *prometheus.CounterVec
	retried   *prometheus.CounterVec
	failed    *prometheus.CounterVec
	dupes     *prometheus.CounterVec
	reminders *prometheus.CounterVec
	depth     *prometheus.GaugeVec
	attempt   *prometheus.HistogramVec
}

// receiverMetrics are one receiver's series, resolved once.
type receiverMetrics struct {
	sent, retried, failed, dupes, reminders prometheus.Counter
	depth                                   prometheus.Gauge
	attempt                                 prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		alerts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_alerting_alerts_total",
			Help: "Alerts put into the router, by outcome: routed, silenced, unrouted.",
		}, []string{"result"}),
		sent: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_alerting_deliveries_sent_total",
			Help: "Alert deliveries a receiver accepted.",
		}, []string{"receiver"}),
		retried: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_alerting_deliveries_retried_total",
			Help: "Failed delivery attempts that will be tried again after a backoff.",
		}, []string{"receiver"}),
		failed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_alerting_deliveries_failed_total",
			Help: "Deliveries parked as failed (a final error, or failing for give_up_after); they stay in the outbox for an operator.",
		}, []string{"receiver"}),
		dupes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_alerting_deliveries_duplicate_total",
			Help: "Alert versions put again for a receiver that already had them, and not queued again.",
		}, []string{"receiver"}),
		reminders: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_alerting_reminders_total",
			Help: "Reminders queued for incidents still open and unchanged after repeat_interval.",
		}, []string{"receiver"}),
		depth: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatewatch_alerting_outbox_depth",
			Help: "Deliveries waiting in the outbox, per receiver.",
		}, []string{"receiver"}),
		attempt: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "gatewatch_alerting_attempt_duration_seconds",
			Help:    "Time of one delivery attempt (one Notify call), successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}, []string{"receiver"}),
	}
	m.routed = m.alerts.WithLabelValues(resultRouted)
	m.silenced = m.alerts.WithLabelValues(resultSilenced)
	m.unrouted = m.alerts.WithLabelValues(resultUnrouted)
	return m
}

// forReceiver resolves (and so creates at zero) the series of receiver.
func (m *metrics) forReceiver(name string) receiverMetrics {
	return receiverMetrics{
		sent:      m.sent.WithLabelValues(name),
		retried:   m.retried.WithLabelValues(name),
		failed:    m.failed.WithLabelValues(name),
		dupes:     m.dupes.WithLabelValues(name),
		reminders: m.reminders.WithLabelValues(name),
		depth:     m.depth.WithLabelValues(name),
		attempt:   m.attempt.WithLabelValues(name),
	}
}
