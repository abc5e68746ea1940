package detectors

import (
	"math"
	"time"

	"github.com/gatewatch/gatewatch/ingest"
)

// applyMarks moves each mark's partition stream up to the mark's time, as an event at
// that time would, without entering any window. Scale-out relays a source partition's
// stream time this way to a task that got none of its recent events, so that the
// partition does not hold the task's watermark back, and an event the first stage
// judged late is judged late here too. A record the partition holds (far ahead of its
// stream) is decided by the mark as by a next record. It returns the largest time a
// held record entered windows with, math.MinInt64 if none did.
func (e *Engine) applyMarks(marks []ingest.Mark, now time.Time, st *observeStats) int64 {
	maxT := int64(math.MinInt64)
	for _, m := range marks {
		pw := e.wms.part(m.Partition)
		e.wms.arrived(pw, now)
		t := m.Time.UnixMilli()
		if pw.held != nil {
			maxT = max(maxT, e.resolveHeld(pw, t, true, false, now, st))
		}
		e.wms.take(pw, t, now)
	}
	return maxT
}
