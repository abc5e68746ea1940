package cluster

import (
	"context"

	"github.com/gatewatch/gatewatch/detectors"
)

// Steps of the hop between two durable writes, where a crash leaves work done but not
// committed: the end-to-end tests kill a replica at each (Failpoint).
const (
	// StepWritten: stage one wrote a batch's records to the internal topics, and has
	// not committed the batch's raw offsets. Read again after a crash, the batch is
	// written again; the tasks drop the copies.
	StepWritten = "stage1-written"
	// StepAlerted: a task put alerts into the sink (the outbox has them), and has not
	// committed its partition. Rebuilt after a crash, the task raises them again under
	// the same ids; the receivers deliver each version once.
	StepAlerted = "task-alerted"
)

// Failpoint, when set, is called at each step of the hop (the Step constants): the
// tests of the gatewatch binary set it, in the process under test, to kill that
// process there, as kill -9 would. Nil in production; set it before New.
var Failpoint func(step string)

// failpointSink calls Failpoint with StepAlerted after each Put of alerts it passes on.
type failpointSink struct{ detectors.AlertSink }

func (s failpointSink) Put(ctx context.Context, alerts []detectors.Alert) error {
	err := s.AlertSink.Put(ctx, alerts)
	if err == nil && len(alerts) > 0 {
		Failpoint(StepAlerted)
	}
	return err
}
