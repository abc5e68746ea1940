package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatewatch/gatewatch/detectors"
	"github.com/gatewatch/gatewatch/ingest"
)

// TestPrepareReload: a changed threshold reaches a running task only when applied, and
// the tasks started later; a refused reload names each setting once and changes no task.
func TestPrepareReload(t *testing.T) {
	cfg := testDetectors()
	r, err := New(Config{InternalTopicPrefix: "gw", Partitions: 2}, Options{
		Kafka: ingest.KafkaConfig{Brokers: []string{"127.0.0.1:1"}, Group: "g",
			Topics: []ingest.TopicConfig{{Name: "raw", Format: ingest.FormatAWSWAF}}},
		ParserOptions: testParserOptions(t),
		DeadLetters:   noDeadLetters{t},
		Detectors:     cfg,
		Sink:          newAlertSet(),
		Registerer:    prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	before, done, err := r.newTask(Client, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer done()

	refused := cfg
	refused.ForbiddenBurst.Threshold = 5
	refused.ForbiddenBurst.Window = 2 * time.Minute
	refused.AllowedLateness = time.Minute
	_, err = r.PrepareReload(refused)
	if err == nil {
		t.Fatal("PrepareReload accepted a changed window")
	}
	for _, p := range []string{"forbidden_burst.window", "allowed_lateness"} {
		if n := strings.Count(err.Error(), p+": takes effect only after a restart"); n != 1 {
			t.Errorf("refusal names %s %d times, want once:\n%v", p, n, err)
		}
	}

	lowered := cfg
	lowered.ForbiddenBurst.Threshold = 5
	apply, err := r.PrepareReload(lowered)
	if err != nil {
		t.Fatal(err)
	}
	if n := fires(t, before); n != 0 {
		t.Fatalf("prepared but not applied: %d alerts, want none", n)
	}
	apply()
	after, done2, err := r.newTask(Client, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer done2()
	for name, e := range map[string]*detectors.Engine{"running task": before, "task started later": after} {
		if n := fires(t, e); n == 0 {
			t.Errorf("%s: 6 403s raised nothing under threshold 5", name)
		}
	}
}

// fires runs a burst of six 403s through e, in the window after any earlier call's,
// and returns how many alerts it raised.
func fires(t *testing.T, e *detectors.Engine) int {
	t.Helper()
	start := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	if wm := e.Watermark(); !wm.IsZero() {
		start = wm.Add(2 * time.Minute)
	}
	var events []ingest.Event
	for i := range 6 {
		events = append(events, ingest.Event{Time: start.Add(time.Duration(i) * time.Second), ClientKey: "k",
			ClientIP: "198.51.100.7", Status: 403, Path: fmt.Sprintf("/x/%d", i)})
	}
	// One later event closes the burst's window.
	events = append(events, ingest.Event{Time: start.Add(10 * time.Minute), ClientKey: "other", ClientIP: "192.0.2.1", Status: 200})
	return len(e.Observe(events))
}
