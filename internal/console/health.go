package console

import (
	"cmp"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatewatch/gatewatch/detectors"
)

// metricSet is one gathering of the registry, by family name.
type metricSet map[string]*dto.MetricFamily

func gather(g prometheus.Gatherer) metricSet {
	mfs, _ := g.Gather() // what gathered is shown; a failing collector leaves a gap
	out := make(metricSet, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// sum adds the series of name whose label has value (any, when label is empty); -1
// when the family is missing.
func (ms metricSet) sum(name, lbl, val string) float64 {
	mf, ok := ms[name]
	if !ok {
		return -1
	}
	total := 0.0
	for _, m := range mf.GetMetric() {
		if lbl == "" || label(m, lbl) == val {
			total += value(m)
		}
	}
	return total
}

// byLabel returns the series of name by the value of lbl, sorted.
func (ms metricSet) byLabel(name string, lbls ...string) []series {
	mf, ok := ms[name]
	if !ok {
		return nil
	}
	var out []series
	for _, m := range mf.GetMetric() {
		s := series{Value: value(m)}
		for _, l := range lbls {
			s.Labels = append(s.Labels, label(m, l))
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b series) int {
		return cmp.Compare(strings.Join(a.Labels, "\x00"), strings.Join(b.Labels, "\x00"))
	})
	return out
}

type series struct {
	Labels []string
	Value  float64
}

type detectorHealth struct {
	Name                               string
	Tracked, Evicted, Expired, Alerted float64
}

type partitionHealth struct {
	Partition string
	EventTime time.Time
	Behind    time.Duration // of the clock
}

type lagRow struct {
	Topic, Partition string
	Lag              float64
}

type healthData struct {
	Detectors     []detectorHealth
	Events        float64
	Late, Ahead   float64
	DeadLetters   float64
	Watermark     time.Time
	WatermarkLag  time.Duration
	Idle, Behind  float64
	Partitions    []partitionHealth
	Lag           []lagRow
	TotalLag      float64
	MetricsAbsent bool
}

func unix(v float64) time.Time {
	if v <= 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(v*1e9)).UTC()
}

func (s *Server) health(w http.ResponseWriter, r *http.Request, p principal) {
	m := gather(s.o.Metrics)
	now := s.o.Now()
	d := healthData{
		Events:      m.sum("gatewatch_detectors_events_total", "", ""),
		Late:        m.sum("gatewatch_detectors_late_events_total", "", ""),
		Ahead:       m.sum("gatewatch_detectors_ahead_events_total", "", ""),
		DeadLetters: m.sum("gatewatch_ingest_dead_letters_total", "", ""),
		Idle:        m.sum("gatewatch_detectors_idle_partitions", "", ""),
		Behind:      m.sum("gatewatch_detectors_partitions_behind", "", ""),
		TotalLag:    m.sum("gatewatch_ingest_consumer_lag_records", "", ""),
	}
	d.MetricsAbsent = d.Events < 0
	if wm := unix(m.sum("gatewatch_detectors_watermark_seconds", "", "")); !wm.IsZero() {
		d.Watermark, d.WatermarkLag = wm, now.Sub(wm)
	}
	names := slices.Clone(detectors.Names)
	for _, sr := range m.byLabel("gatewatch_detectors_tracked_keys", "detector") {
		if !slices.Contains(names, sr.Labels[0]) {
			names = append(names, sr.Labels[0])
		}
	}
	for _, n := range names {
		d.Detectors = append(d.Detectors, detectorHealth{Name: n,
			Tracked: m.sum("gatewatch_detectors_tracked_keys", "detector", n),
			Evicted: m.sum("gatewatch_detectors_evictions_total", "detector", n),
			Expired: m.sum("gatewatch_detectors_expired_keys_total", "detector", n),
			Alerted: m.sum("gatewatch_detectors_alerts_total", "detector", n)})
	}
	for _, sr := range m.byLabel("gatewatch_detectors_partition_event_time_seconds", "partition") {
		t := unix(sr.Value)
		d.Partitions = append(d.Partitions, partitionHealth{Partition: sr.Labels[0], EventTime: t, Behind: now.Sub(t)})
	}
	for _, sr := range m.byLabel("gatewatch_ingest_consumer_lag_records", "topic", "partition") {
		d.Lag = append(d.Lag, lagRow{Topic: sr.Labels[0], Partition: sr.Labels[1], Lag: sr.Value})
	}
	s.render(w, r, "health", http.StatusOK, page{Title: "Detector health", Nav: "health", Who: p.who, CSRF: p.csrf, Data: &d})
}
