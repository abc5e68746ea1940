package ingest

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the counters every source keeps. A source makes its own from the
// Registerer its options require (NewMetrics).
type Metrics struct {
	Records     *prometheus.CounterVec // by source and format: records read, accepted or not
	Events      *prometheus.CounterVec // by source and format: records that became events
	DeadLetters *prometheus.CounterVec // by source and reason
	ConsumerLag *prometheus.GaugeVec   // by topic and partition: records behind the partition's end
}

// NewMetrics registers the ingest metrics with reg, through promauto as every part
// does: registering them twice on one registry panics, so two sources in one process
// need registries of their own, or registerers wrapped with labels that tell them
// apart (prometheus.WrapRegistererWith). reg must not be nil: the sources refuse
// options without one.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		Records: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_ingest_records_total",
			Help: "Raw records read, per source (topic or file) and its format.",
		}, []string{"source", "format"}),
		Events: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_ingest_events_total",
			Help: "Records parsed into events, per source and its format.",
		}, []string{"source", "format"}),
		DeadLetters: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_ingest_dead_letters_total",
			Help: "Records rejected and sent to the dead-letter sink, per source and reason.",
		}, []string{"source", "reason"}),
		ConsumerLag: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatewatch_ingest_consumer_lag_records",
			Help: "Records between the last one taken into a batch and the end of the partition, per topic and partition this member reads.",
		}, []string{"topic", "partition"}),
	}
}

// Init pre-creates the series of one source, read in format, so they start at zero.
func (m *Metrics) Init(source, format string) {
	m.Records.WithLabelValues(source, format)
	m.Events.WithLabelValues(source, format)
	for _, r := range Reasons {
		m.DeadLetters.WithLabelValues(source, r)
	}
}
