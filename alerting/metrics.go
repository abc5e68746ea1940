package alerting

import (
	"context"
	"time"

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
	attempt   *prometheus.HistogramVec
}

// receiverMetrics are one receiver's series, resolved once.
type receiverMetrics struct {
	sent, retried, failed, dupes, reminders prometheus.Counter
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
		attempt:   m.attempt.WithLabelValues(name),
	}
}

// statsTimeout bounds the outbox read behind one scrape.
const statsTimeout = 5 * time.Second

// outboxCollector reports where each receiver's queue stands, read from the outbox
// at scrape time (OutboxStore.Stats), so the figures are the outbox's own and survive
// restarts. Its metrics describe state kept in a file, not events counted in this
// process, which is why it is a Collector and not promauto's counters and gauges.
type outboxCollector struct {
	store     OutboxStore
	receivers []string // configured: their series exist, at zero, from the start
	now       func() time.Time
	depth     *prometheus.Desc
	oldest    *prometheus.Desc
	parked    *prometheus.Desc
}

func newOutboxCollector(store OutboxStore, receivers []string, now func() time.Time) *outboxCollector {
	return &outboxCollector{
		store: store, receivers: receivers, now: now,
		depth: prometheus.NewDesc("gatewatch_alerting_outbox_depth",
			"Deliveries waiting in the outbox, per receiver.", []string{"receiver"}, nil),
		oldest: prometheus.NewDesc("gatewatch_alerting_outbox_oldest_pending_age_seconds",
			"How long the oldest delivery waiting for the receiver has waited (0: none waits).", []string{"receiver"}, nil),
		parked: prometheus.NewDesc("gatewatch_alerting_outbox_parked_deliveries",
			"Deliveries parked as failed in the outbox, waiting for an operator: gatewatch notify --requeue.", []string{"receiver"}, nil),
	}
}

func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.depth
	ch <- c.oldest
	ch <- c.parked
}

// Collect reports every configured receiver, and any other the outbox holds
// deliveries for. When the outbox cannot be read it reports nothing: the series
// vanish rather than fail the whole scrape, and Run fails on the same error.
func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	stats, err := c.store.Stats(ctx)
	if err != nil {
		return
	}
	if stats == nil {
		stats = map[string]QueueStats{}
	}
	for _, n := range c.receivers {
		if _, ok := stats[n]; !ok {
			stats[n] = QueueStats{}
		}
	}
	now := c.now()
	for n, st := range stats {
		age := 0.0
		if st.Pending > 0 && !st.OldestPending.IsZero() {
			age = max(now.Sub(st.OldestPending).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(st.Pending), n)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age, n)
		ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, float64(st.Parked), n)
	}
}
