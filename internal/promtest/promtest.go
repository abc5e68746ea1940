// Package promtest reads metric values out of a registry in tests, where
// prometheus/testutil needs the collector itself: a part's metrics are made inside its
// constructor from the Registerer its options carry, so a test holds only the registry.
package promtest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value returns the value of the counter or gauge series of name whose labels include
// every name/value pair of labels ("receiver", "siem", ...). It fails the test when g
// cannot be gathered or has no such series.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	for _, m := range series(t, g, name) {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if match {
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no series %s%q", name, labels)
	return 0
}

// Sum returns the sum of every counter and gauge series of name in each of gs: a count
// spread over label values, or over several registries (one per replica). It is 0 when
// there is no such series.
func Sum(t testing.TB, name string, gs ...prometheus.Gatherer) float64 {
	t.Helper()
	sum := 0.0
	for _, g := range gs {
		for _, m := range series(t, g, name) {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// series gathers g and returns the series of name.
func series(t testing.TB, g prometheus.Gatherer, name string) []*dto.Metric {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}
