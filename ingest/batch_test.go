package ingest

import (
	"fmt"
	"testing"
	"time"
)

func TestBatchFilterKeepsRunsInStep(t *testing.T) {
	a, b := Partition{Source: "t", ID: 0}, Partition{Source: "t", ID: 1}
	evs := func(codes ...int) []Event {
		var out []Event
		for _, c := range codes {
			out = append(out, Event{Status: c, Time: time.Unix(int64(c), 0)})
		}
		return out
	}
	for _, c := range []struct {
		name     string
		events   []Event
		runs     []Run
		dropped  int
		wantRuns string
	}{
		{"no runs", evs(200, 404, 200), nil, 1, "[{/0 2}]"},
		{"runs", evs(200, 404, 404, 200, 404), []Run{{a, 3}, {b, 2}}, 3, "[{t/0 1} {t/1 1}]"},
		{"a run emptied", evs(404, 404, 200), []Run{{a, 2}, {b, 1}}, 2, "[{t/1 1}]"},
		{"everything", evs(404), []Run{{a, 1}}, 1, "[]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := &Batch{Events: c.events, Runs: c.runs}
			if got := b.Filter(func(ev *Event) bool { return ev.Status != 404 }); got != c.dropped {
				t.Errorf("dropped %d, want %d", got, c.dropped)
			}
			var runs []string
			b.Each(func(p Partition, events []Event) {
				for _, ev := range events {
					if ev.Status == 404 {
						t.Errorf("kept a 404 in %s", p)
					}
				}
				runs = append(runs, fmt.Sprintf("{%s %d}", p, len(events)))
			})
			if got := fmt.Sprint(runs); got != c.wantRuns && !(c.wantRuns == "[]" && len(runs) == 0) {
				t.Errorf("runs %s, want %s", got, c.wantRuns)
			}
		})
	}
}
