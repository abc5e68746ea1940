package cluster

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are the hop's own: what stage one wrote and what the tasks read.
type metrics struct {
	produced      prometheus.Counter
	producedBytes prometheus.Counter
	writeRetries  prometheus.Counter
	position      *prometheus.GaugeVec
	lag           *prometheus.GaugeVec
	duplicates    *prometheus.CounterVec
	forced        *prometheus.CounterVec
	tasks         prometheus.Gauge
	purged        *prometheus.CounterVec
	purgeFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		produced: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_cluster_records_written_total",
			Help: "Records stage one wrote to the internal topics: events and marks.",
		}),
		producedBytes: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_cluster_written_bytes_total",
			Help: "Bytes of the values stage one wrote to the internal topics, before compression.",
		}),
		writeRetries: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_cluster_write_retries_total",
			Help: "Writes to the internal topics that failed and were tried again.",
		}),
		position: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatewatch_cluster_task_offset",
			Help: "Per task of this replica, the offset of its internal partition up to which its engine has seen every record it could (the end offset minus it is the task's lag).",
		}, []string{"topic", "partition"}),
		lag: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gatewatch_cluster_task_lag_records",
			Help: "Per task of this replica, the records of its internal partition it has yet to read: the partition's end offset at the task's last fetch minus the task's read offset.",
		}, []string{"topic", "partition"}),
		duplicates: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_cluster_task_duplicates_total",
			Help: "Internal records dropped as written twice by stage one (a crash or a rebalance), per internal topic.",
		}, []string{"topic"}),
		forced: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_cluster_task_unordered_total",
			Help: "Items a task handed to its engine before a slower source partition caught up, because it held too many: their order, and so the alerts, may depend on timing.",
		}, []string{"topic"}),
		tasks: f.NewGauge(prometheus.GaugeOpts{
			Name: "gatewatch_cluster_tasks",
			Help: "Tasks (internal partitions, each with its own engine) running on this replica.",
		}),
		purged: f.NewCounterVec(prometheus.CounterOpts{
			Name: "gatewatch_cluster_purged_records_total",
			Help: "Records this replica deleted from the internal topics below its tasks' commits, per internal topic: the rise of each partition's first offset.",
		}, []string{"topic"}),
		purgeFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "gatewatch_cluster_purge_failures_total",
			Help: "Purges of the internal topics below the tasks' commits (one every 30s while tasks commit) that failed in whole or in part; tried again the next time.",
		}),
	}
}

// taskRegisterer registers a task's engine metrics with a task label and unregisters
// them when the task ends, so that a task rebuilt after a rebalance can register again.
type taskRegisterer struct {
	reg prometheus.Registerer
	mu  sync.Mutex
	cs  []prometheus.Collector
}

func (r *taskRegisterer) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.cs = append(r.cs, c)
	r.mu.Unlock()
	return nil
}

func (r *taskRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err) // as prometheus.Registry.MustRegister: a metric defined twice
		}
	}
}

func (r *taskRegisterer) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

// unregisterAll removes every collector registered through r.
func (r *taskRegisterer) unregisterAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.cs {
		r.reg.Unregister(c)
	}
	r.cs = nil
}
