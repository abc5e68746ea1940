package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/gatewatch/gatewatch/ingest"
)

// sliceReader hands out an internal partition's records from a slice; past its end it
// answers as a reader whose wait ran out.
type sliceReader struct {
	msgs []kafkago.Message
	at   int
}

func (r *sliceReader) FetchMessage(ctx context.Context) (kafkago.Message, error) {
	if r.at == len(r.msgs) {
		return kafkago.Message{}, context.DeadlineExceeded
	}
	r.at++
	return r.msgs[r.at-1], nil
}

// testStage2 is a stage two for tasks fed by tests, whose clock stands at *clock.
func testStage2(clock *time.Time) *stage2 {
	return &stage2{
		batch: 7, wait: time.Millisecond, idle: time.Hour, timeout: time.Second,
		now: func() time.Time { return *clock },
		log: slog.New(slog.DiscardHandler), m: newMetrics(prometheus.NewPedanticRegistry()),
	}
}

// A step is what one batch of a task handed out, in a form to compare.
type step struct {
	Events []string // partition/source offset/time
	Marks  []string
	Opened []string
	Ended  []string
}

// drain runs t until it hands out nothing more, even after idle_timeout on its clock,
// and returns its steps and, per step, the snapshot a commit after it would carry.
func drain(t *testing.T, ts *taskSource, clock *time.Time) ([]step, []commit) {
	t.Helper()
	var steps []step
	var commits []commit
	waited := false
	for range 10_000 {
		b, err := ts.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Events) == 0 && len(b.Marks) == 0 && len(b.Opened) == 0 && len(b.Ended) == 0 {
			if waited {
				return steps, commits
			}
			*clock = clock.Add(ts.s.idle) // a partition that said nothing since is idle now
			waited = true
			continue
		}
		waited = false
		var st step
		i := 0
		for _, r := range b.Runs {
			for _, ev := range b.Events[i : i+r.N] {
				st.Events = append(st.Events, fmt.Sprintf("%s %s %d", r.Partition, ev.RequestID, ev.Time.UnixMilli()))
			}
			i += r.N
		}
		for _, m := range b.Marks {
			st.Marks = append(st.Marks, fmt.Sprintf("%s %d", m.Partition, m.Time.UnixMilli()))
		}
		for _, p := range b.Opened {
			st.Opened = append(st.Opened, p.String())
		}
		for _, p := range b.Ended {
			st.Ended = append(st.Ended, p.String())
		}
		steps = append(steps, st)
		next, meta := ts.snapshot()
		highs, err := decodeHighs(meta)
		if err != nil {
			t.Fatal(err)
		}
		commits = append(commits, commit{offset: next, highs: highs})
	}
	t.Fatal("the task never ran out of items")
	return nil, nil
}

// sourceRecords is what stage one writes for one source partition: n events, one a
// second with a few out of order (one of them late), and a marks record after every
// few; the partition ends idle.
func sourceRecords(p ingest.Partition, n int, rng *rand.Rand) [][]byte {
	var out [][]byte
	stream := int64(-1 << 63)
	for i := range n {
		ts := int64(1_700_000_000_000) + int64(i)*1000 + int64(rng.IntN(3))*1000 - 1000
		if i == n/2 {
			ts -= 120_000 // late: two minutes behind its stream
		}
		stream = max(stream, ts)
		ev := ingest.Event{Time: time.UnixMilli(ts).UTC(), ClientKey: "k", RequestID: fmt.Sprint(i)}
		out = append(out, appendEvent(nil, position{part: p, offset: int64(i)}, stream, ts < stream-30_000, fAll, &ev))
		if i%5 == 4 {
			out = append(out, appendMarks(nil, []mark{{pos: position{part: p, offset: int64(i)}, stream: stream}}))
		}
	}
	return append(out, appendMarks(nil, []mark{{pos: position{part: p, offset: int64(n - 1)}, stream: stream, flags: flagIdle}}))
}

// interleave merges the partitions' records in a random order that keeps each
// partition's own, and writes some of a partition's records twice (a stage-one member
// that crashed after writing and before committing: its successor writes them again).
func interleave(parts [][][]byte, rng *rand.Rand) []kafkago.Message {
	at := make([]int, len(parts))
	var out []kafkago.Message
	for {
		var open []int
		for i := range parts {
			if at[i] < len(parts[i]) {
				open = append(open, i)
			}
		}
		if len(open) == 0 {
			return out
		}
		i := open[rng.IntN(len(open))]
		out = append(out, kafkago.Message{Offset: int64(len(out)), Value: parts[i][at[i]]})
		at[i]++
		if rng.IntN(10) == 0 {
			at[i] = max(0, at[i]-1-rng.IntN(6)) // again from a few records back
		}
	}
}

