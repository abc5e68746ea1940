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

func TestMergeByTime(t *testing.T) {
	a, b := Partition{Source: "t", ID: 0}, Partition{Source: "t", ID: 1}
	at := func(s ...int) []Event {
		var out []Event
		for _, v := range s {
			out = append(out, Event{Time: time.Unix(int64(v), 0), Status: v})
		}
		return out
	}
	for _, c := range []struct {
		name     string
		a, b     []int
		want     string
		wantRuns string
	}{
		// a's 3 is taken at 2, the earliest of a's records from there on: a partition's
		// records out of order stay so, and take no later turn than their earliest.
		{"out of order", []int{1, 3, 2, 9}, []int{2, 4, 5}, "[1 3 2 2 4 5 9]", "[{t/0 3} {t/1 3} {t/0 1}]"},
		// a clock glitch (a's 900) goes in its place, and a's records after it do not
		// wait behind it for b's.
		{"glitch", []int{1, 900, 3, 5}, []int{2, 4, 6}, "[1 2 900 3 4 5 6]", "[{t/0 1} {t/1 1} {t/0 2} {t/1 1} {t/0 1} {t/1 1}]"},
		{"glitch first", []int{900, 3, 5}, []int{2, 4, 6}, "[2 900 3 4 5 6]", "[{t/1 1} {t/0 2} {t/1 1} {t/0 1} {t/1 1}]"},
		// after a quiet spell a's records are ordered by their own times.
		{"gap", []int{1, 10, 11}, []int{2, 4, 6}, "[1 2 4 6 10 11]", "[{t/0 1} {t/1 3} {t/0 2}]"},
		{"last ahead", []int{1, 900}, []int{2, 4}, "[1 2 4 900]", "[{t/0 1} {t/1 2} {t/0 1}]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			events := append(at(c.a...), at(c.b...)...)
			got, runs := MergeByTime(events, []Run{{a, len(c.a)}, {b, len(c.b)}}, nil)
			var order []int
			for _, ev := range got {
				order = append(order, ev.Status)
			}
			if fmt.Sprint(order) != c.want {
				t.Errorf("merged %v, want %v", order, c.want)
			}
			if fmt.Sprint(runs) != c.wantRuns {
				t.Errorf("runs %v, want %s", runs, c.wantRuns)
			}
			// Each partition keeps its own order.
			var pa []int
			i := 0
			for _, r := range runs {
				for _, ev := range got[i : i+r.N] {
					if r.Partition == a {
						pa = append(pa, ev.Status)
					}
				}
				i += r.N
			}
			if fmt.Sprint(pa) != fmt.Sprint(c.a) {
				t.Errorf("partition a's order %v, want %v", pa, c.a)
			}
		})
	}
}
