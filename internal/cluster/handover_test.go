package cluster

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/internal/promtest"
)

// TestHandoverBeforeTheNextOwner: a replica that gives tasks up, to a replica that
// joins and then by leaving, has handed them over (Options.Handover returned: the
// pipeline delivers their alerts there) before any of them starts on the other
// replica. Two replicas delivering an incident's versions at once would post it to
// Slack twice. The handover here takes a second, which the other replica must wait.
func TestHandoverBeforeTheNextOwner(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two replicas against a broker")
	}
	const name = "handover"
	c := startKafka(t, []string{name})
	cfg := Config{InternalTopicPrefix: "gwi-" + name, Partitions: internalPartitions()}
	stores := sharedStores()
	type event struct {
		handing bool // the first replica is handing its tasks over
		done    int  // handovers it finished
	}
	events := make(chan event, 1)
	events <- event{}
	first := func(ctx context.Context) error {
		e := <-events
		e.handing = true
		events <- e
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			t.Errorf("handover cut short: %v", ctx.Err())
		}
		e = <-events
		e.handing = false
		e.done++
		events <- e
		return nil
	}
	// seen are the handovers the first replica had finished when the second started
	// each of its tasks.
	seen := make(chan int, 4*int(numKinds)*internalPartitions())
	start := func(id string, handover func(context.Context) error) (*prometheus.Registry, func() error) {
		reg := prometheus.NewRegistry()
		o := stores.options(t, c, "gw-"+name, "waf-"+name, newAlertSet(), reg, name+" replica "+id)
		o.Handover = handover
		r, err := New(cfg, o)
		if err != nil {
			t.Fatal(err)
		}
		if handover == nil {
			r.s2.wrapTask = func(_ Kind, src detectors.EventSource) detectors.EventSource {
				e := <-events
				events <- e
				if e.handing {
					t.Error("a task started on the second replica while the first was handing its tasks over")
				}
				seen <- e.done
				return src
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- errors.Join(r.Run(ctx), r.Close()) }()
		stop := sync.OnceValue(func() error {
			cancel()
			return <-done
		})
		t.Cleanup(func() { _ = stop() })
		return reg, stop
	}
	tasks := func(reg *prometheus.Registry) float64 { return promtest.Sum(t, "gatewatch_cluster_tasks", reg) }
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("not after 2 minutes: %s", what)
			}
		}
	}
	all := float64(int(numKinds) * internalPartitions())
	regA, stopA := start("A", first)
	waitFor("the first replica runs every task", func() bool { return tasks(regA) == all })
	regB, stopB := start("B", nil)
	waitFor("the tasks are shared", func() bool { return tasks(regA) > 0 && tasks(regB) > 0 && tasks(regA)+tasks(regB) == all })
	if err := stopA(); err != nil {
		t.Errorf("first replica: %v", err)
	}
	waitFor("the second replica runs every task", func() bool { return tasks(regB) == all })
	if err := stopB(); err != nil {
		t.Errorf("second replica: %v", err)
	}
	close(seen)
	counts := map[int]int{}
	for n := range seen {
		counts[n]++
	}
	// The second replica starts tasks twice: after the first one handed over to let it
	// join, and after it handed over to leave.
	if counts[0] != 0 || counts[1] == 0 || counts[2] == 0 {
		t.Errorf("the second replica's task starts by the handovers finished before them: %v, want none before the first, some after each of two", counts)
	}
}