// TestTaskSourceOrderDoesNotDependOnInterleaving: the same source partitions' records,
// written to the internal partition in different interleavings and with different
// records written twice, reach the engine as the very same batches; a task rebuilt from
// any of the commits it would make goes on exactly as the task it replaces.
func TestTaskSourceOrderDoesNotDependOnInterleaving(t *testing.T) {
	srcs := []ingest.Partition{{Source: "waf", ID: 0}, {Source: "waf", ID: 1}, {Source: "api", ID: 0}}
	var parts [][][]byte
	for i, p := range srcs {
		parts = append(parts, sourceRecords(p, 40+10*i, rand.New(rand.NewPCG(uint64(i), 9))))
	}
	run := func(msgs []kafkago.Message, c commit) ([]step, []commit, *taskSource) {
		clock := time.Unix(0, 0)
		ts := newTaskSource(testStage2(&clock), &kafkago.Generation{}, "gwi-client", 0, c, srcs)
		ts.r = &sliceReader{msgs: msgs[max(c.offset, 0):]}
		steps, commits := drain(t, ts, &clock)
		return steps, commits, ts
	}
	var want []step
	for seed := range uint64(8) {
		msgs := interleave(parts, rand.New(rand.NewPCG(seed, 1)))
		got, commits, ts := run(msgs, commit{offset: -1})
		if seed == 0 {
			want = got
			events := 0
			for _, st := range got {
				events += len(st.Events)
			}
			if events != 40+50+60 {
				t.Fatalf("%d events handed out, want every one of %d once", events, 150)
			}
		} else if !slices.EqualFunc(got, want, stepEqual) {
			t.Fatalf("interleaving %d: the task handed out\n%v\nwant (interleaving 0)\n%v", seed, got, want)
		}
		if ts.buffered != 0 {
			t.Errorf("interleaving %d: %d items still held after every partition went idle", seed, ts.buffered)
		}
		// Rebuilt from the commit after step k, the task hands out what the steps after
		// k held except what the commit covers (the source offsets it names): nothing
		// lost, and nothing the commit says was taken.
		for k := 0; k < len(commits); k += 3 {
			rest, _, _ := run(msgs, commits[k])
			var wantRest []string
			for _, e := range flatten(got) {
				var p, id string
				fmt.Sscan(e, &p, &id)
				var src int64
				fmt.Sscan(id, &src)
				if h, ok := commits[k].highs[partitionNamed(p)]; !ok || src > h {
					wantRest = append(wantRest, e)
				}
			}
			if !slices.Equal(flatten(rest), wantRest) {
				t.Fatalf("interleaving %d, rebuilt after step %d (commit %d %v): handed out\n%v\nwant\n%v", seed, k, commits[k].offset, commits[k].highs, flatten(rest), wantRest)
			}
		}
	}
	// The late event comes first in its batch, after a mark of its stream time.
	late := 0
	for _, st := range want {
		for i, e := range st.Events {
			var p, id string
			var ts int64
			fmt.Sscan(e, &p, &id, &ts)
			if id == "20" || id == "25" || id == "30" { // n/2 of each partition
				if i == 0 && len(st.Marks) == 1 {
					late++
				}
			}
		}
	}
	if late != len(srcs) {
		t.Errorf("%d of %d late events came first in a batch with their mark:\n%v", late, len(srcs), want)
	}
}

func stepEqual(a, b step) bool {
	return slices.Equal(a.Events, b.Events) && slices.Equal(a.Marks, b.Marks) && slices.Equal(a.Opened, b.Opened) && slices.Equal(a.Ended, b.Ended)
}

// partitionNamed parses what ingest.Partition.String writes.
func partitionNamed(s string) ingest.Partition {
	i := strings.LastIndexByte(s, '/')
	id, _ := strconv.Atoi(s[i+1:])
	return ingest.Partition{Source: s[:i], ID: int32(id)}
}

// flatten lists the events of steps.
func flatten(steps []step) []string {
	var out []string
	for _, st := range steps {
		out = append(out, st.Events...)
	}
	return out
}
